"""The HTTP edge, shared by every route: the JSON error shape, the per-request deadline, the
request record, the client's address behind proxies, JSON in and out, the OpenAPI document."""
