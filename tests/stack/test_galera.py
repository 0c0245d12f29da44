"""The Galera members of the ``ha`` topology, against three real members started here (their own state dir next to
the test stack's, the test port base): replication, the fence race across members, a member killed -9, a member
wiped, and the whole cluster stopped or crashed and started again."""

from __future__ import annotations

import functools
import itertools
import random
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pymysql
import pytest
from polling import home_for_mysql_account, wait_until

from node.config import MYSQL_DATABASE, Config, load_config, with_overrides
from node.errors import FencedError
from node.stack.galera import GaleraMember, SavedState, choose_bootstrapper
from node.stores.connect import mysql_connect_args
from node.stores.records import CONFLICT, Records

pytestmark = pytest.mark.stack

RACE_ROUNDS = 100
ROWS = "CREATE TABLE IF NOT EXISTS galera_rows (id BIGINT AUTO_INCREMENT PRIMARY KEY, writer VARCHAR(32) NOT NULL)"


def saved(member: int, seqno: int = -1, *, running: bool = False, data: bool = True, safe: bool = False,
          view: bool = False) -> SavedState:
    return SavedState(member, running, data, seqno, safe, view)


def unknown(state: SavedState) -> int:
    raise AssertionError(f"member {state.member}'s position is not needed")


def test_who_starts_a_new_cluster():
    """choose_bootstrapper alone: no server needed."""
    assert choose_bootstrapper([saved(m, data=False) for m in (1, 2, 3)], unknown) == 1  # a new stack
    assert choose_bootstrapper([saved(1, 9), saved(2, 9), saved(3, 9, safe=True)], unknown) == 3  # left last
    assert choose_bootstrapper([saved(1, 9), saved(2, 9), saved(3, 9)], unknown) == 1  # stopped together: a tie
    assert choose_bootstrapper([saved(1, 8), saved(2, 9), saved(3, 9)], unknown) == 2  # the latest position
    # member 1 runs, waiting to join: the choice among the others is the one its own start made
    assert choose_bootstrapper([saved(1, running=True), saved(2, 8), saved(3, 9)], unknown) == 3
    # all crashed inside one Primary component: they re-form it, nobody starts a new one
    assert choose_bootstrapper([saved(m, view=True) for m in (1, 2, 3)], unknown) is None
    # crashed without a saved view (member 3 had left cleanly before): recover the positions that are unknown
    recovered = {1: 40, 2: 41}
    assert choose_bootstrapper([saved(1, view=True), saved(2, view=True), saved(3, 30)],
                               lambda s: recovered[s.member]) == 2


@dataclass
class Cluster:
    cfg: Config
    members: list[GaleraMember]

    def member(self, number: int) -> GaleraMember:
        return self.members[number - 1]

    def start(self, *numbers: int, timeout_s: float = 120.0) -> float:
        """Start the members (one after another, as ``stack up`` does) and wait until each answers as Primary;
        returns the seconds it took."""
        started = time.monotonic()
        chosen = [self.member(n) for n in numbers or (1, 2, 3)]
        for member in chosen:
            member.start()
        for member in chosen:
            wait_until(functools.partial(_ready, member), timeout_s, f"{member.name} to be Primary")
        return time.monotonic() - started


def _ready(member: GaleraMember) -> bool:
    """Whether the member answers its probe (ready, in a Primary component)."""
    try:
        member.probe()
    except Exception:  # noqa: BLE001 - not yet
        return False
    return True


def connect(cfg: Config, number: int) -> pymysql.connections.Connection:
    """haorch's user on member ``number``, reading what the cluster committed before the read (wsrep_sync_wait)."""
    conn = pymysql.connect(**mysql_connect_args(cfg, member=number - 1))
    with conn.cursor() as cur:
        cur.execute("SET SESSION wsrep_sync_wait = 1")
    return conn


def scalar(cfg: Config, number: int, sql: str, args: tuple = ()) -> object:
    conn = connect(cfg, number)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
        conn.commit()
        return row[0] if row else None
    finally:
        conn.close()


def only_member(cfg: Config, number: int) -> Config:
    """A config whose clients use member ``number`` only (a leader connected to that member)."""
    host, port = cfg.mysql_endpoints[number - 1]
    return with_overrides(cfg, mariadb=f"{host}:{port}")


@pytest.fixture(scope="module")
def galera(test_config: Config) -> Iterator[Cluster]:
    cfg = load_config(home_for_mysql_account(test_config.home, "galera"), port_base=test_config.port_base,
                      topology="ha")
    cluster = Cluster(cfg, [GaleraMember(cfg, m) for m in (1, 2, 3)])
    for member in cluster.members:  # a run that was interrupted
        member.stop()
    shutil.rmtree(cfg.home, ignore_errors=True)
    try:
        took = cluster.start()
        print(f"\ngalera: 3 members Primary {took:.1f} s after the first start")
        for member in cluster.members:
            member.bootstrap()
        scalar(cfg, 1, ROWS)
        yield cluster
    finally:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda m: m.stop(), cluster.members))


def test_the_cluster_forms_and_replicates(galera: Cluster):
    cfg = galera.cfg
    assert [m.name for m in galera.members] == ["mariadb-1", "mariadb-2", "mariadb-3"]
    for number in (1, 2, 3):
        assert scalar(cfg, number, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                                   "WHERE VARIABLE_NAME = 'WSREP_CLUSTER_SIZE'") == "3"
    conn = connect(cfg, 1)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO galera_rows (writer) VALUES ('replicates')")
        written = cur.lastrowid
    conn.commit()
    conn.close()
    assert scalar(cfg, 3, "SELECT writer FROM galera_rows WHERE id = %s", (written,)) == "replicates"
    assert scalar(cfg, 3, "SELECT COUNT(*) FROM fence") == 1  # the schema, bootstrapped once through member 1


def test_a_bootstrap_waits_out_a_moment_outside_the_primary_component(galera: Cluster):
    """A member that answered its probe can lose the Primary component before its bootstrap (a peer's join, a peer
    suspected on a loaded host): the bootstrap waits until it is back instead of failing ``stack up`` with 1047."""
    first, peers = galera.member(1), [galera.member(2), galera.member(3)]
    failure: list[BaseException] = []

    def bootstrap() -> None:
        try:
            first.bootstrap()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    for peer in peers:
        assert peer.proc.freeze()
    try:
        wait_until(lambda: not _ready(first), 30, "mariadb-1 alone to leave the Primary component")
        with pytest.raises(Exception, match="1047"):
            first.root_sql(f"CREATE DATABASE IF NOT EXISTS {MYSQL_DATABASE}")  # the bootstrap's first statement
        worker = threading.Thread(target=bootstrap, name="bootstrap")
        worker.start()
        time.sleep(3.0)
        assert worker.is_alive() and not failure, f"the bootstrap gave up outside the Primary component: {failure}"
    finally:
        for peer in peers:
            peer.proc.thaw()
    worker.join(galera.member(1).start_timeout_s)
    assert not worker.is_alive() and not failure, failure
    for member in galera.members:
        wait_until(functools.partial(_ready, member), 60, f"{member.name} to be Primary again")
    assert scalar(galera.cfg, 2, "SELECT COUNT(*) FROM fence") == 1


@dataclass
class Round:
    acked: int = 0  # fenced writes of the old epoch whose commit the old leader saw succeed
    before_raise: int = 0  # old-epoch rows member 2 had right after the raise committed there
    after: int = 0  # old-epoch rows once the old leader stopped
    raise_s: float = 0.0  # how long the raise took (it reruns while the old leader's writes win certification)
    fenced: list[FencedError] = field(default_factory=list)


def race(cfg: Config, rounds: int) -> list[Round]:
    """``rounds`` times: an old leader writes fenced batches in a loop through member 1 while, a moment later, a
    new leader raises the fence through member 2. Galera commits in one global order, so once the raise has
    committed on member 2 every write ordered before it is visible there: an old-epoch row that appears later
    committed after the raise (stale)."""
    old, new = Records(only_member(cfg, 1), retry_for_s=10), Records(only_member(cfg, 2), retry_for_s=10)
    watcher = connect(cfg, 2)
    results = []
    try:
        for number in range(rounds):
            epoch = new.fence_epoch() + 1
            old.raise_fence(epoch, "old", time.time())
            result = Round()
            key = f"race-{epoch}"

            def old_leader(result: Round = result, epoch: int = epoch, key: str = key) -> None:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        old.write_batch(epoch, "old", [(key, "t", None, "RUNNING", result.acked, None)], {},
                                        time.time())
                    except FencedError as exc:
                        result.fenced.append(exc)
                        return
                    result.acked += 1

            writer = threading.Thread(target=old_leader, name=f"old-leader-{number}")
            writer.start()
            time.sleep(random.uniform(0.005, 0.03))
            raising = time.monotonic()
            new.raise_fence(epoch + 1, "new", time.time())
            result.raise_s = time.monotonic() - raising
            with watcher.cursor() as cur:
                cur.execute("SET SESSION wsrep_sync_wait = 0")  # only what member 2 committed before the raise
                result.before_raise = cur.execute("SELECT * FROM transitions WHERE experiment_id = %s", (key,))
                watcher.commit()
            writer.join(30)
            assert not writer.is_alive(), "the old leader was never fenced"
            with watcher.cursor() as cur:
                cur.execute("SET SESSION wsrep_sync_wait = 1")
                result.after = cur.execute("SELECT * FROM transitions WHERE experiment_id = %s", (key,))
                watcher.commit()
            results.append(result)
    finally:
        watcher.close()
        old.close()
        new.close()
    return results


def test_no_fenced_write_of_a_deposed_epoch_commits_after_the_raise(galera: Cluster, caplog):
    caplog.set_level("INFO", logger="node.stores.records")
    started = time.monotonic()
    rounds = race(galera.cfg, RACE_ROUNDS)
    took = time.monotonic() - started
    stale = sum(r.after - r.before_raise for r in rounds)
    conflicts = sum("conflicted (1213)" in r.getMessage() for r in caplog.records)
    raises = sorted(r.raise_s for r in rounds)
    print(f"\nfence race: {len(rounds)} rounds in {took:.1f} s, {sum(r.acked for r in rounds)} old-epoch writes "
          f"committed before the raise, {conflicts} conflicts (1213) rerun, {stale} stale commits; raise took "
          f"{raises[len(raises) // 2] * 1000:.0f} ms median, {raises[-1] * 1000:.0f} ms at most")
    assert all(r.fenced and r.fenced[0].fence > r.fenced[0].mine for r in rounds)
    assert all(r.after == r.acked for r in rounds), "every acknowledged commit is there, nothing else"
    assert stale == 0


@dataclass
class Writer:
    """Commits one row at a time through one member, remembering when each commit returned. A transaction that
    loses certification (1213) is rerun, as haorch's stores do (``node/stores/records.py``): Galera reports so a
    conflict with a write applied from another member, e.g. two inserts given the same AUTO_INCREMENT value while
    the members recompute their offsets for a new cluster size (a member left or rejoined)."""

    cfg: Config
    number: int
    commits: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    conflicts: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = connect(self.cfg, self.number)
        try:
            while not self.stop.is_set():
                try:
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO galera_rows (writer) VALUES (%s)", (f"member-{self.number}",))
                    conn.commit()
                    self.commits.append(time.monotonic())
                except pymysql.err.MySQLError as exc:
                    if exc.args[:1] == (CONFLICT,) and conn.open:
                        self.conflicts += 1
                    else:
                        self.errors.append(f"{type(exc).__name__} {exc.args[:1]}")
                    if not conn.open:  # its member is gone
                        return
                    conn.rollback()
        finally:
            conn.close()

    def longest_gap(self, after: float) -> float:
        times = [after, *(t for t in self.commits if t > after)]
        return max(b - a for a, b in itertools.pairwise(times))


def count_rows(cfg: Config, number: int) -> int:
    value = scalar(cfg, number, "SELECT COUNT(*) FROM galera_rows")
    assert isinstance(value, int)
    return value


def member_rows(cfg: Config, number: int) -> int:
    """The rows Writer(cfg, 3) committed, read on member ``number``."""
    value = scalar(cfg, number, "SELECT COUNT(*) FROM galera_rows WHERE writer = 'member-3'")
    assert isinstance(value, int)
    return value


def test_a_member_killed_9_leaves_two_committing_and_catches_up_on_restart(galera: Cluster):
    cfg, victim = galera.cfg, galera.member(1)  # the member that started the cluster: it must rejoin, not restart it
    writers = [Writer(cfg, 2), Writer(cfg, 3)]
    threads = [threading.Thread(target=w.run) for w in writers]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        killed_at = time.monotonic()
        assert victim.proc.kill()
        time.sleep(4.0)
        assert all(w.commits and w.commits[-1] > killed_at + 3 for w in writers), "both survivors commit"
        stall = max(w.longest_gap(killed_at) for w in writers)
        took = galera.start(1)
        plan = victim.running_plan()
        assert plan is not None and not plan.new_cluster and plan.position, plan
        time.sleep(1.0)
    finally:
        for writer in writers:
            writer.stop.set()
        for thread in threads:
            thread.join(10)
    print(f"\nkill -9 of mariadb-1: commits through mariadb-2/3 stalled {stall:.2f} s at most; "
          f"{sum(len(w.commits) for w in writers)} commits, {sum(w.conflicts for w in writers)} conflicts (1213) "
          f"rerun; restart from {plan.position} (IST) took {took:.1f} s")
    assert stall < 4.0
    caught_up = victim.proc.output_since_start().decode(errors="replace")
    assert "IST received" in caught_up and "rsync SST completed on joiner" not in caught_up
    assert not [e for w in writers for e in w.errors], [w.errors for w in writers]
    assert count_rows(cfg, 1) == count_rows(cfg, 2) == count_rows(cfg, 3)


def test_a_wiped_member_rejoins_by_state_transfer(galera: Cluster):
    cfg, victim = galera.cfg, galera.member(2)
    assert victim.stop()
    shutil.rmtree(victim.datadir)
    conn = connect(cfg, 1)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO galera_rows (writer) VALUES ('while member 2 was gone')")
    conn.commit()
    conn.close()
    took = galera.start(2)
    plan = victim.running_plan()
    assert plan is not None and not plan.new_cluster and plan.position is None, plan
    print(f"\nwiped mariadb-2 rejoined by SST in {took:.1f} s")
    assert "rsync SST completed on joiner" in victim.proc.output_since_start().decode(errors="replace")
    assert scalar(cfg, 2, "SELECT COUNT(*) FROM galera_rows WHERE writer = 'while member 2 was gone'") == 1
    assert count_rows(cfg, 2) == count_rows(cfg, 1)


def test_a_whole_cluster_stop_and_start_keeps_the_data(galera: Cluster):
    cfg = galera.cfg
    rows, epoch = count_rows(cfg, 1), scalar(cfg, 1, "SELECT epoch FROM fence")
    with ThreadPoolExecutor(3) as pool:  # as `stack down` does
        assert all(pool.map(lambda m: m.stop(), galera.members))
    took = galera.start()
    plans = [m.running_plan() for m in galera.members]
    print(f"\nwhole-cluster stop, then start: Primary again in {took:.1f} s; plans: {[p and p.reason for p in plans]}")
    assert sum(1 for p in plans if p and p.new_cluster) == 1
    for number in (1, 2, 3):
        assert count_rows(cfg, number) == rows
        assert scalar(cfg, number, "SELECT epoch FROM fence") == epoch


def test_a_cluster_stopped_one_by_one_starts_from_the_member_that_left_last(galera: Cluster):
    """Members 1 and 2 start first and wait: member 3 starts the new cluster, it has the latest position."""
    cfg = galera.cfg
    rows = count_rows(cfg, 3) + len(galera.members)
    for member in galera.members:  # a row written while each member is gone, the last one through member 3 alone
        conn = connect(cfg, 3)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO galera_rows (writer) VALUES ('before a stop')")
        conn.commit()
        conn.close()
        assert member.stop()
    took = galera.start()
    plans = [m.running_plan() for m in galera.members]
    print(f"\nmembers stopped one by one, then started: Primary again in {took:.1f} s; plans: "
          f"{[p and p.reason for p in plans]}")
    assert [bool(p and p.new_cluster) for p in plans] == [False, False, True]
    for number in (1, 2, 3):
        assert count_rows(cfg, number) == rows


def test_a_whole_cluster_crash_and_start_keeps_every_commit(galera: Cluster):
    cfg = galera.cfg
    before = member_rows(cfg, 3)
    writer = Writer(cfg, 3)
    thread = threading.Thread(target=writer.run)
    thread.start()
    time.sleep(1.0)
    for member in galera.members:
        member.proc.kill()
    writer.stop.set()
    wait_until(lambda: not any(m.proc.alive() for m in galera.members), 10, "the killed members to be gone")
    thread.join(10)
    acked = len(writer.commits)
    took = galera.start()
    plans = [m.running_plan() for m in galera.members]
    print(f"\nwhole-cluster kill -9, then start: Primary again in {took:.1f} s; plans: "
          f"{[p and p.reason for p in plans]}")
    assert all(p and p.position and not p.new_cluster for p in plans), "each rejoins from its recovered position"
    assert member_rows(cfg, 1) >= before + acked
    assert count_rows(cfg, 1) == count_rows(cfg, 2) == count_rows(cfg, 3)
