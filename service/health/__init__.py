"""Health: the checks and their runner, memory use, the probes answered before Quart, and the
`/api/health` routes."""
