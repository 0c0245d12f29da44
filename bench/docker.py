"""``haorch bench docker``: the images (cold and cached build time, sizes) and failover in containers against
processes, in one run.

- cold build: every haorch image and the build dir deleted, then the debootstrap base and all role images built
  (Debian packages come from the mirror; Python wheels from the host's pip cache);
- cached build: the same build again (unchanged sources: every layer from Docker's cache);
- sizes: each image with the layers it builds on (what ``docker images`` shows) and what it adds to its parent;
- failover: SIGKILL of the leader under steady load, ``kills`` times, for a containerized deployment (its own
  state dir ``<home>-docker`` and ports ``port_base + 300``; ``docker kill``) and for the process cluster of the
  caller's state dir, same session timeout and beacon; measured as ``bench failover`` does (kill → first
  SUCCEEDED transition of the new epoch).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

from bench.failover import PHASES, kill_series
from node.config import Config, load_config
from node.containers import images
from node.containers.daemon import docker_client
from node.errors import UsageError
from node.stack import manager

Progress = Callable[[str], None]
DOCKER_PORT_OFFSET = 300  # stacks need bases at least 300 apart (node/config.py)


def docker_config(cfg: Config) -> Config:
    """The benchmark's containerized deployment: beside ``cfg``'s state dir, 300 ports above it."""
    return load_config(cfg.home.with_name(cfg.home.name + "-docker"), port_base=cfg.port_base + DOCKER_PORT_OFFSET,
                       runtime="docker")


def _remove_images() -> None:
    client = docker_client()
    in_use = [c.name for c in client.containers.list(all=True) if c.image.tags and
              any(t.startswith("haorch/") for t in c.image.tags)]
    if in_use:
        raise UsageError(f"haorch images are in use by {', '.join(in_use[:3])}...; `haorch deploy down` first "
                         "(or run with --cached-only)")
    for name in reversed(["base", *images.ROLE_NAMES]):
        if images.image_exists(images.image_name(name)):
            client.images.remove(images.image_name(name), force=True)
    shutil.rmtree(images.BUILD_DIR, ignore_errors=True)


def _added_sizes(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Bytes each image adds to the image it is built on (the base: all of it)."""
    size = {row["image"]: row["size_bytes"] for row in rows}
    parents = {images.image_name(r.name): images.image_name(r.parent or "base") for r in images.ROLES}
    return {name: total - (size.get(parents[name]) or 0) if name in parents else total
            for name, total in size.items()}


def build_times(progress: Progress, cold: bool = True) -> dict[str, Any]:
    """Cold (optional) and cached build of every image, with sizes."""
    result: dict[str, Any] = {}
    if cold:
        _remove_images()
        started = time.monotonic()
        result["cold_rows"] = images.build_images(progress=progress)
        result["cold_s"] = time.monotonic() - started
    started = time.monotonic()
    result["cached_rows"] = images.build_images(progress=progress)
    result["cached_s"] = time.monotonic() - started
    added = _added_sizes(result["cached_rows"])
    result["sizes"] = [{"image": row["image"], "size_bytes": row["size_bytes"], "added_bytes": added[row["image"]]}
                       for row in result["cached_rows"]]
    return result


def run(cfg: Config, kills: int = 10, session_timeout_s: float = 2.0, cold: bool = True,
        progress: Progress = lambda _m: None) -> dict[str, Any]:
    """Build times and sizes, then the kill series in containers and as processes (the caller's stack)."""
    started = time.time()
    built = build_times(progress, cold=cold)
    dcfg = docker_config(cfg)
    manager.up(dcfg, progress=lambda m: progress(f"docker stack: {m}"))
    try:
        containers = kill_series(dcfg, session_timeout_s, kills, progress, beacon=True)
    finally:
        manager.down(dcfg)
    manager.up(cfg, progress=lambda m: progress(f"process stack: {m}"))
    processes = kill_series(cfg, session_timeout_s, kills, progress, beacon=True)
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), **built,
            "series": {"docker": containers, "process": processes}}


def _mib(size: int | None) -> str:
    return f"{size / 2**20:.0f} MiB" if size is not None else "-"


def render(result: dict[str, Any]) -> str:
    lines = [f"### Docker — {result['when']}", ""]
    if "cold_s" in result:
        lines.append(f"- build, cold (no image, no build dir; Debian packages from the mirror, wheels from the "
                     f"host's pip cache): **{result['cold_s']:.0f} s**")
    lines += [f"- build, cached (unchanged sources, every layer from Docker's cache): **{result['cached_s']:.1f} s**",
              "", "| image | size (with the layers it builds on) | added to its parent | cold build |",
              "| --- | ---: | ---: | ---: |"]
    cold = {r["image"]: r["seconds"] for r in result.get("cold_rows", [])}
    for row in result["sizes"]:
        took = f"{cold[row['image']]:.1f} s" if row["image"] in cold else "-"
        lines.append(f"| {row['image']} | {_mib(row['size_bytes'])} | {_mib(row['added_bytes'])} | {took} |")
    lines += ["", "| runtime | session timeout | kills | failover p50 | p99 | max | detect p50 | elect | fence | "
              "rescan | redispatch | first advance | experiments | lost | double-advanced |",
              "| --- " + "| ---: " * 14 + "|"]
    for name, s in result["series"].items():
        ph = s["phase_p50_s"]
        lines.append(f"| {name} | {s['session_timeout_s']:g} s | {s['kills']} | {s['p50_s'] * 1000:.0f} ms | "
                     f"{s['p99_s'] * 1000:.0f} ms | {s['max_s'] * 1000:.0f} ms | "
                     + " | ".join(f"{ph[p] * 1000:.0f} ms" if ph[p] is not None else "-" for p in PHASES)
                     + f" | {s['experiments']} | {s['lost']} | {s['double_advanced']} |")
    docker_p50, process_p50 = result["series"]["docker"]["p50_s"], result["series"]["process"]["p50_s"]
    lines += ["", f"- container / process failover p50: **{docker_p50 / process_p50:.2f}×** (beacon on; "
                  "failover = SIGKILL (`docker kill` for the container) → first SUCCEEDED transition of the new "
                  "epoch)", ""]
    return "\n".join(lines)
