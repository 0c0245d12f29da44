"""Locations inside the source tree (deploy/, grafana/, docs/) that the code needs at run time."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy"
NEO4J_LAUNCHER_DIR = DEPLOY_DIR / "neo4j"
SETUP_SCRIPT = DEPLOY_DIR / "setup.sh"
GRAFANA_DIR = REPO_ROOT / "grafana"
DOCS_DIR = REPO_ROOT / "docs"
