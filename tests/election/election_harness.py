"""Test harness for the election tests (imported by conftest.py and the tests): a real ZooKeeper ensemble,
TCP proxies that partition one client off it, and candidates that record their callbacks."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # an editable install made before election/ had files maps it as a namespace
    sys.path.insert(0, str(REPO_ROOT))

from election import LeaderElection  # noqa: E402

ZK_JAR = "/usr/share/java/zookeeper.jar"
ZK_CONF_DIR = "/etc/zookeeper/conf"
CLIENT_PORTS = (19101, 19102, 19103)
PEER_PORTS = (19111, 19112, 19113)
ELECTION_PORTS = (19121, 19122, 19123)

logging.getLogger("kazoo").setLevel(logging.WARNING)


def four_letter(host: str, port: int, cmd: bytes = b"srvr", timeout: float = 1.0) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(cmd)
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def zk_mode(host: str, port: int) -> str | None:
    for line in four_letter(host, port).splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


class Ensemble:
    """A ZooKeeper ensemble; ``owned`` when this fixture started it (then members can be killed and restarted)."""

    def __init__(self, hosts: str, workdir: Path | None = None) -> None:
        self.hosts = hosts
        self.members = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in hosts.split(",")]
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def owned(self) -> bool:
        return self.workdir is not None

    def start_member(self, n: int) -> None:
        assert self.workdir is not None
        member_dir = self.workdir / f"z{n}"
        with open(member_dir / "stdout.log", "ab") as log:
            self.procs[n] = subprocess.Popen(
                [
                    "java",
                    "-Xmx128m",
                    f"-Dzookeeper.log.dir={member_dir}",
                    "-cp",
                    f"{ZK_CONF_DIR}:{ZK_JAR}",
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                    str(self.workdir / f"z{n}.cfg"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill_member(self, n: int) -> None:
        proc = self.procs.pop(n)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            modes = [zk_mode(h, p) for h, p in self.members]
            if all(m in ("leader", "follower") for m in modes):
                return
            for n, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ZooKeeper member {n} exited with {proc.returncode}; see {self.workdir}")
            time.sleep(0.1)
        raise RuntimeError(f"ZooKeeper ensemble {self.hosts} not ready in {timeout}s: modes={modes}")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


def start_own_ensemble() -> Ensemble:
    for port in CLIENT_PORTS + PEER_PORTS + ELECTION_PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise RuntimeError(f"port {port} is in use: stop whatever holds it or set HAORCH_TEST_ZK_HOSTS")
    workdir = Path(tempfile.mkdtemp(prefix="election-zk-"))
    servers = "\n".join(
        f"server.{n}=127.0.0.1:{PEER_PORTS[n - 1]}:{ELECTION_PORTS[n - 1]}" for n in (1, 2, 3)
    )
    for n in (1, 2, 3):
        member_dir = workdir / f"z{n}"
        member_dir.mkdir()
        (member_dir / "myid").write_text(f"{n}\n")
        (workdir / f"z{n}.cfg").write_text(
            "tickTime=100\ninitLimit=50\nsyncLimit=20\nminSessionTimeout=200\nmaxSessionTimeout=30000\n"
            f"dataDir={member_dir}\nclientPort={CLIENT_PORTS[n - 1]}\nclientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,mntr\n" + servers + "\n"
        )
    ensemble = Ensemble(",".join(f"127.0.0.1:{p}" for p in CLIENT_PORTS), workdir)
    try:
        for n in (1, 2, 3):
            ensemble.start_member(n)
        ensemble.wait_ready()
    except BaseException:
        ensemble.stop()
        raise
    return ensemble


class TcpProxy:
    """Forwards a local port to one ZooKeeper member, and can partition it off as a client sees it:
    ``cut()`` resets its connections and refuses new ones; ``blackhole()`` keeps connections open but drops every
    byte (a silent partition: only timeouts notice); ``heal()`` resets what was blackholed and lets traffic through."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "open"  # open | cut | blackhole
        self.closed = False
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "cut":
                self._drop(conn)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=1.0)
            except OSError:
                self._drop(conn)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks.update((conn, upstream))
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.mode == "open":
                    dst.sendall(data)
        except OSError:
            pass
        self._drop(src, dst)

    def _drop(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._socks.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _drop_all(self) -> None:
        with self._lock:
            socks = list(self._socks)
        self._drop(*socks)

    def cut(self) -> None:
        self.mode = "cut"
        self._drop_all()

    def blackhole(self) -> None:
        self.mode = "blackhole"

    def heal(self) -> None:
        if self.mode == "blackhole":
            self.mode = "cut"
            self._drop_all()  # their streams lost bytes: never let them resume
        self.mode = "open"

    def close(self) -> None:
        self.closed = True
        self.cut()
        self._listener.close()


@dataclass
class Link:
    """One client's private path to the ensemble: a proxy per member."""

    proxies: list[TcpProxy]

    @property
    def hosts(self) -> str:
        return ",".join(f"127.0.0.1:{p.port}" for p in self.proxies)

    def cut(self) -> None:
        for proxy in self.proxies:
            proxy.cut()

    def blackhole(self) -> None:
        for proxy in self.proxies:
            proxy.blackhole()

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.heal()


@dataclass
class Candidate:
    """A LeaderElection on its own client, recording (monotonic time, kind, value) for each callback."""

    name: str
    link: Link | None
    events: list[tuple[float, str, object]] = field(default_factory=list)
    election: LeaderElection = field(init=False)

    @property
    def client(self):
        return self.election.client

    def elected(self, epoch: int) -> None:
        self.events.append((time.monotonic(), "elected", epoch))

    def revoked(self, reason: str) -> None:
        self.events.append((time.monotonic(), "revoked", reason))

    def of_kind(self, kind: str, after: float = 0.0) -> list[tuple[float, str, object]]:
        return [e for e in list(self.events) if e[1] == kind and e[0] >= after]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.002)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def first_elected(cands: list[Candidate], after: float, timeout: float) -> tuple[Candidate, float, int]:
    """The candidate that got on_elected first at or after ``after``, with the time and the epoch."""

    def find():
        hits = [(c.of_kind("elected", after)[0], c) for c in cands if c.of_kind("elected", after)]
        if hits:
            (t, _, epoch), cand = min(hits, key=lambda h: h[0][0])
            return cand, t, epoch
        return None

    return wait_until(find, timeout, f"a leader among {[c.name for c in cands]}")  # type: ignore[return-value]
