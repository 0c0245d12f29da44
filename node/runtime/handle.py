"""The interface of one program of a state dir, whatever runs it, and the health check a container runs on
itself. Depends on nothing of haorch, so every layer may name these types."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class TcpCheck:
    """A health check a container runs on itself: send ``send`` to ``port`` on the configured host and expect
    ``expect`` in the first ``read_bytes`` of the answer (or all of it, when the server closes first); ``send``
    may use printf escapes (``AMQP\\0\\0\\x09\\x01``), an empty ``expect`` accepts any answer."""

    port: int
    send: str
    expect: str
    read_bytes: int = 4096


class Handle(Protocol):
    """One program of a state dir: a process (pid file) or a container (by name)."""

    name: str

    @property
    def log_file(self) -> Path: ...

    def pid(self) -> int | None: ...

    def alive(self) -> bool: ...

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int: ...

    def stop(self, grace_s: float = 20.0) -> bool: ...

    def signal(self, sig: int) -> bool: ...

    def kill(self) -> bool: ...

    def freeze(self) -> bool: ...

    def thaw(self) -> bool: ...

    def frozen(self) -> bool: ...

    def pids(self) -> list[int]: ...

    def run(self, argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]: ...

    def output_since_start(self, max_bytes: int = 65536) -> bytes: ...

    def log_command(self, lines: int, follow: bool) -> list[str]: ...

    def info(self) -> dict[str, object]: ...
