"""What hypercorn serves: `hypercorn --config hypercorn.toml service.asgi:app`."""

from __future__ import annotations

import sys

from service.app import create_app
from service.observability.logging import log_bad_configuration
from service.settings import SettingsError

try:
    app = create_app()
except SettingsError as exc:
    # One line naming the setting (JSON in production), not a traceback.
    log_bad_configuration(exc)
    sys.exit(2)
