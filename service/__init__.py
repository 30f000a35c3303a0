"""eBook Scene Packer v2: the async API service."""

from service.app import create_app

__all__ = ["create_app"]
