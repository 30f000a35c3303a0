import os

# gunicorn for the reference Flask design: sync workers, as the original.
bind = os.environ.get("BIND", "127.0.0.1:8100")
workers = int(os.environ.get("WORKERS", "1"))
worker_class = "sync"
accesslog = None
loglevel = "warning"
