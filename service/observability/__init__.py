"""Logging, request context, metrics and health: the service's observability."""
