"""The database: engine set-up, ORM models and data functions per resource."""

from service.backends.db.engine import Database, DatabaseUnavailable, init_db

__all__ = ["Database", "DatabaseUnavailable", "init_db"]
