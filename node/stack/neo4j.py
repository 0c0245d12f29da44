"""Neo4j Community, embedded in the small Maven-built launcher (``node/stack/neo4j_launcher.py``; Bolt on loopback,
auth on)."""

from __future__ import annotations

from pathlib import Path

from node.errors import ServiceError
from node.private_files import write_private
from node.runtime.handle import TcpCheck
from node.runtime.programs import asset
from node.stack.neo4j_launcher import LAUNCHER_JAR, LAUNCHER_LIB, ensure_launcher
from node.stack.service import Launch, Service
from node.stores.connect import neo4j_driver
from node.stores.neo4j_schema import ensure_schema


class Neo4j(Service):
    name = "neo4j"
    image = "neo4j"
    binaries = ("java",)
    start_timeout_s = 120.0

    @property
    def port(self) -> int:
        return self.cfg.neo4j_port

    @property
    def health(self) -> TcpCheck:
        # the Bolt handshake (magic, then versions 5.0 and 4.4): any answer is a version choice
        return TcpCheck(self.port, "\\x60\\x60\\xb0\\x17\\0\\0\\0\\x05\\0\\0\\x04\\x04" + "\\0" * 8, "", read_bytes=4)

    @property
    def password_file(self) -> Path:
        return self.cfg.data_dir(self.name) / "password"

    def check_binaries(self) -> None:
        super().check_binaries()
        if self.cfg.runtime == "process":
            ensure_launcher()

    def prepare(self) -> None:
        data = self.cfg.data_dir(self.name)
        data.mkdir(parents=True, exist_ok=True)
        write_private(self.password_file, self.cfg.secrets.neo4j_password)

    def command(self) -> Launch:
        return Launch([
            "java", "-Xms128m", f"-Xmx{self.cfg.neo4j_heap}", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
            "--add-opens=java.base/java.nio=ALL-UNNAMED", "-Djava.net.preferIPv4Stack=true",
            "-cp", f"{asset(self.cfg, LAUNCHER_JAR)}:{asset(self.cfg, LAUNCHER_LIB)}/*", "io.haorch.neo4j.Launcher",
            "--home", str(self.cfg.data_dir(self.name) / "db"), "--bolt-port", str(self.port),
            "--bolt-address", self.cfg.host, "--password-file", str(self.password_file),
            "--pagecache", self.cfg.neo4j_pagecache])

    def probe(self) -> None:
        # Bolt listens before the launcher has set the password: an early login fails, and three failures lock
        # the user (AuthenticationRateLimit) for as long as the probes keep failing. Log in only after READY.
        if not self._launcher_ready():
            raise ServiceError("neo4j: launcher has not printed READY yet")
        with neo4j_driver(self.cfg) as driver:
            try:
                records, _, _ = driver.execute_query("RETURN 1 AS one")
            except Exception as exc:  # noqa: BLE001 - any driver failure means not ready
                raise ServiceError(f"neo4j: {type(exc).__name__}: {exc}") from None
            if records[0]["one"] != 1:
                raise ServiceError("neo4j: RETURN 1 did not answer 1")

    def _launcher_ready(self) -> bool:
        """True when the launcher's log shows READY after its latest start (read from the last 64 KiB)."""
        return b"HAORCH-NEO4J READY" in self.proc.output_since_start()

    def bootstrap(self) -> None:
        ensure_schema(self.cfg)
