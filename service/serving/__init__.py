"""Serving the app: the supervisor (the master around hypercorn's workers), a worker's lifecycle,
and the `scene-packer` command line."""
