"""The database: engine set-up, ORM models and data functions per resource."""

from service.db.engine import Database, get_database, init_db

__all__ = ["Database", "get_database", "init_db"]
