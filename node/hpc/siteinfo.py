"""How a worker reaches an HPC site over SSH: one :class:`SiteInfo` per named site.

Sites come from ``<home>/hpc/sites.json`` (``{"NAME": {...SiteInfo fields...}}``): ``haorch hpc up`` writes the
managed test site there as ``local``; an operator adds real sites the same way. A task names its site with the
param ``site`` (default ``local``)::

    sites = load_sites(cfg.home)
    info = site_named(sites, "local")      # SiteInfo(host="127.0.0.1", port=17380, user="root", ...)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from node.errors import UsageError
from node.private_files import write_private

DEFAULT_SITE = "local"


@dataclass(frozen=True)
class SiteInfo:
    """One site's login node and how to run SLURM commands there."""

    host: str
    port: int
    user: str
    key_file: str  # private key (OpenSSH format) on the worker's machine
    known_hosts: str = ""  # a known_hosts file pinning the login node's host key (empty: refuse unknown keys)
    work_dir: str = ""  # absolute directory on the site where jobs and staged data live
    env: dict[str, str] = field(default_factory=dict)  # prefixed to every remote command (e.g. SLURM_CONF)
    partition: str = ""  # default SLURM partition (empty: the site's default)


def sites_file(home: Path) -> Path:
    return home / "hpc" / "sites.json"


def load_sites(home: Path) -> dict[str, SiteInfo]:
    """Every configured site; {} when the file does not exist. A malformed file raises UsageError in one line."""
    path = sites_file(home)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read sites: {exc}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected an object of sites by name")
    known = {f.name for f in fields(SiteInfo)}
    sites = {}
    for name, body in raw.items():
        if not isinstance(body, dict) or set(body) - known:
            raise UsageError(f"{path}: site {name!r} must be an object with keys among {sorted(known)}")
        try:
            sites[name] = SiteInfo(**body)
        except TypeError as exc:
            raise UsageError(f"{path}: site {name!r}: {exc}") from None
    return sites


def save_site(home: Path, name: str, info: SiteInfo) -> None:
    """Add or replace the site ``name`` (the file is private: it names key files)."""
    sites: dict[str, Any] = {n: asdict(s) for n, s in load_sites(home).items()}
    sites[name] = asdict(info)
    path = sites_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(sites, indent=2, sort_keys=True) + "\n")


def forget_site(home: Path, name: str) -> None:
    """Remove the site ``name`` if configured."""
    sites = load_sites(home)
    if name in sites:
        del sites[name]
        write_private(sites_file(home), json.dumps({n: asdict(s) for n, s in sites.items()}, indent=2,
                                                   sort_keys=True) + "\n")


def site_named(sites: dict[str, SiteInfo], name: str) -> SiteInfo:
    """The site ``name``, or UsageError naming the configured ones."""
    try:
        return sites[name]
    except KeyError:
        have = ", ".join(sorted(sites)) or "none (haorch hpc up configures 'local')"
        raise UsageError(f"no HPC site {name!r} configured; sites: {have}") from None
