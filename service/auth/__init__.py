"""The sign-in domain: sessions, passwords and their policy, devices, rate limits, active users,
and its routes (`/api/auth/...`)."""
