"""MariaDB with its own datadir (``mariadb-install-db``), port, socket and two generated password users: haorch's
(the database's owner) and the workers' (the ledger table only)."""

from __future__ import annotations

from node.config import MYSQL_DATABASE, MYSQL_USER, MYSQL_WORKER_USER
from node.errors import ServiceError
from node.runtime.handle import TcpCheck
from node.stack.service import Launch, Service
from node.stores.mysql_schema import ensure_schema


class MariaDB(Service):
    name = "mariadb"
    image = "mariadb"
    binaries = ("mariadbd", "mariadb-install-db", "mariadb")
    start_timeout_s = 60.0

    @property
    def port(self) -> int:
        return self.cfg.mysql_port

    @property
    def health(self) -> TcpCheck:
        return TcpCheck(self.port, "", "MariaDB", read_bytes=40)  # the server's greeting names it

    @property
    def datadir(self):
        return self.cfg.data_dir(self.name)

    @property
    def socket(self) -> str:
        return str(self.datadir / "mariadb.sock")

    def prepare(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        done = self.proc.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={self.datadir}",
                              "--auth-root-authentication-method=socket", "--skip-test-db"], timeout_s=180)
        with open(self.proc.log_file, "a") as out:
            out.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise ServiceError(f"mariadb: mariadb-install-db failed; {self.log_hint()}")

    def command(self) -> Launch:
        return Launch([
            "mariadbd", "--no-defaults", "--user=root", f"--datadir={self.datadir}", f"--socket={self.socket}",
            f"--port={self.port}", f"--bind-address={self.cfg.host}", f"--pid-file={self.datadir / 'mariadb.pid'}",
            f"--log-error={self.proc.log_file}", "--skip-name-resolve", "--max-connections=500",
            "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=256M", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin"])

    def root_sql(self, sql: str, timeout_s: float = 30.0) -> str:
        """Run SQL as root over the socket (root authenticates by unix socket, no password exists)."""
        out = self.proc.run(["mariadb", "--no-defaults", "-S", self.socket, "-u", "root", "-N", "-B", "-e", sql],
                            timeout_s=timeout_s)
        if out.returncode != 0:
            raise ServiceError(f"mariadb: {out.stderr.strip()}")
        return out.stdout

    def probe(self) -> None:
        if self.root_sql("SELECT 1", timeout_s=5).strip() != "1":
            raise ServiceError("mariadb: SELECT 1 did not answer 1")

    def bootstrap(self) -> None:
        pw = self.cfg.secrets.mysql_password.replace("'", "")
        host = self.cfg.host
        self.root_sql(
            f"CREATE DATABASE IF NOT EXISTS {MYSQL_DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"
            f"CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'{host}' IDENTIFIED BY '{pw}';"
            f"CREATE USER IF NOT EXISTS '{MYSQL_USER}'@'localhost' IDENTIFIED BY '{pw}';"
            f"GRANT ALL PRIVILEGES ON {MYSQL_DATABASE}.* TO '{MYSQL_USER}'@'{host}';"
            f"GRANT ALL PRIVILEGES ON {MYSQL_DATABASE}.* TO '{MYSQL_USER}'@'localhost';"
            # PROCESS: a new leader finds (in information_schema) and kills a frozen old leader's transaction that
            # holds the fence row; KILL of the user's own connections needs no further privilege
            f"GRANT PROCESS ON *.* TO '{MYSQL_USER}'@'{host}';"
            f"GRANT PROCESS ON *.* TO '{MYSQL_USER}'@'localhost';")
        ensure_schema(self.cfg)
        self._bootstrap_worker_user()

    def _bootstrap_worker_user(self) -> None:
        """The workers' user: what a worker does to the ledger table (read claims, insert claims, update ends,
        delete the claims it releases) and nothing else — no other table, no DDL. Its password follows the
        secrets file. Runs after the schema: a table grant needs the table."""
        pw = self.cfg.secrets.worker_mysql_password.replace("'", "")
        who = f"'{MYSQL_WORKER_USER}'@'{self.cfg.host}'"
        self.root_sql(
            f"CREATE USER IF NOT EXISTS {who} IDENTIFIED BY '{pw}';"
            f"ALTER USER {who} IDENTIFIED BY '{pw}';"
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {MYSQL_DATABASE}.ledger TO {who};")

