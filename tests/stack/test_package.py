"""haorch as a host installs it: the sdist and the wheel built from it (`make dist`'s command), the wheel installed
with pip into a fresh venv outside the checkout, run from a directory outside it. Checked: the CLI, the package
data found with importlib.resources, the Neo4j launcher built from the wheel's build inputs, the one-line refusal of
what only a checkout has, and a replica (`haorch node run`) against the test stack, which it knows only through the
endpoint settings and a copy of the stack's secrets.json, as a host of its own would.

Nothing is downloaded. The wheel's dependencies come from a wheelhouse repacked from the distributions installed in
this interpreter's environment (each one's RECORD lists its files) and pip installs with ``--no-index`` from it, so
the dependencies the wheel declares are resolved for real.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from node.config import Config, with_overrides
from node.paths import DASHBOARD_FILE, NEO4J_LAUNCHER_SRC, PROMETHEUS_RULES_DIR, REPO_ROOT
from node.stack.service import port_in_use

HEALTHY_WITHIN_S = 60.0
PORT_OFFSET = 150
STOP_WITHIN_S = 30.0
COMMAND_TIMEOUT_S = 300.0  # the slowest: a launcher build with a cold Maven repository
#: files of an installed distribution that pip writes itself (RECORD is written again, with the files packed)
NOT_PACKED = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


@dataclass(frozen=True)
class Installed:
    """The venv haorch was installed into, and where it runs its commands from (outside the checkout)."""

    venv: Path
    wheel: Path
    sdist: Path
    cwd: Path
    env: dict[str, str]  # the caller's, less HAORCH_* and anything naming the checkout or its .venv

    def run(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``argv`` from the directory outside the checkout, with ``env`` added to the environment."""
        return subprocess.run(argv, capture_output=True, text=True, cwd=self.cwd, env={**self.env, **env},
                              timeout=COMMAND_TIMEOUT_S)

    def haorch(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "haorch"), *args, **env)

    def python(self, code: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "python"), "-c", code, **env)


def _requirement_closure(wheel: Path) -> list[metadata.Distribution]:
    """The installed distributions that the wheel's Requires-Dist (no extras) pulls in, transitively."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    pending = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    found: dict[str, metadata.Distribution] = {}
    while pending:
        req = Requirement(pending.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        dist = metadata.distribution(req.name)
        key = dist.metadata["Name"].lower()
        if key not in found:
            found[key] = dist
            pending += dist.requires or []
    return list(found.values())


def _repack(dist: metadata.Distribution, wheelhouse: Path) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists inside site-packages (scripts and data
    outside it excepted: pip writes console scripts again from entry_points.txt)."""
    files = [f for f in dist.files or [] if f.parts[0] != ".." and f.suffix != ".pyc"]
    info_dir = next(f.parent for f in files if f.name == "METADATA" and f.parent.name.endswith(".dist-info"))
    tags = [line.split(":", 1)[1].strip().split("-") for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    # the compressed tag set of the file name: py2.py3-none-any for Tag: py2-none-any and Tag: py3-none-any
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))
    target = wheelhouse / f"{info_dir.name.removesuffix('.dist-info')}-{tag}.whl"
    root = Path(str(dist.locate_file("")))
    record = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
        for rel in files:
            source = root / rel
            if (rel.parent == info_dir and rel.name in NOT_PACKED) or not source.is_file():
                continue
            data = source.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            zf.writestr(rel.as_posix(), data)
            record.append(f"{rel.as_posix()},sha256={digest},{len(data)}")
        record.append(f"{info_dir.as_posix()}/RECORD,,")
        zf.writestr(f"{info_dir.as_posix()}/RECORD", "\n".join(record) + "\n")
    return target


def _timed(timings: dict[str, float], name: str, argv: list[str], cwd: Path | None = None) -> None:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=cwd)
    timings[name] = round(time.monotonic() - started, 2)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the sdist and its wheel, repack the dependencies, install the wheel into a fresh venv."""
    base = tmp_path_factory.mktemp("package")
    dist, wheelhouse, venv, cwd = base / "dist", base / "wheelhouse", base / "venv", base / "elsewhere"
    wheelhouse.mkdir()
    cwd.mkdir()
    timings: dict[str, float] = {}
    _timed(timings, "build", [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO_ROOT)],
           cwd=REPO_ROOT)
    wheel, sdist = next(dist.glob("haorch-*.whl")), next(dist.glob("haorch-*.tar.gz"))
    started = time.monotonic()
    for dependency in _requirement_closure(wheel):
        _repack(dependency, wheelhouse)
    timings["wheelhouse"] = round(time.monotonic() - started, 2)
    _timed(timings, "venv", [sys.executable, "-m", "venv", "--without-pip", str(venv)])
    # this environment's pip drives the venv's interpreter: the venv needs no pip of its own
    _timed(timings, "install", [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                                "-q", "--no-index", "--no-compile", "--find-links", str(wheelhouse), str(wheel)])
    shutil.rmtree(wheelhouse)  # ~150 MB
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HAORCH_") and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not Path(p).resolve().is_relative_to(REPO_ROOT))
    env["XDG_CACHE_HOME"] = str(base / "cache")  # where an install builds the Neo4j launcher
    print(f"[package] timings (s): {timings}; wheel {wheel.stat().st_size} B, sdist {sdist.stat().st_size} B")
    return Installed(venv, wheel, sdist, cwd, env)


def test_the_wheel_carries_the_assets_but_no_jar(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as zf:
        names = set(zf.namelist())
    assert {"node/assets/prometheus/rules/haorch.yml", "node/assets/grafana/dashboards/haorch-cluster.json",
            "node/assets/neo4j/pom.xml", "node/assets/neo4j/build.sh",
            "node/assets/neo4j/src/main/java/io/haorch/neo4j/Launcher.java",
            "node/model/builtin/chain.yaml"} <= names
    assert not [n for n in names if n.endswith(".jar") or "/target/" in n or n.startswith(("tests/", "deploy/"))]
    assert installed.wheel.stat().st_size < 1_000_000
    # the sdist (the wheel was built from it) has what only a checkout has besides
    listing = subprocess.run(["tar", "tzf", str(installed.sdist)], capture_output=True, text=True, check=True).stdout
    assert all(f"/{p}\n" in listing for p in ("deploy/setup.sh", "deploy/docker/neo4j/Dockerfile", "Makefile",
                                               "grafana/build_dashboard.py", "node/assets/neo4j/pom.xml"))


def test_the_installed_cli_and_its_package_data(installed: Installed) -> None:
    helped = installed.haorch("--help")
    assert helped.returncode == 0 and "node" in helped.stdout and "stack" in helped.stdout, helped.stderr
    probe = installed.python("""if True:
        import json, node, yaml
        from importlib import resources
        from node import paths
        assets = resources.files("node.assets")
        rules = yaml.safe_load((assets / "prometheus" / "rules" / "haorch.yml").read_text())
        board = json.loads((assets / "grafana" / "dashboards" / "haorch-cluster.json").read_text())
        print(json.dumps({
            "node": node.__file__, "assets": str(assets), "source_tree": paths.SOURCE_TREE and str(paths.SOURCE_TREE),
            "rule_groups": len(rules["groups"]), "panels": len(board["panels"]),
            "rules": (assets / "prometheus" / "rules" / "haorch.yml").read_text(),
            "pom": (assets / "neo4j" / "pom.xml").read_text(),
            "build_sh": (assets / "neo4j" / "build.sh").is_file(),
            "target": str(paths.NEO4J_LAUNCHER_TARGET), "dashboard": str(paths.DASHBOARD_FILE),
        }))""")
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert Path(seen["node"]).is_relative_to(installed.venv) and Path(seen["assets"]).is_relative_to(installed.venv)
    assert seen["source_tree"] is None
    assert seen["rules"] == (PROMETHEUS_RULES_DIR / "haorch.yml").read_text() and seen["rule_groups"] > 0
    assert seen["panels"] == len(json.loads(DASHBOARD_FILE.read_text())["panels"])
    assert seen["pom"] == (NEO4J_LAUNCHER_SRC / "pom.xml").read_text() and seen["build_sh"]
    assert Path(seen["target"]).is_relative_to(installed.env["XDG_CACHE_HOME"])


def test_checkout_only_files_fail_in_one_line(installed: Installed, tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    bench = installed.haorch("bench", "throughput", HAORCH_HOME=home)
    assert bench.returncode == 1 and bench.stderr.count("\n") == 1, bench.stderr
    assert "needs docs of a haorch source checkout" in bench.stderr and "--no-record" in bench.stderr
    images = installed.haorch("deploy", "build", HAORCH_HOME=home)
    assert images.returncode == 1 and images.stderr.count("\n") == 1, images.stderr
    assert "needs deploy/docker of a haorch source checkout" in images.stderr


def test_the_neo4j_launcher_builds_from_the_wheel_or_says_why_not(installed: Installed, tmp_path: Path) -> None:
    build = ("from node.stack.neo4j_launcher import LAUNCHER_JAR, ensure_launcher\n"
             "ensure_launcher()\nprint(LAUNCHER_JAR)")
    # a host without Maven: only what build.sh needs before it looks for java and mvn
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "dirname", "mkdir", "flock"):
        found = shutil.which(tool)
        assert found, tool
        (bare / tool).symlink_to(found)
    refused = installed.python(build, PATH=str(bare))
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert "SetupError: neo4j: the launcher cannot be built into" in last and "'java' not found" in last, last

    started = time.monotonic()
    built = installed.python(build)
    assert built.returncode == 0, built.stderr[-2000:]
    jar = Path(built.stdout.strip())
    print(f"[package] launcher built from the wheel's sources in {time.monotonic() - started:.1f} s")
    assert jar.is_file() and any((jar.parent / "lib").glob("neo4j-*.jar"))
    again = installed.python(build)  # up to date: no Maven run
    assert again.returncode == 0 and (jar.parent / ".built").is_file()
    shutil.rmtree(jar.parent)  # ~120 MB


def _node_healthy(text: str) -> bool:
    # /healthz answers 200 while the dependencies probed so far are up: wait until all four were probed
    return bool(text) and json.loads(text).get("dependencies") == {"zookeeper": True, "mariadb": True,
                                                                   "neo4j": True, "rabbitmq": True}


def _worker_healthy(text: str) -> bool:
    # consuming from the broker with the worker's own credentials (its mariadb gauge turns 1 at its first ledger
    # write, which needs work to do)
    return 'haorch_dependency_up{service="rabbitmq"} 1.0' in text


#: program -> (its HTTP port of a config, the path to poll, whether an answer of it shows a healthy program)
PROGRAMS: dict[str, tuple[Callable[[Config], int], str, Callable[[str], bool]]] = {
    "node": (lambda cfg: cfg.node_http_port(1), "/healthz", _node_healthy),
    "worker": (lambda cfg: cfg.worker_http_port(1), "/metrics", _worker_healthy),
}


@pytest.mark.stack
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_an_installed_program_runs_against_the_stack(installed: Installed, stack: Config, tmp_path: Path,
                                                     program: str) -> None:
    """`haorch node run --id node-1` / `haorch worker run --id worker-1` of the install, in a state dir of its own
    that names the stack's services, until it reports every dependency up; then SIGTERM stops it with exit 0."""
    home = tmp_path / "host"
    home.mkdir()
    shutil.copy2(stack.home / "secrets.json", home / "secrets.json")  # what an operator copies to each host
    settings = {
        # ports of its own (the stack's nodes and workers use +71.., +101.., +201..): only the settings below lead
        # it to the stack's services
        "port_base": stack.port_base + PORT_OFFSET,
        "zookeeper": stack.zk_hosts,
        "rabbitmq": ",".join(f"{h}:{p}" for h, p in stack.rabbit_endpoints),
        "mariadb": ",".join(f"{h}:{p}" for h, p in stack.mysql_endpoints),
        "neo4j": stack.neo4j_uri,
        "prometheus": stack.prometheus_url,
    }
    (home / "haorch.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    port_of, path, healthy = PROGRAMS[program]
    port = port_of(with_overrides(stack, port_base=settings["port_base"]))
    assert not port_in_use(stack.host, port), f"port {port} of {program} is taken"
    log = tmp_path / f"{program}.log"
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(installed.venv / "bin" / "haorch"), program, "run", "--id", f"{program}-1"],
                                cwd=installed.cwd, env={**installed.env, "HAORCH_HOME": str(home)}, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        answer = ""
        while time.monotonic() - started < HEALTHY_WITHIN_S and proc.poll() is None and not healthy(answer):
            try:
                with urllib.request.urlopen(f"http://{stack.host}:{port}{path}", timeout=2) as reply:
                    answer = reply.read().decode()
            except OSError:  # not listening yet, or 503
                pass
            time.sleep(0.2)
        assert healthy(answer), (f"{program}: no healthy {path} within {HEALTHY_WITHIN_S} s (exit {proc.poll()}, "
                                 f"last answer {answer[-500:]!r}): {log.read_text()[-3000:]}")
        print(f"[package] installed {program}-1 healthy on {path} after {time.monotonic() - started:.1f} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail(f"{program} did not stop within {STOP_WITHIN_S} s of SIGTERM: {log.read_text()[-3000:]}")
    assert proc.returncode == 0, log.read_text()[-3000:]
