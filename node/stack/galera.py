"""The three MariaDB Galera members of the ``ha`` topology: ``mariadb-1..3``, member m on host m.

Each member is the single MariaDB (``mariadb.py``) with replication switched on: its own datadir, SQL port and the
three Galera ports (group communication, IST, SST) from ``Config.galera_port``. Members run as the ``mysql`` account
(as root, the joiner's rsync daemon drops to nobody and the state transfer fails), fail a dead peer out of the
group in ~1.3 s (the evs timeouts below; the defaults stall every commit ~6 s) and stop with SIGTERM, so that
``grastate.dat`` records their position.

How a member starts depends on what its peers are doing and what the datadirs say (:func:`choose_bootstrapper`)::

    a peer answers as Primary, or is starting a new cluster  -> join it (IST from the recovered position, or SST)
    no member has data yet                                   -> member 1 installs and starts a new cluster
    a stopped member has safe_to_bootstrap: 1                -> it starts a new cluster (the last one to leave)
    every member crashed inside one Primary component        -> all rejoin; they re-form it from gvwstate.dat
    otherwise                                                -> the stopped member with the highest position
                                                                starts a new cluster (safe_to_bootstrap set)

A member whose ``grastate.dat`` has no position (killed -9) first runs ``mariadbd --wsrep-recover`` and starts from
the position InnoDB recovered (``--wsrep-start-position``). A member whose datadir is gone rejoins by SST. The plan
of a running member is kept in ``<run>/<name>.galera.json`` so that the next member's start knows a peer is
starting a new cluster before it answers. ``haorch stack up`` starts the members one after another (each start
returns once its server is launched) and then waits for all of them: joiners launched before the member that
starts the new cluster wait for it (``pc.wait_prim_timeout``, 30 s).

Every member's plan is made from the datadirs and pid files under the state dir, so the members of one stack must
share it (one host); a member that cannot see its peers' files takes them for stopped and empty.
"""

from __future__ import annotations

import json
import pwd
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pymysql

from node.config import HA_MEMBERS, Config
from node.errors import ServiceError, SetupError
from node.retry import STORE_OPERATION, call
from node.stack.mariadb import MariaDB
from node.stack.service import Launch, Service

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
CLUSTER_NAME = "haorch"
# a dead member is suspected after 1 s and evicted after 1.5 s (checked every 0.2 s): commits stall ~1.3 s
FAILURE_DETECTION = ("evs.keepalive_period=PT0.2S;evs.inactive_check_period=PT0.2S;evs.suspect_timeout=PT1S;"
                     "evs.inactive_timeout=PT1.5S;evs.install_timeout=PT1S;evs.join_retrans_period=PT0.2S")
RECOVERED = re.compile(r"Recovered position:\s*([0-9a-f]{8}-[0-9a-f-]{27}):(-?\d+)")
NO_HISTORY = "00000000-0000-0000-0000-000000000000"
PROBE = ("SELECT MAX(IF(VARIABLE_NAME = 'WSREP_READY', VARIABLE_VALUE, NULL)), "
         "MAX(IF(VARIABLE_NAME = 'WSREP_CLUSTER_STATUS', VARIABLE_VALUE, NULL)), "
         "MAX(IF(VARIABLE_NAME = 'WSREP_LOCAL_STATE_COMMENT', VARIABLE_VALUE, NULL)) "
         "FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME IN "
         "('WSREP_READY', 'WSREP_CLUSTER_STATUS', 'WSREP_LOCAL_STATE_COMMENT')")


@dataclass(frozen=True)
class SavedState:
    """What a member's datadir says about it, and whether it runs."""

    member: int
    running: bool
    has_data: bool
    seqno: int  # -1: unknown (a crash, or running now)
    safe_to_bootstrap: bool  # the last member to leave a Primary component cleanly
    view_saved: bool  # gvwstate.dat: it was in a Primary component when it stopped (a clean stop removes it)


@dataclass(frozen=True)
class StartPlan:
    """How a member starts: as the first member of a new Primary component, or joining one; from which position."""

    new_cluster: bool
    position: str | None  # uuid:seqno from --wsrep-recover; None: grastate.dat's (or a state transfer)
    reason: str


def choose_bootstrapper(states: Sequence[SavedState], position: Callable[[SavedState], int]) -> int | None:
    """The member that starts a new Primary component when none is running, or None when the members rejoin
    without one (a crashed Primary component re-forms from gvwstate.dat). Running members are joiners waiting for
    it (a bootstrapper is found before this is asked), so only stopped members are candidates; that keeps the
    answer the same for each member's start, one after another. ``position(state)`` is a stopped member's last
    committed seqno when its grastate.dat has none (a crash): ``mariadbd --wsrep-recover``."""
    with_data = [s for s in states if s.has_data]
    if not with_data:
        return 1
    stopped = [s for s in with_data if not s.running]
    safe = [s.member for s in stopped if s.safe_to_bootstrap]
    if safe:
        return min(safe)
    if len(with_data) == len(states) and all(s.view_saved for s in with_data):
        return None
    ranked = [(s.seqno if s.seqno >= 0 else position(s), -s.member) for s in stopped]
    return -max(ranked)[1] if ranked else None


class GaleraMember(MariaDB):
    """Member ``member`` (1..3) of the Galera cluster: ``mariadb-<member>`` on ``Config.member_host(member)``."""

    binaries = (*MariaDB.binaries, "rsync")
    start_timeout_s = 120.0  # a joiner's state transfer is part of its start
    stop_grace_s = 60.0  # a clean stop leaves the group and writes grastate.dat; SIGKILL would lose the position
    os_user = "mysql"  # root's rsync SST fails: the joiner's rsync daemon drops to nobody

    def __init__(self, cfg: Config, member: int) -> None:
        self.member = member
        self.name = f"mariadb-{member}"
        super().__init__(cfg)
        self._plan: StartPlan | None = None

    # --- where ---------------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.cfg.member_host(self.member)

    @property
    def port(self) -> int:
        return self.cfg.galera_port(self.member, 0)

    def owned_ports(self) -> list[int]:
        return [self.cfg.galera_port(self.member, which) for which in range(4)]

    @property
    def plan_file(self) -> Path:
        return self.cfg.run_dir / f"{self.name}.galera.json"

    def peers(self) -> list[GaleraMember]:
        return [GaleraMember(self.cfg, m) for m in range(1, HA_MEMBERS + 1) if m != self.member]

    # --- state on disk -------------------------------------------------------------------------------------
    def saved_state(self) -> SavedState:
        """What ``grastate.dat`` and ``gvwstate.dat`` say (a member that never ran has neither)."""
        fields: dict[str, str] = {}
        try:
            for line in (self.datadir / "grastate.dat").read_text().splitlines():
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
        except OSError:
            pass
        return SavedState(member=self.member, running=self.proc.alive(), has_data=self.has_data,
                          seqno=int(fields.get("seqno", "-1")),
                          safe_to_bootstrap=fields.get("safe_to_bootstrap") == "1",
                          view_saved=(self.datadir / "gvwstate.dat").exists())

    def recover_position(self) -> tuple[str, int] | None:
        """The last committed position in InnoDB (``mariadbd --wsrep-recover``, which starts InnoDB, prints the
        position and exits; the member must be stopped). None when there is no history to recover."""
        done = self.proc.run([*self.wsrep_args(), "--wsrep-recover"], timeout_s=120)
        self.append_log(done.stdout + done.stderr)
        found = RECOVERED.search(done.stdout + done.stderr)
        if done.returncode != 0 or found is None:
            raise ServiceError(f"{self.name}: mariadbd --wsrep-recover found no position in {self.datadir} (a member "
                               f"whose datadir is removed rejoins by state transfer); {self.log_hint()}")
        uuid, seqno = found.group(1), int(found.group(2))
        return None if uuid == NO_HISTORY or seqno < 0 else (uuid, seqno)

    def running_plan(self) -> StartPlan | None:
        """The plan this member was started with, while it runs."""
        if not self.proc.alive():
            return None
        try:
            return StartPlan(**json.loads(self.plan_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def leads(self) -> bool:
        """Whether a joiner should join it: it runs in a Primary component, or it is starting a new one."""
        plan = self.running_plan()
        return (plan is not None and plan.new_cluster) or self.primary()

    def wsrep_status(self) -> tuple[str, str, str]:
        """``(wsrep_ready, wsrep_cluster_status, wsrep_local_state_comment)``, asked over the socket."""
        answer = self.root_sql(PROBE, timeout_s=5).strip().split("\t")
        ready, status, state = [*answer, "", "", ""][:3]
        return ready, status, state

    def primary(self) -> bool:
        """Whether it runs in a Primary component (synced, or a donor or joiner of a state transfer)."""
        if not self.proc.alive():
            return False
        try:
            return self.wsrep_status()[1] == "Primary"
        except ServiceError:
            return False

    # --- start ---------------------------------------------------------------------------------------------
    def check_binaries(self) -> None:
        super().check_binaries()
        if self.cfg.runtime != "process":  # the image carries them
            return
        if not Path(PROVIDER).exists():
            raise SetupError(f"{self.name}: the Galera provider {PROVIDER} is missing (package galera-4)")
        try:
            pwd.getpwnam(self.os_user)
        except KeyError:
            raise SetupError(f"{self.name}: no {self.os_user!r} account to run as (package mariadb-server)") from None

    def plan(self) -> StartPlan:
        """Decide how to start (see the module docstring). Runs ``--wsrep-recover`` on stopped members whose
        position is unknown when the choice needs it; changes no datadir."""
        recovered: dict[int, tuple[str, int] | None] = {}

        def position(state: SavedState) -> int:
            member = self if state.member == self.member else GaleraMember(self.cfg, state.member)
            recovered[state.member] = member.recover_position()
            found = recovered[state.member]
            return found[1] if found else -1

        def own_position() -> str | None:
            state = self.saved_state()
            if not state.has_data or state.seqno >= 0:
                return None  # nothing to recover, or grastate.dat has it
            found = recovered[self.member] if self.member in recovered else self.recover_position()
            return f"{found[0]}:{found[1]}" if found else None

        peers = self.peers()
        leading = next((p for p in peers if p.leads()), None)
        if leading is not None:
            return StartPlan(False, own_position(), f"joining {leading.name}")
        mine = self.saved_state()
        states = sorted([mine, *(p.saved_state() for p in peers)], key=lambda s: s.member)
        chosen = choose_bootstrapper(states, position)
        if chosen == self.member:
            why = ("no member has data" if not mine.has_data else
                   "it left the last Primary component last (safe_to_bootstrap)" if mine.safe_to_bootstrap else
                   "it has the latest position")
            return StartPlan(True, own_position(), f"starting a new cluster: {why}")
        if chosen is None:
            return StartPlan(False, own_position(), "re-forming the crashed Primary component from gvwstate.dat")
        return StartPlan(False, own_position(), f"joining mariadb-{chosen}, which starts a new cluster")

    def _check_reachable(self) -> None:
        """ServiceError (one line) when the member's account cannot reach its datadir: a parent of the state dir
        that only root may enter (a 0700 temporary dir, say)."""
        for parent in self.datadir.parents:
            if parent.stat().st_mode & 0o001 == 0:
                raise ServiceError(f"{self.name}: Galera members run as {self.os_user}, which cannot enter {parent} "
                                   f"(mode {parent.stat().st_mode & 0o777:o}); `chmod o+x {parent}` or use a state "
                                   "dir under a directory every account may enter")

    def prepare(self) -> None:
        """Make the plan, then the datadir it needs: a new cluster's first member installs an empty datadir, a
        joiner's stays empty (its state transfer fills it). A crash after the plan file is written but before
        the server runs leaves a stale plan, read only while the member runs."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._check_reachable()
        shutil.chown(self.datadir, self.os_user, self.os_user)
        plan = self.plan()
        if plan.new_cluster:
            if not self.has_data:
                self.install()
            self._mark_safe_to_bootstrap()
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        self.plan_file.write_text(json.dumps(asdict(plan)))
        self.append_log(f"haorch: {self.name}: {plan.reason}"
                        + (f" from position {plan.position}" if plan.position else "") + "\n")
        self._plan = plan

    def _mark_safe_to_bootstrap(self) -> None:
        """mariadbd refuses --wsrep-new-cluster on a datadir whose grastate.dat says it is not safe; the plan chose
        this member because it is. The new file replaces the old one whole: a crash leaves one or the other."""
        grastate = self.datadir / "grastate.dat"
        if not grastate.exists():
            return
        marked = grastate.with_name(".grastate.dat.haorch")
        marked.write_text(re.sub(r"(?m)^safe_to_bootstrap:.*$", "safe_to_bootstrap: 1", grastate.read_text()))
        shutil.chown(marked, self.os_user, self.os_user)
        marked.replace(grastate)

    def wsrep_args(self) -> list[str]:
        """The server's command line with replication on (no start mode: see ``command``)."""
        host = self.address
        peers = ",".join(f"{self.cfg.member_host(m)}:{self.cfg.galera_port(m, 1)}" for m in range(1, HA_MEMBERS + 1))
        options = (f"gmcast.listen_addr=tcp://{host}:{self.cfg.galera_port(self.member, 1)};"
                   f"ist.recv_addr={host}:{self.cfg.galera_port(self.member, 2)};gcache.size=64M;{FAILURE_DETECTION}")
        return [*self.server_args(), "--binlog-format=ROW", "--innodb-autoinc-lock-mode=2", "--wsrep-on=ON",
                f"--wsrep-provider={PROVIDER}", f"--wsrep-cluster-name={CLUSTER_NAME}",
                f"--wsrep-cluster-address=gcomm://{peers}", f"--wsrep-node-name={self.name}",
                f"--wsrep-node-address={host}:{self.cfg.galera_port(self.member, 1)}",
                f"--wsrep-sst-receive-address={host}:{self.cfg.galera_port(self.member, 3)}",
                "--wsrep-sst-method=rsync", f"--wsrep-provider-options={options}"]

    def command(self) -> Launch:
        if self._plan is None:
            raise ServiceError(f"{self.name}: command() before prepare() made its start plan")
        args = self.wsrep_args()
        if self._plan.position:
            args.append(f"--wsrep-start-position={self._plan.position}")
        if self._plan.new_cluster:
            args.append("--wsrep-new-cluster")
        return Launch(args)

    # --- serve ---------------------------------------------------------------------------------------------
    def probe(self) -> None:
        """A query that answers only on a member that accepts transactions in a Primary component."""
        ready, status, state = self.wsrep_status()
        if (ready, status) != ("ON", "Primary"):
            raise ServiceError(f"{self.name}: wsrep_ready={ready} cluster_status={status} state={state}")

    def bootstrap(self) -> None:
        """Users and schema, once for the cluster (Galera replicates them): by the lowest-numbered member that
        answers as Primary. A member that answered its probe can still fall out of the Primary component for a
        moment (a view change while a peer joins, or a peer suspected on a loaded host): its statements then fail
        with 1047, and the bootstrap is retried until ``start_timeout_s``. Every statement is idempotent, so a
        crash or failure half-way leaves what a retry or the next ``stack up`` completes."""
        if any(p.member < self.member and p.primary() for p in self.peers()):
            return
        call(STORE_OPERATION.within(self.start_timeout_s), super().bootstrap, what=f"{self.name}: bootstrap",
             retry_on=not_primary)

    def stop(self) -> bool:
        stopped = self.proc.stop(grace_s=self.stop_grace_s)
        self.plan_file.unlink(missing_ok=True)
        return stopped


#: pymysql's codes of a member outside the Primary component (1047) or of no member reachable or serving
NOT_SERVING = (1047, 2003, 2006, 2013)


def not_primary(exc: BaseException) -> bool:
    """Whether a failed SQL step may pass once the cluster is Primary again: 1047 from the ``mariadb`` client, or
    from pymysql a member not ready or no member served (not, say, a refused login: that waits for nothing)."""
    if isinstance(exc, pymysql.err.OperationalError):
        return bool(exc.args) and exc.args[0] in NOT_SERVING
    return isinstance(exc, ServiceError) and "ERROR 1047" in str(exc)


def galera_members(cfg: Config) -> list[Service]:
    """Members 1..3, in the order ``stack up`` starts them."""
    return [GaleraMember(cfg, m) for m in range(1, HA_MEMBERS + 1)]
