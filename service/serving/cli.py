"""`scene-packer`: serve, check and migrate, with exit codes an init system can act on.

- `serve` checks the settings, the backends and the schema, then runs the workers of
  hypercorn.toml under the supervisor (`service/serving/supervisor.py`).
- `check` prints one line per check (settings, database, cache, disk, memory) and exits 0 only
  when the service could serve.
- `migrate` brings the database schema to the code's head (`alembic upgrade head`).

Exit codes: 0 done; 1 stopped uncleanly (a worker crashed or was killed while stopping);
2 bad configuration (a setting, the hypercorn file, the command line); 3 cannot serve (a critical
backend unreachable, the schema behind, a worker that failed to start, a migration that failed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import textwrap
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any

import structlog
from hypercorn.config import Config

from service.backends.cache import InstrumentedCache, create_cache
from service.backends.db.engine import create_engine, dispose, upgrade_to_head
from service.health.checks import HealthMonitor, HealthReport
from service.observability.logging import configure_logging, log_bad_configuration
from service.observability.metrics import Metrics
from service.serving.supervisor import EXIT_OK, serve
from service.serving.worker import EXIT_CANNOT_SERVE, end_margin
from service.settings import Settings, SettingsError, documented, load_settings
from service.version import VERSION

EXIT_BAD_CONFIGURATION = 2
_STOP_MARGIN_SECONDS = 5.0
APPLICATION = "service.asgi:app"
_SERVER_NUMBERS = (
    "workers",
    "backlog",
    "graceful_timeout",
    "keep_alive_timeout",
    "read_timeout",
    "shutdown_timeout",
    "startup_timeout",
    "max_requests",
    "max_requests_jitter",
    "h11_max_incomplete_size",
)
_SERVER_OPTIONAL = {"read_timeout", "max_requests"}
# A check from the command line may wait on a cold connection a little longer than a poll.
_CHECK_TIMEOUT_FLOOR = 2.0

logger = structlog.get_logger("service.serving.cli")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scene-packer",
        description=__doc__.split("\n\n")[0],
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"scene-packer {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="check, then serve with hypercorn")
    serve_parser.add_argument(
        "--config",
        type=Path,
        help="hypercorn's TOML file (default: ./hypercorn.toml if there is one, else the "
        "package's own: 127.0.0.1:8000, 1 worker)",
    )
    serve_parser.add_argument(
        "--bind",
        action="append",
        metavar="HOST:PORT",
        help="where to listen, instead of the file's `bind` (repeat for several, as hypercorn)",
    )
    serve_parser.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="worker processes, instead of the file's `workers`",
    )
    commands.add_parser("check", help="settings, backends and schema: one line each")
    commands.add_parser("migrate", help="bring the database schema to the code's head")
    commands.add_parser("settings", help="every setting: its variable, default and meaning")
    arguments = parser.parse_args(argv)
    if arguments.command == "settings":
        _print_settings()
        return EXIT_OK

    try:
        settings = load_settings()
    except SettingsError as error:
        log_bad_configuration(error)
        if arguments.command == "check":
            for name, problem in error.problems:
                print(f"settings: {name}: {problem}")
        return EXIT_BAD_CONFIGURATION
    if arguments.command == "check":
        # stdout: one line per check; stderr: the log (a failed check's cause).
        configure_logging(settings, stream=sys.stderr)
        print("settings: ok")
        return _print_checks(asyncio.run(_check(settings)), settings)
    configure_logging(settings)
    if arguments.command == "serve":
        config_path = arguments.config or _default_server_config()
        return _serve(settings, config_path, arguments.bind, arguments.workers)
    return asyncio.run(_migrate(settings))


def _print_settings() -> None:
    for name, default, meaning in documented():
        print(f"{name} (default: {default.replace('`', '')})")
        print(textwrap.fill(meaning.replace("`", ""), width=78, initial_indent="    ",
                            subsequent_indent="    "))  # fmt: skip


def _epilog() -> str:
    names = textwrap.fill(", ".join(name.upper() for name in Settings.model_fields), width=76)
    return (
        "settings: environment variables (`scene-packer settings` describes each; `scene-packer\n"
        "check` validates them):\n"
        + textwrap.indent(names, "  ")
        + "\n\nexit codes: 0 done; 1 stopped uncleanly; 2 bad configuration (a setting, the server"
        "\nfile, the command line); 3 cannot serve (a critical backend, the schema, a worker that"
        "\nfailed to start, a failed migration)"
    )


_EPILOG = _epilog()


_PACKAGED_SERVER_CONFIG = Path(str(files(__package__) / "hypercorn.toml"))


def _default_server_config() -> Path:
    """./hypercorn.toml when the directory has one (a checkout, an operator's file), else the
    copy of the repository's hypercorn.toml that the package carries."""
    here = Path("hypercorn.toml")
    return here if here.is_file() else _PACKAGED_SERVER_CONFIG


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, not {text!r}")
    return int(text)


def _serve(
    settings: Settings, config_path: Path, binds: list[str] | None, workers: int | None
) -> int:
    # Where a bad value came from: the command line wins over the file, as with hypercorn.
    source = {"file": str(config_path)}
    try:
        config = Config.from_toml(config_path)
        if binds:
            config.bind = binds
            source = {"option": "--bind"}
        if workers is not None:
            config.workers = workers
        _check_server_config(config)
        _fit_the_stop(settings, config, config_path)
    except (OSError, ValueError, TypeError) as error:
        logger.error("configuration_invalid", file=str(config_path), problem=str(error))
        return EXIT_BAD_CONFIGURATION
    if config.logconfig is None and config.logconfig_dict is None:
        # hypercorn's own lines through the service's pipeline (JSON in production), as the
        # shipped file says, also under a file that does not.
        config.logconfig_dict = tomllib.loads(_PACKAGED_SERVER_CONFIG.read_text())["logconfig_dict"]
    try:
        sockets = config.create_sockets()
    except (socket.gaierror, TypeError, ValueError, OverflowError) as error:
        logger.error("configuration_invalid", **source, problem=f"bind: {error}")
        return EXIT_BAD_CONFIGURATION
    except OSError as error:  # in use, or not an address of this machine
        logger.error("cannot_serve", bind=config.bind, problem=str(error))
        return EXIT_CANNOT_SERVE
    # A stop asked for while the backends are checked ends here, before any worker exists.
    stop_now = signal.getsignal(signal.SIGINT)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt)
    try:
        report = asyncio.run(_check(settings))
    except KeyboardInterrupt:
        logger.info("server_stopped", reason="signal before serving", exit_code=EXIT_OK)
        return EXIT_OK
    finally:
        signal.signal(signal.SIGINT, stop_now)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not report.ready:
        logger.error("cannot_serve", failing=report.failing())
        return EXIT_CANNOT_SERVE
    return serve(APPLICATION, config, sockets, settings.drain_seconds, str(config_path))


def _check_server_config(config: Config) -> None:
    """hypercorn reads its file without checking types: a timeout given as text would only
    fail on the first connection or at the stop."""
    for name in _SERVER_NUMBERS:
        value = getattr(config, name)
        if value is None and name in _SERVER_OPTIONAL:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{name} must be a number of at least 0, not {value!r}")
    if isinstance(config.workers, float) or config.workers < 1:
        raise ValueError(f"workers must be a whole number of 1 or more, not {config.workers!r}")
    if not isinstance(config.bind, list) or not all(
        isinstance(b, str) and b.strip() for b in config.bind
    ):
        raise ValueError(
            f"bind must be a list of addresses such as 127.0.0.1:8000, not {config.bind!r}"
        )


def _fit_the_stop(settings: Settings, config: Config, config_path: Path) -> None:
    """A request admitted as the drain ends may run for REQUEST_TIMEOUT; the workers then wait
    graceful_timeout for it, less the moment they keep to end what is left (`end_margin`).
    Shorter, and the request is stopped within its deadline (503 `shutting_down`): a file that
    says so is refused; one that does not say gets REQUEST_TIMEOUT + 5 s (hypercorn's own
    default, 3 s, is below the default deadline)."""
    if "graceful_timeout" not in tomllib.loads(config_path.read_text()):
        config.graceful_timeout = settings.request_timeout + _STOP_MARGIN_SECONDS
        return
    usable = config.graceful_timeout - end_margin(config.graceful_timeout)
    if settings.request_timeout >= usable:
        raise ValueError(
            f"graceful_timeout ({config.graceful_timeout:g} s) must be longer than "
            f"REQUEST_TIMEOUT ({settings.request_timeout:g} s) by more than "
            f"{end_margin(config.graceful_timeout):g} s: a request still within its deadline "
            "at a stop would be stopped unfinished"
        )


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


async def _check(settings: Settings) -> HealthReport:
    """The health report the service would give, from this process."""
    asyncio.get_running_loop().set_exception_handler(_quiet_about_a_stop)
    timeout = max(settings.health_check_timeout, _CHECK_TIMEOUT_FLOOR)
    settings = settings.model_copy(update={"health_check_timeout": timeout})
    if settings.uses_embedded_database:
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # as the service does at start
    metrics = Metrics(settings)
    cache = InstrumentedCache(create_cache(settings), metrics.cache_requests, metrics.cache_errors)
    monitor = HealthMonitor(
        settings.model_copy(update={"health_refresh_seconds": 0}), metrics, cache
    )
    try:
        await monitor.start()
        return await monitor.report()
    finally:
        await monitor.stop()
        await cache.close()


def _quiet_about_a_stop(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A check that a stop signal interrupted (`_interrupt`) ends with KeyboardInterrupt; asyncio
    would report it, after `server_stopped`, as a task whose exception nobody retrieved."""
    if isinstance(context.get("exception"), KeyboardInterrupt):
        return
    loop.default_exception_handler(context)


def _print_checks(report: HealthReport, settings: Settings) -> int:
    for name, result in report.checks.items():
        line = result.status if result.reason is None else f"{result.status} ({result.reason})"
        critical = " [critical]" if name in report.critical else ""
        print(f"{name}: {line}{critical}")
    if settings.uses_embedded_database:
        print("schema: the embedded database is migrated when the service starts")
    return EXIT_OK if report.ready else EXIT_CANNOT_SERVE


async def _migrate(settings: Settings) -> int:
    if settings.uses_embedded_database:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings)
    try:
        before, after = await upgrade_to_head(engine)
    except Exception as error:
        logger.error("migration_failed", exc_info=error)
        return EXIT_CANNOT_SERVE
    finally:
        await dispose(engine)
    logger.info("database_migrated", from_revision=before, to_revision=after)
    return EXIT_OK


def run() -> None:
    """The console script's entry point."""
    try:
        sys.exit(main())
    except BrokenPipeError:  # `scene-packer settings | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_OK)
