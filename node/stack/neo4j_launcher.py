"""The embedded Neo4j launcher's build: ``haorch-neo4j.jar`` and Neo4j's jars in ``lib/``, built by Maven from the
sources haorch ships (``node/assets/neo4j``) into :data:`node.paths.NEO4J_LAUNCHER_TARGET`, on the host that runs
Neo4j. A wheel carries the ~20 KB of build inputs, not the ~120 MB of jars: ``haorch stack up`` builds them there
the first time (10 s with a warm Maven repository; a cold one fetches Neo4j from Maven Central)::

    ensure_launcher()     # builds, or returns at once when the build is up to date; SetupError (one line) else
    LAUNCHER_JAR          # .../haorch-neo4j.jar, on the classpath with LAUNCHER_LIB / "*"
"""

from __future__ import annotations

import subprocess

from node.errors import SetupError
from node.paths import NEO4J_BUILD_SCRIPT, NEO4J_LAUNCHER_TARGET

LAUNCHER_JAR = NEO4J_LAUNCHER_TARGET / "haorch-neo4j.jar"
LAUNCHER_LIB = NEO4J_LAUNCHER_TARGET / "lib"
BUILD_TIMEOUT_S = 900.0


def ensure_launcher() -> None:
    """Run ``build.sh`` for :data:`NEO4J_LAUNCHER_TARGET`; it decides whether Maven must run, under a lock (a second
    caller waits for the first, then skips). A build killed midway leaves no ``.built`` stamp, so the next call
    builds again. A failure (no Maven or JDK, mvn failed, timeout) is SetupError with build.sh's one-line reason."""
    try:
        done = subprocess.run(["bash", str(NEO4J_BUILD_SCRIPT), str(NEO4J_LAUNCHER_TARGET)], capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SetupError(f"neo4j: building the launcher into {NEO4J_LAUNCHER_TARGET} took more than "
                         f"{BUILD_TIMEOUT_S:.0f} s (see its build.log)") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise SetupError(f"neo4j: {lines[-1] if lines else f'{NEO4J_BUILD_SCRIPT} failed (exit {done.returncode})'}")
