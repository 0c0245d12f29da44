"""haorch's Docker images, built offline: a Debian 12 base from ``debootstrap`` and one image per role on top.

No image registry is reachable, so nothing is pulled. The base ``haorch/base:bookworm`` is a
``debootstrap --variant=minbase`` root file system from the Debian mirror this machine's apt already uses,
imported with ``docker import`` and built only when it is missing. Each role has a Dockerfile in
``deploy/docker/<role>/`` and a build context that haorch assembles in ``build/docker/<role>/`` (the Dockerfile
plus the files the role needs: the Neo4j launcher, the Prometheus rules, wheels). The Dockerfiles and the sources
of the wheels are those of a checkout: a wheel install of haorch runs images built elsewhere but builds none.
Builds use host networking (the engine has no bridge) and Docker's layer cache, so a second build of unchanged
files takes seconds::

    rows = build_images(progress=print)     # [{"image", "seconds", "size_bytes", ...}] in build order
    image_name("node")                      # "haorch/node:latest"
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.containers.daemon import docker_client
from node.errors import ServiceError, SetupError, UsageError
from node.paths import NEO4J_LAUNCHER_TARGET, PROMETHEUS_RULES_DIR, REPO_ROOT, checkout_file

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

BASE_IMAGE = "haorch/base:bookworm"
SUITE = "bookworm"
BUILD_DIR = REPO_ROOT / "build" / "docker"
#: a fixed wheel timestamp: the same source gives the same wheel, so Docker's cache keeps its layer
WHEEL_EPOCH = "315532800"


@dataclass(frozen=True)
class Role:
    """One image: its Dockerfile folder, the role it builds on and the files its build context needs."""

    name: str
    parent: str | None
    files: dict[str, Path] = field(default_factory=dict)  # name in the context -> source file or folder


ROLES: tuple[Role, ...] = (
    Role("jre", None),
    Role("zookeeper", "jre"),
    Role("neo4j", "jre", {"haorch-neo4j.jar": NEO4J_LAUNCHER_TARGET / "haorch-neo4j.jar",
                          "lib": NEO4J_LAUNCHER_TARGET / "lib"}),
    Role("rabbitmq", None),
    Role("mariadb", None),
    Role("prometheus", None, {"rules": PROMETHEUS_RULES_DIR}),
    Role("app", None, {"deps": BUILD_DIR / "wheels" / "deps", "haorch": BUILD_DIR / "wheels" / "haorch"}),
    Role("node", "app"),
    Role("worker", "app"),
)
ROLE_NAMES = tuple(r.name for r in ROLES)
#: what each program of a deployment runs from (services by name prefix, then nodes and workers)
RUNTIME_IMAGES = ("zookeeper", "rabbitmq", "mariadb", "neo4j", "prometheus", "node", "worker")


def image_name(role: str) -> str:
    """The tag of a role's image."""
    return BASE_IMAGE if role == "base" else f"haorch/{role}:latest"


def image_exists(name: str) -> bool:
    import docker

    try:
        docker_client().images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def image_size(name: str) -> int | None:
    """Size in bytes of an image with all its layers (None when it is missing)."""
    import docker

    try:
        return int(docker_client().images.get(name).attrs["Size"])
    except docker.errors.ImageNotFound:
        return None


# --- the base ------------------------------------------------------------------------------------------------
def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses for the main archive (from ``sources.list`` or deb822 files)."""
    candidates: list[str] = []
    for path in [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.sources")),
                 *sorted((sources_dir / "sources.list.d").glob("*.list"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                    candidates += fields.get("URIs", "").split()
        else:
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    candidates.append(words[1])
    main = [uri for uri in candidates if not uri.rstrip("/").endswith("-security")]
    if not main:
        raise SetupError(f"no Debian {SUITE} mirror found in {sources_dir}/sources.list(.d); the base image is "
                         "bootstrapped from the mirror apt already uses")
    return main[0]


# apt and dpkg settings of the base: no recommends, no docs or man pages, no service starts at install
_BASE_FILES = {
    "etc/apt/apt.conf.d/90haorch": 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
                                   'Acquire::Languages "none";\n',
    "etc/dpkg/dpkg.cfg.d/90haorch": "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n"
                                    "path-exclude=/usr/share/man/*\npath-exclude=/usr/share/locale/*\n"
                                    "path-exclude=/usr/share/info/*\n",
    "usr/sbin/policy-rc.d": "#!/bin/sh\n# haorch images start their programs themselves\nexit 101\n",
}


def _bootstrap_rootfs(rootfs: Path, mirror: str, log_file: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise SetupError("debootstrap is not installed; run `make setup` (installs it from Debian)")
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        done = subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
                              stdout=out, stderr=subprocess.STDOUT, timeout=900)
    if done.returncode != 0:
        raise ServiceError(f"debootstrap failed (exit {done.returncode}); see {log_file}")
    for rel, text in _BASE_FILES.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if rel.startswith("usr/sbin"):
            path.chmod(0o755)
    (rootfs / "usr/share/man/man1").mkdir(parents=True, exist_ok=True)  # JRE postinst links man pages here
    # what debootstrap unpacked before the excludes above existed, and its downloads
    for leftover in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
                     "var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / leftover).glob("*"):
            if item.is_dir() and item.name != "man1" and not (item / "copyright").is_file():
                shutil.rmtree(item)
            elif item.is_file() and item.name != "lock":
                item.unlink()


def build_base(progress: Progress = lambda _m: None, force: bool = False) -> dict[str, object]:
    """Bootstrap and import ``haorch/base:bookworm`` unless it exists (``force`` rebuilds it)."""
    if image_exists(BASE_IMAGE) and not force:
        return {"image": BASE_IMAGE, "built": False, "seconds": 0.0, "size_bytes": image_size(BASE_IMAGE)}
    started = time.monotonic()
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror()
    rootfs, tarball, log_file = BUILD_DIR / "rootfs", BUILD_DIR / "base.tar", BUILD_DIR / "base.log"
    progress(f"base: debootstrap --variant=minbase {SUITE} (log {log_file})")
    _bootstrap_rootfs(rootfs, mirror, log_file)
    with tarfile.open(tarball, "w") as tar:
        tar.add(rootfs, arcname=".")
    progress("base: docker import")
    docker_client().api.import_image_from_file(
        str(tarball), repository=BASE_IMAGE.split(":")[0], tag=BASE_IMAGE.split(":")[1],
        changes=['ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'CMD ["bash"]',
                 "LABEL io.haorch.role=base"])
    tarball.unlink()
    shutil.rmtree(rootfs)
    seconds = time.monotonic() - started
    progress(f"base: built in {seconds:.1f} s")
    return {"image": BASE_IMAGE, "built": True, "seconds": round(seconds, 2), "size_bytes": image_size(BASE_IMAGE)}


# --- wheels for the app image -----------------------------------------------------------------------------------
def _pinned_dependencies() -> list[str]:
    return list(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def _pip_wheel(args: list[str], log_file: Path) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": WHEEL_EPOCH}
    with open(log_file, "ab") as out:
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", *args], stdout=out,
                              stderr=subprocess.STDOUT, env=env, timeout=900, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise ServiceError(f"pip wheel failed; see {log_file}")


def build_wheels(progress: Progress = lambda _m: None) -> None:
    """Wheels of the pinned dependencies (again only when they change) and of haorch itself."""
    wheels, log_file = BUILD_DIR / "wheels", BUILD_DIR / "wheels.log"
    deps, own = wheels / "deps", wheels / "haorch"
    wanted = "\n".join(_pinned_dependencies()) + "\n"
    requirements = deps / "requirements.txt"
    if not requirements.exists() or requirements.read_text() != wanted:
        progress("app: wheels of the pinned dependencies")
        shutil.rmtree(deps, ignore_errors=True)
        deps.mkdir(parents=True)
        (deps / "requirements.in").write_text(wanted)
        _pip_wheel(["--wheel-dir", str(deps), "-r", str(deps / "requirements.in")], log_file)
        requirements.write_text(wanted)
    progress("app: haorch wheel")
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir(parents=True)
    _pip_wheel(["--no-deps", "--wheel-dir", str(own), str(REPO_ROOT)], log_file)
    shutil.rmtree(REPO_ROOT / "build" / "lib", ignore_errors=True)  # setuptools' staging copy of the sources


# --- role images --------------------------------------------------------------------------------------------------
def _context(role: Role) -> Path:
    """Assemble the build context of ``role`` in ``build/docker/<role>/``."""
    dockerfile = checkout_file("deploy", "docker", role.name, "Dockerfile", purpose=f"image {role.name}")
    ctx = BUILD_DIR / role.name
    shutil.rmtree(ctx, ignore_errors=True)
    ctx.mkdir(parents=True)
    shutil.copy2(dockerfile, ctx / "Dockerfile")
    for name, source in role.files.items():
        if not source.exists():
            hint = "run `make setup`" if source.is_relative_to(NEO4J_LAUNCHER_TARGET) else "its build step did not run"
            raise SetupError(f"image {role.name}: {source} is missing; {hint}")
        if source.is_dir():
            shutil.copytree(source, ctx / name)
        else:
            shutil.copy2(source, ctx / name)
    return ctx


def _build_role(role: Role, log_file: Path, progress: Progress) -> dict[str, object]:
    started = time.monotonic()
    ctx = _context(role)
    steps = cached = 0
    last: list[str] = []
    with open(log_file, "a") as out:
        out.write(f"\n--- build {image_name(role.name)} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        for chunk in docker_client().api.build(path=str(ctx), tag=image_name(role.name), network_mode="host",
                                               rm=True, forcerm=True, decode=True, pull=False):
            if "error" in chunk:
                out.write(chunk["error"] + "\n")
                tail = " | ".join(line.strip() for line in last[-3:] if line.strip())
                raise ServiceError(f"image {role.name}: build failed: {chunk['error'].strip()} ({tail}); "
                                   f"see {log_file}")
            text = chunk.get("stream", "")
            out.write(text)
            if text.startswith("Step "):
                steps += 1
            if "Using cache" in text:
                cached += 1
            last.extend(text.splitlines())
            last = last[-20:]
    seconds = time.monotonic() - started
    shutil.rmtree(ctx, ignore_errors=True)
    progress(f"{role.name}: {image_name(role.name)} in {seconds:.1f} s ({cached} cached step(s))")
    return {"image": image_name(role.name), "built": True, "seconds": round(seconds, 2), "steps": steps,
            "cached_steps": cached, "size_bytes": image_size(image_name(role.name))}


def _with_parents(names: list[str]) -> list[Role]:
    by_name = {r.name: r for r in ROLES}
    wanted: set[str] = set()
    for name in names:
        if name not in by_name:
            raise UsageError(f"unknown image {name!r}; one of {', '.join(ROLE_NAMES)}")
        role: str | None = name
        while role:
            wanted.add(role)
            role = by_name[role].parent
    return [r for r in ROLES if r.name in wanted]


def build_images(roles: list[str] | None = None, progress: Progress = lambda _m: None,
                 rebuild_base: bool = False) -> list[dict[str, object]]:
    """Build the base (if missing) and the role images (all, or ``roles`` with what they build on), in order.
    Returns one row per image: image, built, seconds, size_bytes (+ steps and cached_steps for role images)."""
    selected = _with_parents(roles or list(ROLE_NAMES))
    checkout_file("deploy", "docker", purpose="building haorch's Docker images")  # before the minutes of the base
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    rows = [build_base(progress, force=rebuild_base)]
    if any(r.name == "app" for r in selected):
        build_wheels(progress)
    log_file = BUILD_DIR / "images.log"
    for role in selected:
        rows.append(_build_role(role, log_file, progress))
    return rows


def missing_images() -> list[str]:
    """The images a deployment runs from that are not built yet."""
    return [name for name in RUNTIME_IMAGES if not image_exists(image_name(name))]


def ensure_images(progress: Progress = lambda _m: None) -> list[dict[str, object]]:
    """Build every image only when one a deployment needs is missing (a no-op otherwise)."""
    if not missing_images():
        return []
    return build_images(progress=progress)


def describe() -> list[dict[str, object]]:
    """One row per image (base + roles): image, present, size_bytes, created."""
    import docker

    rows = []
    for name in ("base", *ROLE_NAMES):
        tag = image_name(name)
        try:
            attrs = docker_client().images.get(tag).attrs
        except docker.errors.ImageNotFound:
            rows.append({"image": tag, "present": False, "size_bytes": None, "created": None})
            continue
        rows.append({"image": tag, "present": True, "size_bytes": int(attrs["Size"]),
                     "created": attrs.get("Created", "")[:19]})
    return rows

