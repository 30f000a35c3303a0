"""What hypercorn serves: `hypercorn --config hypercorn.toml service.asgi:app`."""

from __future__ import annotations

import sys

from service.app import create_app
from service.settings import SettingsError

try:
    app = create_app()
except SettingsError as exc:
    # One clear line naming the setting, instead of a traceback.
    sys.exit(str(exc))
