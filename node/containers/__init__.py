"""haorch in Docker containers: the engine (``daemon.py``) and offline images (``images.py``) that the container
handle (``node/runtime/container.py``) runs programs from when ``runtime = "docker"``."""
