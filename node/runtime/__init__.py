"""Where haorch runs its programs: as processes of this machine (``runtime = "process"``, the default) or as
Docker containers (``runtime = "docker"``; the engine and the images are ``node/containers/``).

Everything that starts, signals or inspects a program (the stack's services, the cluster's nodes and workers,
the chaos faults) asks :func:`node.runtime.programs.handle` for it by name and gets a
:class:`~node.runtime.process.ManagedProcess` or a :class:`~node.runtime.container.ManagedContainer`. Both have
the methods of :class:`~node.runtime.handle.Handle`, so that code does not know which it drives::

    h = handle(cfg, "zookeeper-1", image="zookeeper", health=TcpCheck(17101, "ruok", "imok"))
    h.start(argv, env)      # env: only the program's own variables
    h.alive(); h.pid(); h.signal(signal.SIGTERM); h.freeze(); h.thaw(); h.kill(); h.stop()

A command line names asset files (the Neo4j launcher, the Prometheus rules) through
:func:`~node.runtime.programs.asset` and haorch itself through :func:`~node.runtime.programs.haorch_argv`: images
carry those files under ``/opt/haorch/assets`` at their paths below ``node/assets``, and haorch on ``PATH``. The
state dir is mounted into every container at its own path, so configs, data and logs are where a process would find
them. A state dir remembers the runtime its stack was started with (``<home>/runtime``), so later commands drive the
same kind of program without being told.

Modules, each depending only on those before it: ``handle`` (the interface and the health check; nothing of
haorch), ``process`` (pid files), ``container`` (the docker SDK), ``programs`` (picks one by ``cfg.runtime``).
"""
