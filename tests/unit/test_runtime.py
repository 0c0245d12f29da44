"""Pure logic of the runtimes: config and its remembered runtime, asset paths, the apt mirror, health checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import load_config, record_runtime, with_overrides
from node.containers.images import ROLES, apt_mirror
from node.errors import SetupError, UsageError
from node.paths import REPO_ROOT
from node.runtime.container import _parse_time, health_test
from node.runtime.handle import TcpCheck
from node.runtime.programs import asset, haorch_argv
from node.stack.neo4j import LAUNCHER_JAR, LAUNCHER_LIB
from node.stack.prometheus import RULES_DIR


def test_runtime_defaults_to_process_and_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAORCH_RUNTIME", raising=False)
    assert load_config(tmp_path).runtime == "process"
    assert load_config(tmp_path, runtime="docker").runtime == "docker"
    with pytest.raises(UsageError, match="runtime must be one of process, docker"):
        load_config(tmp_path, runtime="podman")
    with pytest.raises(UsageError, match="runtime must be one of"):
        with_overrides(load_config(tmp_path), runtime="vm")


def test_state_dir_remembers_its_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAORCH_RUNTIME", raising=False)
    record_runtime(load_config(tmp_path, runtime="docker"))
    assert (tmp_path / "runtime").read_text() == "docker\n"
    assert load_config(tmp_path).runtime == "docker"
    monkeypatch.setenv("HAORCH_RUNTIME", "process")  # a setting still wins
    assert load_config(tmp_path).runtime == "process"


def test_assets_and_argv_per_runtime(tmp_path: Path) -> None:
    process, docker = load_config(tmp_path, runtime="process"), load_config(tmp_path, runtime="docker")
    assert asset(process, LAUNCHER_JAR) == LAUNCHER_JAR
    assert asset(docker, LAUNCHER_JAR) == Path("/opt/haorch/assets/neo4j/target/haorch-neo4j.jar")
    # the images copy the files to where asset() says a container finds them
    dockerfiles = REPO_ROOT / "deploy" / "docker"
    assert f" {asset(docker, LAUNCHER_JAR)}\n" in (dockerfiles / "neo4j" / "Dockerfile").read_text()
    assert f" {asset(docker, LAUNCHER_LIB)}/\n" in (dockerfiles / "neo4j" / "Dockerfile").read_text()
    assert f" {asset(docker, RULES_DIR)}/\n" in (dockerfiles / "prometheus" / "Dockerfile").read_text()
    assert haorch_argv(process, "node", "run") == [sys.executable, "-m", "node.cli", "node", "run"]
    assert haorch_argv(docker, "node", "run") == ["haorch", "node", "run"]


def test_every_role_has_a_dockerfile_on_its_parent() -> None:
    for role in ROLES:
        dockerfile = (REPO_ROOT / "deploy" / "docker" / role.name / "Dockerfile").read_text()
        parent = f"haorch/{role.parent}:latest" if role.parent else "haorch/base:bookworm"
        assert f"FROM {parent}\n" in dockerfile, role.name
        assert f"LABEL io.haorch.role={role.name}\n" in dockerfile, role.name


def test_apt_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"
    one_line = tmp_path / "old"
    (one_line / "sources.list.d").mkdir(parents=True)
    (one_line / "sources.list").write_text("# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert apt_mirror(one_line) == "http://other.example/debian"
    with pytest.raises(SetupError, match="no Debian bookworm mirror"):
        apt_mirror(tmp_path / "none")


def _serve_once(answer: bytes) -> tuple[int, subprocess.Popen[bytes]]:
    """A one-shot loopback server (in a child Python) that reads what comes, answers ``answer`` and closes."""
    code = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1); print(s.getsockname()[1],"
            " flush=True); c,_=s.accept(); c.recv(64); c.sendall(sys.stdin.buffer.read()); c.close()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(answer)
    proc.stdin.close()
    return int(proc.stdout.readline()), proc


@pytest.mark.parametrize(("answer", "expect", "ok"), [(b"imok", "imok", True), (b"nope", "imok", False),
                                                      (b"\x00\x00\x00\x05", "", True)])
def test_health_check_script_talks_to_a_real_socket(answer: bytes, expect: str, ok: bool) -> None:
    port, server = _serve_once(answer)
    test = health_test(TcpCheck(port, "ruok", expect, read_bytes=4), "127.0.0.1")
    assert test[:2] == ["CMD", "timeout"]
    done = subprocess.run(test[1:], capture_output=True, timeout=20)
    server.wait(timeout=10)
    assert (done.returncode == 0) is ok, done


def test_docker_time_parsing() -> None:
    assert _parse_time("0001-01-01T00:00:00Z") is None
    assert _parse_time("2026-12-01T23:10:00.250000000Z") == pytest.approx(1796166600.25)
    assert _parse_time("2026-12-01T23:10:00Z") == pytest.approx(1796166600.0)


def test_tune_collector_freezes_startup_objects_and_raises_thresholds() -> None:
    # in a child: freezing this test process's objects would outlive the test
    code = ("import gc; from node.runtime.collector import THRESHOLDS, tune_collector; import node.cli.main; "
            "before = gc.get_freeze_count(); tune_collector(); "
            "print(before, gc.get_freeze_count(), gc.get_threshold() == THRESHOLDS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    before, frozen, thresholds = out.stdout.split()
    assert (int(before), thresholds) == (0, "True")
    assert int(frozen) > 10_000  # the imported CLI's modules, classes and functions
