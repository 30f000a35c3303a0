"""Backends: the database (`db/`) and the cache. They raise their own errors (a
DependencyUnavailable, CacheError), never an HTTP one."""
