"""The routes of no domain: the index (`/`), `/metrics` and the browser beacons (`/api/rum`, the
RUM demo pages). A feature's routes live in its own package (`auth/routes.py`,
`health/routes.py`)."""
