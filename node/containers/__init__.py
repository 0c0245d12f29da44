"""haorch in Docker containers: the engine (``daemon.py``), offline images (``images.py``) and the container
handle (``container.py``) that the stack, the cluster and the chaos faults use when ``runtime = "docker"``."""
