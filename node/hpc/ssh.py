"""SSH to HPC sites: one pooled paramiko connection per site, shared by every task thread of a worker.

A connection is opened on first use and kept; each command or SFTP session is a channel of it (paramiko channels
are independent, so threads share one connection safely). Host keys are checked against the site's known_hosts
(an unknown or changed key is refused); the key file is the only credential tried::

    result = POOL.run("local", site, "squeue -h", timeout_s=30)    # RunResult(exit_code=0, stdout=..., stderr=...)
    with SftpSession(POOL, "local", site) as sftp:
        sftp.call("upload of a.txt", lambda client: client.put(local, remote, confirm=True))

Failures are :class:`SshError` with one line: ``site 'local' (127.0.0.1:23280): authentication failed with key
/k``, ``...: unreachable: connection refused``. Transient ones (refused, reset, EOF, timeouts) are retried with a
bounded backoff (:data:`SSH_RETRY`, through :func:`node.retry.call`); a refused key or host key is not. A command
is retried only up to the moment it was sent, unless the caller says it is idempotent: a connection lost while
``sbatch`` ran may have submitted the job. A connection found dead when a channel is opened is replaced once at
once; a process that dies loses only its connections (the site sees the TCP connection close).
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

from node.hpc.siteinfo import SiteInfo
from node.retry import RetryPolicy, call

log = logging.getLogger(__name__)
T = TypeVar("T")

#: transient failures: four tries within 30 s (waits 0.2, 0.4, 0.8 s), so an unreachable site answers in seconds
SSH_RETRY = RetryPolicy(deadline_s=30.0, first_wait_s=0.2, max_wait_s=2.0, attempts=4)
CONNECT_TIMEOUT_S = 10.0
MAX_OUTPUT_BYTES = 8 * 1024 * 1024  # per stream; more is read and dropped
KEEPALIVE_S = 30


class SshError(Exception):
    """A site that cannot be reached or used; ``transient``: retrying may help (the network, not the config)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class RunResult:
    """A remote command's exit status and output (decoded as UTF-8, undecodable bytes replaced)."""

    exit_code: int
    stdout: str
    stderr: str

    def last_error_line(self) -> str:
        """The last non-empty line of stderr (else of stdout), or ``exit <code>``."""
        for text in (self.stderr, self.stdout):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1][:300]
        return f"exit {self.exit_code}"


@dataclass(frozen=True)
class _Key:
    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str


class _Slot:
    """One site's connection; ``lock`` serialises connecting to it (other sites connect meanwhile)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: paramiko.SSHClient | None = None


def describe(name: str, site: SiteInfo) -> str:
    return f"site {name!r} ({site.host}:{site.port})"


def remote_command(site: SiteInfo, command: str) -> str:
    """``command`` after ``export`` of the site's env (names checked, values quoted)."""
    if not site.env:
        return command
    for key in site.env:
        if not key.isidentifier() or not key.isascii():
            raise SshError(f"site env name {key!r} is not a shell variable name", transient=False)
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in sorted(site.env.items()))
    return f"export {exports}; {command}"


class SshPool:
    """Connections by (host, port, user, key file, known_hosts); thread-safe. ``connects`` counts the
    connections opened (a test checks that calls share one)."""

    def __init__(self, connect_timeout_s: float = CONNECT_TIMEOUT_S, retry: RetryPolicy = SSH_RETRY) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.retry = retry
        self.connects = 0
        self._lock = threading.Lock()
        self._slots: dict[_Key, _Slot] = {}

    def run(self, name: str, site: SiteInfo, command: str, timeout_s: float, stdin: bytes | None = None,
            idempotent: bool = True) -> RunResult:
        """Run ``command`` (prefixed with the site's env) and wait up to ``timeout_s`` for it to end. Transient
        failures before the command was sent are retried; after, only if ``idempotent``."""
        full = remote_command(site, command)
        sent = [False]

        def once() -> RunResult:
            sent[0] = False
            return self._run_once(name, site, full, timeout_s, stdin, sent)

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, SshError) and exc.transient and (idempotent or not sent[0])

        return call(self.retry, once, what=f"hpc {describe(name, site)}", retry_on=retryable)

    def with_retry(self, name: str, site: SiteInfo, fn: Callable[[], T], what: str) -> T:
        """``fn()`` with transient failures retried under the pool's policy: SshError(transient) and the errors
        of a connection that broke mid-step (EOF, reset, timeout, any error once the connection is dead) are; a
        remote file's ``OSError`` on a live connection (no such file, permission denied) and everything else
        pass through. ``fn`` must be safe to run again from the start."""

        def once() -> T:
            try:
                return fn()
            except (EOFError, paramiko.SSHException, OSError) as exc:
                plain_os_error = isinstance(exc, OSError) and not isinstance(exc, (TimeoutError, ConnectionError))
                if plain_os_error and self.alive(site):
                    raise  # a remote file's own error: no such file, permission denied, an SFTP failure
                self.drop_dead(site)
                raise SshError(f"{describe(name, site)}: {what}: connection lost ({_reason(exc)})",
                               transient=True) from exc

        return call(self.retry, once, what=f"hpc {describe(name, site)}",
                    retry_on=lambda exc: isinstance(exc, SshError) and exc.transient)

    def session(self, name: str, site: SiteInfo, open_on: Callable[[paramiko.Transport], T]) -> T:
        """``open_on(transport)`` on the site's connection. A connection found dead is replaced once at once; a
        channel the site refuses on a live connection (OpenSSH's MaxSessions) is a transient SshError."""
        for fresh in (False, True):
            transport = self._transport(name, site)
            try:
                return open_on(transport)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if transport.is_active():
                    raise SshError(f"{describe(name, site)}: the site refused a channel: {_reason(exc)}",
                                   transient=True) from None
                self._drop_if(site, transport)
                if fresh:
                    raise SshError(f"{describe(name, site)}: connection lost: {_reason(exc)}",
                                   transient=True) from None
                log.info("%s: kept connection is dead (%s); reconnecting", describe(name, site), _reason(exc))
        raise AssertionError("unreachable")

    def alive(self, site: SiteInfo) -> bool:
        """Whether the site's kept connection is up."""
        slot = self._slot(site)
        with slot.lock:
            transport = slot.client.get_transport() if slot.client is not None else None
            return transport is not None and transport.is_active()

    def drop_dead(self, site: SiteInfo) -> None:
        """Close the site's connection if it is dead (a live one keeps serving other threads' channels)."""
        slot = self._slot(site)
        with slot.lock:
            transport = slot.client.get_transport() if slot.client is not None else None
            if slot.client is not None and (transport is None or not transport.is_active()):
                slot.client.close()
                slot.client = None

    def _drop_if(self, site: SiteInfo, transport: paramiko.Transport) -> None:
        """Close the site's connection if it still is ``transport`` (another thread may have replaced it)."""
        slot = self._slot(site)
        with slot.lock:
            if slot.client is not None and slot.client.get_transport() is transport:
                slot.client.close()
                slot.client = None

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            with slot.lock:
                if slot.client is not None:
                    slot.client.close()
                    slot.client = None

    def _slot(self, site: SiteInfo) -> _Slot:
        key = _Key(site.host, site.port, site.user, site.key_file, site.known_hosts)
        with self._lock:
            return self._slots.setdefault(key, _Slot())

    def _transport(self, name: str, site: SiteInfo) -> paramiko.Transport:
        slot = self._slot(site)
        with slot.lock:
            client = slot.client
            transport = client.get_transport() if client is not None else None
            if client is not None and (transport is None or not transport.is_active()):
                client.close()
                client = transport = None
            if client is None or transport is None:
                client = self._connect(name, site)
                slot.client = client
                transport = client.get_transport()
                assert transport is not None
            return transport

    def _connect(self, name: str, site: SiteInfo) -> paramiko.SSHClient:
        where = describe(name, site)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if site.known_hosts:
            try:
                client.load_host_keys(site.known_hosts)
            except OSError as exc:
                raise SshError(f"{where}: cannot read known_hosts {site.known_hosts}: {exc.strerror}",
                               transient=False) from None
        if not os.path.isfile(site.key_file):
            raise SshError(f"{where}: key file {site.key_file} does not exist", transient=False)
        timeout = self.connect_timeout_s
        try:
            client.connect(site.host, port=site.port, username=site.user, key_filename=site.key_file,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout,
                           allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException:
            client.close()
            raise SshError(f"{where}: host key does not match known_hosts {site.known_hosts or '(none)'}",
                           transient=False) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SshError(f"{where}: authentication failed with key {site.key_file} ({_reason(exc)})",
                           transient=False) from None
        except NoValidConnectionsError as exc:
            client.close()
            refused = all(getattr(e, "errno", None) == 111 for e in exc.errors.values())
            raise SshError(f"{where}: unreachable: {'connection refused' if refused else _reason(exc)}",
                           transient=True) from None
        except socket.gaierror as exc:
            client.close()
            raise SshError(f"{where}: unreachable: unknown host ({exc.strerror})", transient=False) from None
        except TimeoutError:
            client.close()
            raise SshError(f"{where}: unreachable: no answer within {timeout:g} s", transient=True) from None
        except paramiko.SSHException as exc:
            client.close()
            text = _reason(exc)
            if "known_hosts" in text:
                raise SshError(f"{where}: host key not in known_hosts {site.known_hosts or '(none configured)'}",
                               transient=False) from None
            if "private key" in text.lower() or "key file" in text.lower() or "encrypted" in text.lower():
                raise SshError(f"{where}: key {site.key_file} is not usable: {text}", transient=False) from None
            raise SshError(f"{where}: ssh handshake failed: {text}", transient=True) from None
        except (EOFError, ConnectionError, OSError) as exc:
            client.close()
            raise SshError(f"{where}: unreachable: {_reason(exc)}", transient=True) from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_S)
        if isinstance(transport.sock, socket.socket):
            # without it, a channel opened right after the last one closed waits for a delayed ACK (40 ms per call)
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connects += 1
        log.info("%s: connected", where)
        return client

    def _run_once(self, name: str, site: SiteInfo, command: str, timeout_s: float, stdin: bytes | None,
                  sent: list[bool]) -> RunResult:
        where = describe(name, site)
        deadline = time.monotonic() + timeout_s
        chan = self.session(name, site, lambda t: t.open_session(timeout=self.connect_timeout_s))
        try:
            sent[0] = True  # from here the site may run the command, even if the request's answer is lost
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            watch = chan.fileno()
            while not chan.eof_received:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SshError(f"{where}: command did not end within {timeout_s:g} s", transient=True)
                select.select([watch], [], [], min(left, 1.0))
                _drain(chan, out, err)
                if chan.closed and not chan.eof_received:
                    raise SshError(f"{where}: connection lost while the command ran", transient=True)
            _drain(chan, out, err)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise SshError(f"{where}: command did not end within {timeout_s:g} s", transient=True)
            status = chan.recv_exit_status()
            if status < 0:  # closed without an exit status: the connection or sshd went away
                raise SshError(f"{where}: connection lost before the command's exit status", transient=True)
            return RunResult(status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.drop_dead(site)
            raise SshError(f"{where}: connection lost while the command ran ({_reason(exc)})",
                           transient=True) from None
        finally:
            chan.close()


def login_run(name: str, site: SiteInfo, command: str, timeout_s: float) -> RunResult:
    """``command`` over a new login to the site (a pool of its own, closed after: no kept connection is reused),
    tried once (a caller that polls, like the site's sshd probe, tries again itself). SshError when the login or the
    connection fails; the command's own failure is the result's exit code. A crash of the caller closes the
    connection with its process."""
    pool = SshPool(connect_timeout_s=min(timeout_s, CONNECT_TIMEOUT_S),
                   retry=RetryPolicy(deadline_s=None, first_wait_s=0.0, max_wait_s=0.0, attempts=1))
    try:
        return pool.run(name, site, command, timeout_s)
    finally:
        pool.close()


class SftpSession:
    """One SFTP session on a site's pooled connection for a transfer of many steps; reopened after a failure."""

    def __init__(self, pool: SshPool, name: str, site: SiteInfo) -> None:
        self.pool = pool
        self.name = name
        self.site = site
        self._client: paramiko.SFTPClient | None = None

    def call(self, what: str, fn: Callable[[paramiko.SFTPClient], T]) -> T:
        """``fn(client)``, retried from the start on a new session after a transient failure; SshError in one line
        when that outlives the retries or the site refuses the step (no such file, permission denied:
        ``transient`` False). Other exceptions of ``fn`` pass through."""

        def once() -> T:
            try:
                return fn(self._session())
            except BaseException:
                self.close()
                raise

        try:
            return self.pool.with_retry(self.name, self.site, once, what)
        except OSError as exc:
            reason = exc.strerror or " ".join(str(a) for a in exc.args) or type(exc).__name__
            raise SshError(f"{describe(self.name, self.site)}: {what}: {reason}", transient=False) from None

    def close(self) -> None:
        """Close the session (quietly: its connection may be dead)."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a session of a dead connection
                pass
            self._client = None

    def __enter__(self) -> SftpSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _session(self) -> paramiko.SFTPClient:
        if self._client is None:
            client = self.pool.session(self.name, self.site, paramiko.SFTPClient.from_transport)
            if client is None:
                raise SshError(f"{describe(self.name, self.site)}: the SFTP subsystem did not start", transient=True)
            self._client = client
        return self._client


def _drain(chan: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    while chan.recv_ready():
        data = chan.recv(65536)
        if len(out) < MAX_OUTPUT_BYTES:
            out += data
    while chan.recv_stderr_ready():
        data = chan.recv_stderr(65536)
        if len(err) < MAX_OUTPUT_BYTES:
            err += data


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, NoValidConnectionsError):
        first = next(iter(exc.errors.values()), None)
        text = first.strerror if first is not None and first.strerror else text
    return text[:200] or type(exc).__name__


#: the worker's pool: every HPC task of the process shares its connections
POOL = SshPool()
