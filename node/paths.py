"""Where haorch's files are, in a wheel install as in a source checkout.

The runtime assets ship inside the package, under ``node/assets`` (package data, found with
:mod:`importlib.resources`): the Prometheus rules, the Grafana dashboard, and the build inputs of the embedded
Neo4j launcher (``pom.xml``, ``src/``, ``build.sh``). The launcher itself (its jar and ~120 MB of Neo4j jars) is
built from them by Maven, on the Neo4j host: beside its sources in a checkout, in the user's cache directory for
an install (site-packages is no place for a build, and may not be writable). Everything else that is not Python
(``deploy/setup.sh``, the Dockerfiles, ``docs/``) exists only in a checkout: :func:`checkout_file` names it, or
fails with one line when haorch runs from a wheel::

    PROMETHEUS_RULES_DIR        # .../node/assets/prometheus/rules
    NEO4J_LAUNCHER_TARGET       # checkout: .../node/assets/neo4j/target; install: ~/.cache/haorch/neo4j-launcher-0.1.0
    checkout_file("docs", "BENCHMARKS.md", purpose="bench reports")   # a Path, or SetupError
"""

from __future__ import annotations

import os
from importlib import metadata, resources
from pathlib import Path

from node.errors import SetupError

#: the directory that holds the ``node`` package: the checkout's root, or site-packages
REPO_ROOT = Path(__file__).resolve().parent.parent


def _assets_dir() -> Path:
    root = resources.files("node.assets")
    # the programs haorch starts (Prometheus, java, bash) read these files by path: a zip import cannot serve them
    if not isinstance(root, Path):
        raise SetupError(f"haorch's assets are not files on disk ({root}); install haorch with pip, not as a zip")
    return root


ASSETS_DIR = _assets_dir()
PROMETHEUS_RULES_DIR = ASSETS_DIR / "prometheus" / "rules"
DASHBOARD_FILE = ASSETS_DIR / "grafana" / "dashboards" / "haorch-cluster.json"
NEO4J_LAUNCHER_SRC = ASSETS_DIR / "neo4j"
NEO4J_BUILD_SCRIPT = NEO4J_LAUNCHER_SRC / "build.sh"

#: the checkout haorch runs from (an editable install), or None for a wheel install
SOURCE_TREE: Path | None = REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() \
    and (REPO_ROOT / "deploy" / "setup.sh").is_file() else None


def _launcher_target() -> Path:
    if SOURCE_TREE is not None:
        return NEO4J_LAUNCHER_SRC / "target"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    # one build per version: an upgrade's launcher sources never meet an older build (build.sh also rebuilds when
    # the sources are newer than the build)
    try:
        version = metadata.version("haorch")
    except metadata.PackageNotFoundError:  # the package on sys.path without its metadata
        version = "unversioned"
    return cache / "haorch" / f"neo4j-launcher-{version}"


NEO4J_LAUNCHER_TARGET = _launcher_target()


def checkout_file(*parts: str, purpose: str) -> Path:
    """The file or folder ``parts`` of the source checkout; SetupError (one line) naming ``purpose`` when haorch
    runs from a wheel or the checkout lacks it."""
    if SOURCE_TREE is None:
        raise SetupError(f"{purpose} needs {'/'.join(parts)} of a haorch source checkout; this haorch is installed "
                         f"from a wheel ({REPO_ROOT}), which carries only the runtime assets")
    path = SOURCE_TREE.joinpath(*parts)
    if not path.exists():
        raise SetupError(f"{purpose} needs {path}, which is missing from the checkout")
    return path


def setup_hint() -> str:
    """How to install a missing program: the checkout's setup script, or Debian's packages for a wheel install."""
    if SOURCE_TREE is not None:
        return f"run `make setup` (or {SOURCE_TREE / 'deploy' / 'setup.sh'})"
    return ("install it from Debian (the packages deploy/setup.sh of a haorch checkout lists), or point haorch at "
            "a running server with the settings zookeeper, rabbitmq, mariadb, neo4j, prometheus")
