"""MariaDB with its own datadir (``mariadb-install-db``), port, socket and two generated password users: haorch's
(the database's owner) and the workers' (the ledger table only), each for every address haorch's clients connect
from (``Config.sql_client_hosts``: a MariaDB account is per client address). The members of a Galera cluster
(``galera.py``) are this server with replication switched on."""

from __future__ import annotations

from pathlib import Path

from node.config import MYSQL_DATABASE, MYSQL_USER, MYSQL_WORKER_USER
from node.errors import ServiceError
from node.runtime.handle import TcpCheck
from node.stack.service import Launch, Service
from node.stores.mysql_schema import ensure_schema


class MariaDB(Service):
    name = "mariadb"
    image = "mariadb"
    binaries: tuple[str, ...] = ("mariadbd", "mariadb-install-db", "mariadb")
    start_timeout_s = 60.0
    os_user = "root"  # the account mariadbd runs as, owner of its datadir

    @property
    def port(self) -> int:
        return self.cfg.mysql_port

    @property
    def health(self) -> TcpCheck:
        return TcpCheck(self.port, "", "MariaDB", read_bytes=40)  # the server's greeting names it

    @property
    def datadir(self) -> Path:
        return self.cfg.data_dir(self.name)

    @property
    def socket(self) -> str:
        return str(self.datadir / "mariadb.sock")

    @property
    def has_data(self) -> bool:
        """Whether the datadir holds a database (``mariadb-install-db``, or a state transfer, made it)."""
        return (self.datadir / "mysql").is_dir()

    def prepare(self) -> None:
        if not self.has_data:
            self.install()

    def install(self) -> None:
        """Create the system tables in a new datadir (a crash here leaves a datadir without ``mysql/``, which the
        next start installs again)."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        done = self.proc.run(["mariadb-install-db", "--no-defaults", f"--user={self.os_user}",
                              f"--datadir={self.datadir}", "--auth-root-authentication-method=socket",
                              "--skip-test-db"], timeout_s=180)
        self.append_log(done.stdout + done.stderr)
        if done.returncode != 0:
            raise ServiceError(f"{self.name}: mariadb-install-db failed; {self.log_hint()}")

    def append_log(self, text: str) -> None:
        """Add what a one-off command printed (or a line of haorch's) to the server's log."""
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.proc.log_file, "a") as out:
            out.write(text)

    def server_args(self) -> list[str]:
        """The server's command line without its log: datadir, socket, address, port and tuning."""
        return [
            "mariadbd", "--no-defaults", f"--user={self.os_user}", f"--datadir={self.datadir}",
            f"--socket={self.socket}", f"--port={self.port}", f"--bind-address={self.address}",
            f"--pid-file={self.datadir / 'mariadb.pid'}", "--skip-name-resolve", "--max-connections=500",
            "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=256M", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin"]

    def command(self) -> Launch:
        return Launch([*self.server_args(), f"--log-error={self.proc.log_file}"])

    def root_sql(self, sql: str, timeout_s: float = 30.0) -> str:
        """Run SQL as root over the socket (root authenticates by unix socket, no password exists)."""
        out = self.proc.run(["mariadb", "--no-defaults", "-S", self.socket, "-u", "root", "-N", "-B", "-e", sql],
                            timeout_s=timeout_s)
        if out.returncode != 0:  # the client echoes the failed statement between dashes: keep its ERROR line
            lines = [line for line in out.stderr.splitlines() if line.strip()]
            raise ServiceError(f"{self.name}: {next((x for x in lines if x.startswith('ERROR')), ' '.join(lines))}")
        return out.stdout

    def probe(self) -> None:
        if self.root_sql("SELECT 1", timeout_s=5).strip() != "1":
            raise ServiceError(f"{self.name}: SELECT 1 did not answer 1")

    def bootstrap(self) -> None:
        pw = self.cfg.secrets.mysql_password.replace("'", "")
        statements = [f"CREATE DATABASE IF NOT EXISTS {MYSQL_DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"]
        for host in self.cfg.sql_client_hosts:
            who = f"'{MYSQL_USER}'@'{host}'"
            statements += [
                f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY '{pw}';",
                f"GRANT ALL PRIVILEGES ON {MYSQL_DATABASE}.* TO {who};",
                # PROCESS: a new leader finds (in information_schema) and kills a frozen old leader's transaction
                # that holds the fence row; KILL of the user's own connections needs no further privilege
                f"GRANT PROCESS ON *.* TO {who};"]
        self.root_sql("".join(statements))
        ensure_schema(self.cfg)
        self._bootstrap_worker_user()

    def _bootstrap_worker_user(self) -> None:
        """The workers' user: what a worker does to the ledger table (read claims, insert claims, update ends,
        delete the claims it releases) and nothing else — no other table, no DDL. Its password follows the
        secrets file. Runs after the schema: a table grant needs the table."""
        pw = self.cfg.secrets.worker_mysql_password.replace("'", "")
        statements = []
        for host in self.cfg.sql_client_hosts:
            who = f"'{MYSQL_WORKER_USER}'@'{host}'"
            statements += [f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY '{pw}';",
                           f"ALTER USER {who} IDENTIFIED BY '{pw}';",
                           f"GRANT SELECT, INSERT, UPDATE, DELETE ON {MYSQL_DATABASE}.ledger TO {who};"]
        self.root_sql("".join(statements))

