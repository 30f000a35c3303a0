"""eBook Scene Packer v2: the async API service. The app is built by `service.app.create_app`
and served as `service.asgi:app`; importing this package (or any foundation module) loads
nothing else."""
