"""What hypercorn serves: `hypercorn --config hypercorn.toml service.asgi:app`."""

from __future__ import annotations

import gc
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

# What start-up made (modules, classes, the app and its parts, about 100,000 objects) lives as
# long as the worker: moved out of the garbage collector's sight, a full collection no longer
# walks it and holds the event loop for tens of ms at a time (docs/benchmarks.md, "Scrape").
gc.freeze()
