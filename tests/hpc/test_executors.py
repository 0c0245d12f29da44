"""The HPC executors against the real test site (SLURM 22.05 + slurmdbd + munge + sshd, node/hpc/site.py):
staging with checksums, idempotent re-runs, corruption and limits; one SLURM job per task whatever attempt asks
(adoption), a new job only after a failed one, SLURM's refusals and outcomes in one line, cancellation; the SSH
pool (one connection for all threads, a dead one replaced, refused keys and ports). Prints the sbatch round trip
over the pooled connection and over a fresh connection per call."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import statistics
import subprocess
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from polling import wait_until

from node.config import Config
from node.hpc import site as hpc_site_module
from node.hpc import slurm
from node.hpc.siteinfo import SiteInfo, forget_site, load_sites, save_site, site_named
from node.hpc.ssh import POOL, SshError, SshPool
from node.worker import hpc_executors
from node.worker.executors import EXECUTORS, ExecutionContext, ExecutorFailure, NotYet, get_executor

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def home(hpc_site: Config) -> Path:
    (hpc_site.home / "data").mkdir(parents=True, exist_ok=True)
    return hpc_site.home


@pytest.fixture(scope="module")
def info(home: Path) -> SiteInfo:
    return site_named(load_sites(home), "local")


def ctx(home: Path, experiment: str, task: str = "t", attempt: int = 1) -> ExecutionContext:
    return ExecutionContext(experiment, task, attempt, seed=0, home=str(home))


def new_experiment() -> str:
    return f"exp-{uuid.uuid4().hex[:8]}"


def run(name: str, params: dict[str, Any], context: ExecutionContext) -> dict[str, Any]:
    return get_executor(name, shell_enabled=False)(params, context)


def failure(name: str, params: dict[str, Any], context: ExecutionContext) -> str:
    """The one-line message the executor fails with."""
    with pytest.raises(ExecutorFailure) as caught:
        run(name, params, context)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def site_shell(info: SiteInfo, command: str) -> str:
    result = POOL.run("local", info, command, timeout_s=60)
    assert result.exit_code == 0, result
    return result.stdout


def monitor_until_done(home: Path, job_id: str, experiment: str, timeout_s: float = 90) -> dict[str, Any]:
    """Run slurm_monitor the way the leader re-dispatches it: again after each NotYet's delay."""
    deadline = time.monotonic() + timeout_s
    waits = 0
    while True:
        try:
            result = run("slurm_monitor", {"job_id": job_id, "poll_s": 0.3}, ctx(home, experiment, "mon"))
            result["_waits"] = waits
            return result
        except NotYet as wait:
            assert wait.status.startswith(f"job {job_id} "), wait.status
            waits += 1
            assert time.monotonic() < deadline, f"job {job_id} still {wait.status} after {timeout_s} s"
            time.sleep(wait.recheck_after_s)


def task_jobs(info: SiteInfo, experiment: str, task: str) -> list[str]:
    """Every job of the task as sacct knows it (any state, any attempt)."""
    names = ",".join(slurm.lookup_names(experiment, task, 20))
    out = site_shell(info, f"sacct -n -P -X -S now-1days --name={shlex.quote(names)} -o JobID")
    return sorted({line.split("_")[0] for line in out.split()}, key=int)


# --- staging -------------------------------------------------------------------------------------------------

def make_tree(root: Path) -> dict[str, bytes]:
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(200_000), "sub/deeper/c": b"", "with space.txt": b"s"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_stage_in_copies_a_directory_once_and_refuses_a_changed_target(home: Path, info: SiteInfo) -> None:
    exp = new_experiment()
    src = home / "data" / exp
    files = make_tree(src)
    params = {"src": exp, "dst": f"staged/{exp}"}
    first = run("stage_in", params, ctx(home, exp))
    target = Path(info.work_dir) / "staged" / exp
    assert first["path"] == str(target) and first["files"] == 4 and first["copied"] == 4
    assert first["bytes"] == sum(len(d) for d in files.values()) and first["sha256_complete"]
    for rel, data in files.items():
        assert (target / rel).read_bytes() == data
    assert not list(target.rglob("*.part"))
    before = {rel: (target / rel).stat() for rel in files}

    again = run("stage_in", params, ctx(home, exp, attempt=2))
    assert again["copied"] == 0 and again["tree_sha256"] == first["tree_sha256"]
    after = {rel: (target / rel).stat() for rel in files}
    assert all((before[r].st_ino, before[r].st_mtime_ns) == (after[r].st_ino, after[r].st_mtime_ns) for r in files)

    (target / "sub" / "b.bin").write_bytes(b"corrupted on the site")
    message = failure("stage_in", params, ctx(home, exp, attempt=3))
    assert message == (f"stage_in {src}: {target}/sub/b.bin on site 'local' ({info.host}:{info.port}) exists with "
                       f"another sha256 (1 such file(s)); set overwrite: true to replace")
    assert (target / "a.txt").stat().st_ino == before["a.txt"].st_ino  # nothing was copied before the refusal

    fixed = run("stage_in", {**params, "overwrite": True}, ctx(home, exp, attempt=4))
    assert fixed["copied"] == 1 and (target / "sub" / "b.bin").read_bytes() == files["sub/b.bin"]


def test_a_corrupted_upload_is_sent_again_and_never_lands(home: Path, info: SiteInfo,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    exp = new_experiment()
    (home / "data" / exp).mkdir()
    (home / "data" / exp / "f").write_bytes(b"the real bytes")
    real_put = paramiko.SFTPClient.put
    corrupt = {"left": 1}
    puts = []

    def flaky_put(self: paramiko.SFTPClient, localpath: str, remotepath: str, callback: Any = None,
                  confirm: bool = True) -> Any:
        puts.append(remotepath)
        result = real_put(self, localpath, remotepath, callback, confirm)
        if corrupt["left"] > 0:  # the bytes change on the way: same size, other content
            corrupt["left"] -= 1
            with self.open(remotepath, "r+") as f:
                f.write(b"THE")
        return result

    monkeypatch.setattr(paramiko.SFTPClient, "put", flaky_put)
    out = run("stage_in", {"src": f"{exp}/f", "dst": f"{exp}/f"}, ctx(home, exp))
    target = Path(info.work_dir) / exp / "f"
    assert out["copied"] == 1 and len(puts) == 2 and target.read_bytes() == b"the real bytes"

    corrupt["left"] = 99
    (home / "data" / exp / "g").write_bytes(b"other bytes")
    message = failure("stage_in", {"src": f"{exp}/g", "dst": f"{exp}/g"}, ctx(home, exp))
    assert "arrived on site 'local'" in message and "after 3 uploads" in message
    assert not (target.parent / "g").exists() and not list(target.parent.glob(".*part"))


def test_stage_out_copies_back_verified_and_once(home: Path, info: SiteInfo) -> None:
    exp = new_experiment()
    remote = Path(info.work_dir) / exp / "results"
    files = make_tree(remote)
    params = {"src": f"{exp}/results", "dst": f"{exp}/back"}
    out = run("stage_out", params, ctx(home, exp))
    local = home / "data" / exp / "back"
    assert out["files"] == 4 and out["copied"] == 4 and out["path"] == str(local)
    for rel, data in files.items():
        assert (local / rel).read_bytes() == data
    inode = (local / "a.txt").stat().st_ino
    assert run("stage_out", params, ctx(home, exp, attempt=2))["copied"] == 0
    assert (local / "a.txt").stat().st_ino == inode

    (local / "a.txt").write_bytes(b"changed here")
    assert "exists with another sha256" in failure("stage_out", params, ctx(home, exp))
    single = run("stage_out", {"src": f"{exp}/results/a.txt", "dst": f"{exp}/one.txt"}, ctx(home, exp))
    assert single["files"] == 1 and (home / "data" / exp / "one.txt").read_bytes() == files["a.txt"]
    assert single["sha256"] == {"one.txt": out["sha256"]["a.txt"]}


def test_staging_refuses_bad_input_in_one_line(home: Path, info: SiteInfo) -> None:
    exp = new_experiment()
    data = home / "data"
    (data / exp).mkdir()
    (data / exp / "big").write_bytes(b"x" * 1000)
    c = ctx(home, exp)
    assert failure("stage_in", {"src": f"{exp}/nope", "dst": "x"}, c) == \
        f"stage_in {data}/{exp}/nope: {data}/{exp}/nope does not exist"
    assert failure("stage_in", {"src": f"{exp}/big", "dst": "x", "max_bytes": 999}, c) == \
        f"stage_in {data}/{exp}/big holds 1000 bytes, more than max_bytes 999"
    assert "is not under the data location" in failure("stage_in", {"src": "/etc/passwd", "dst": "x"}, c)
    assert "is not under the data location" in failure("stage_in", {"src": "../hpc/sites.json", "dst": "x"}, c)
    assert "must not contain '..'" in failure("stage_in", {"src": f"{exp}/big", "dst": "../x"}, c)
    os.symlink("/etc/hostname", data / exp / "link")
    assert "is a symlink" in failure("stage_in", {"src": exp, "dst": "x"}, c)
    assert failure("stage_out", {"src": f"{exp}/absent", "dst": "y"}, c) == \
        f"stage_out {info.work_dir}/{exp}/absent: {info.work_dir}/{exp}/absent does not exist on site 'local' " \
        f"({info.host}:{info.port})"
    assert failure("stage_in", {"src": f"{exp}/big", "dst": "x", "site": "nowhere"}, c).startswith(
        "no HPC site 'nowhere' configured; sites: ")


# --- SLURM -----------------------------------------------------------------------------------------------------

def test_a_later_attempt_adopts_the_job_instead_of_submitting_again(home: Path, info: SiteInfo) -> None:
    exp = new_experiment()
    params = {"script": "echo started; sleep 2; echo done", "time": "5"}
    # attempt 1's worker is SIGKILLed between sbatch and its answer: its job exists, nobody heard of it
    first = run("slurm_submit", params, ctx(home, exp, "sim", attempt=1))
    assert not first["adopted"] and first["job_name"] == f"haorch.{exp}.sim.a1"
    workdir = Path(info.work_dir) / exp / "sim"
    assert first["workdir"] == str(workdir) and (workdir / "job-a1.sh").is_file()
    second = run("slurm_submit", params, ctx(home, exp, "sim", attempt=2))
    assert second["adopted"] and second["job_id"] == first["job_id"] and second["attempt"] == 1
    assert second["state"] in ("PENDING", "RUNNING")

    done = monitor_until_done(home, first["job_id"], exp)
    assert done["state"] == "COMPLETED" and done["exit_code"] == "0:0" and done["_waits"] >= 1
    assert (workdir / f"slurm-{first['job_id']}.out").read_text() == "started\ndone\n"
    third = run("slurm_submit", params, ctx(home, exp, "sim", attempt=3))  # a completed job is adopted too
    assert third["adopted"] and third["job_id"] == first["job_id"] and third["state"] == "COMPLETED"
    assert wait_until(lambda: task_jobs(info, exp, "sim"), 15, "sacct to list the job") == [first["job_id"]]
    accounted = wait_until(lambda: hpc_executors._sacct_job("local", info, first["job_id"], 1.0), 15, "sacct")
    assert accounted.state == "COMPLETED" and accounted.rows[0].exit_code == "0:0"


def test_after_a_failed_job_only_a_retry_submits_a_new_one(home: Path, info: SiteInfo) -> None:
    exp = new_experiment()
    params = {"script": "#!/bin/sh\necho failing >&2\nexit 3\n"}
    first = run("slurm_submit", params, ctx(home, exp, "f", attempt=1))
    with pytest.raises(ExecutorFailure) as caught:
        monitor_until_done(home, first["job_id"], exp)
    assert str(caught.value) == f"job {first['job_id']} ended FAILED (exit 3:0)"
    # once slurmctld has forgotten the job (MinJobAge), the monitor reads sacct: the same outcome
    accounted = wait_until(lambda: hpc_executors._sacct_job("local", info, first["job_id"], 1.0), 15, "sacct")
    assert slurm.outcome(accounted) == (False, f"job {first['job_id']} ended FAILED (exit 3:0)")
    rerun = failure("slurm_submit", params, ctx(home, exp, "f", attempt=1))  # the same attempt again
    assert rerun.startswith(f"job {first['job_id']} ended FAILED (exit 3:0); this attempt submitted it before")
    retry = run("slurm_submit", {"script": "true"}, ctx(home, exp, "f", attempt=2))
    assert not retry["adopted"] and retry["job_id"] != first["job_id"] and retry["attempt"] == 2
    assert monitor_until_done(home, retry["job_id"], exp)["state"] == "COMPLETED"
    assert wait_until(lambda: len(ids := task_jobs(info, exp, "f")) == 2 and ids, 15, "both jobs in sacct") == \
        sorted([first["job_id"], retry["job_id"]], key=int)


def test_slurm_refusals_are_one_line(home: Path, info: SiteInfo) -> None:
    exp = new_experiment()
    c = ctx(home, exp, "r")
    where = f"site 'local' ({info.host}:{info.port})"
    assert failure("slurm_submit", {"script": "true", "partition": "nope"}, c) == \
        f"{where} rejected the job: sbatch: error: Batch job submission failed: Invalid partition name specified"
    assert failure("slurm_submit", {"script": "true", "time": "soon"}, c) == \
        f"{where} rejected the job: sbatch: error: Invalid --time specification"
    assert "must be one line" in failure("slurm_submit", {"script": "true", "partition": "batch\n#SBATCH -J x"}, c)
    assert failure("slurm_submit", {"script": "  "}, c) == "param 'script' is empty"
    assert failure("slurm_monitor", {"job_id": "99999999"}, c) == \
        f"job 99999999 is unknown to squeue and sacct on {where}"
    assert task_jobs(info, exp, "r") == []


def test_array_jobs_end_when_every_element_has(home: Path, info: SiteInfo) -> None:
    exp = new_experiment()
    ok = run("slurm_submit", {"script": "echo $SLURM_ARRAY_TASK_ID", "array": "0-3"}, ctx(home, exp, "arr"))
    assert ok["array_tasks"] == 4
    done = monitor_until_done(home, ok["job_id"], exp)
    assert done["states"] == {"COMPLETED": 4} and done["array_tasks"] == 4
    workdir = Path(ok["workdir"])
    assert sorted((workdir / f"slurm-{ok['job_id']}_{i}.out").read_text() for i in range(4)) == \
        ["0\n", "1\n", "2\n", "3\n"]

    bad = run("slurm_submit", {"script": "test $SLURM_ARRAY_TASK_ID -ne 2", "array": "0-3"}, ctx(home, exp, "arr2"))
    with pytest.raises(ExecutorFailure) as caught:
        monitor_until_done(home, bad["job_id"], exp)
    assert str(caught.value) == (f"job {bad['job_id']} ended FAILED: 1 of 4 array tasks failed, first "
                                 f"{bad['job_id']}_2 FAILED (exit 1:0)")
    accounted = wait_until(lambda: (job := hpc_executors._sacct_job("local", info, bad["job_id"], 1.0)) and
                           job.terminal and len(job.rows) == 4 and job, 15, "sacct to list the 4 array tasks")
    assert slurm.outcome(accounted) == (False, str(caught.value))


def test_cancelling_scancels_the_tasks_live_jobs(home: Path, info: SiteInfo) -> None:
    exp = new_experiment()
    long = {"script": "sleep 120"}
    a = run("slurm_submit", long, ctx(home, exp, "a"))
    b = run("slurm_submit", long, ctx(home, exp, "b"))
    other = run("slurm_submit", long, ctx(home, new_experiment(), "a"))
    hpc_executors.undo_slurm_submit({}, ctx(home, exp, "a", attempt=5))  # the undo of task a, any attempt
    with pytest.raises(ExecutorFailure, match=rf"^job {a['job_id']} ended CANCELLED \(exit 0:\d+\)$"):
        monitor_until_done(home, a["job_id"], exp)
    with pytest.raises(NotYet):
        run("slurm_monitor", {"job_id": b["job_id"]}, ctx(home, exp, "m"))
    assert hpc_executors.cancel_experiment_jobs(home, exp) == [b["job_id"]]
    with pytest.raises(ExecutorFailure, match="CANCELLED"):
        monitor_until_done(home, b["job_id"], exp)
    assert run("slurm_cancel", {"job_ids": other["job_id"]}, ctx(home, exp, "c")) == {"cancelled": [other["job_id"]]}
    with pytest.raises(ExecutorFailure, match="CANCELLED"):
        monitor_until_done(home, other["job_id"], exp)
    assert hpc_executors.cancel_experiment_jobs(home, exp) == []


# --- the SSH layer ---------------------------------------------------------------------------------------------

def other_key(folder: Path) -> Path:
    path = folder / f"stranger-{uuid.uuid4().hex[:6]}"
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    path.chmod(0o600)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unusable_sites_fail_in_one_clear_line(home: Path, info: SiteInfo, tmp_path: Path) -> None:
    stranger = other_key(tmp_path)
    port = free_port()
    empty_known = tmp_path / "known_hosts"
    empty_known.write_text("")
    sites = {"badkey": replace(info, key_file=str(stranger)), "closed": replace(info, host="127.0.0.1", port=port),
             "unpinned": replace(info, known_hosts=str(empty_known)),
             "nokey": replace(info, key_file=str(tmp_path / "absent"))}
    for name, broken in sites.items():
        save_site(home, name, broken)
    try:
        check_unusable_sites(home, info, stranger, port, empty_known, tmp_path)
    finally:
        for name in sites:
            forget_site(home, name)


def check_unusable_sites(home: Path, info: SiteInfo, stranger: Path, port: int, empty_known: Path,
                         tmp_path: Path) -> None:
    exp = new_experiment()
    c = ctx(home, exp)
    job = {"script": "true"}
    t0 = time.monotonic()
    assert failure("slurm_submit", {**job, "site": "badkey"}, c) == \
        f"site 'badkey' ({info.host}:{info.port}): authentication failed with key {stranger} (Authentication failed.)"
    assert time.monotonic() - t0 < 5  # not retried
    t0 = time.monotonic()
    assert failure("slurm_submit", {**job, "site": "closed"}, c) == \
        f"site 'closed' (127.0.0.1:{port}): unreachable: connection refused"
    refused_s = time.monotonic() - t0
    assert 1.0 < refused_s < 10  # retried with backoff (0.2 + 0.4 + 0.8 s), then given up
    # a monitor keeps waiting through an outage of the site (the job runs on; the task's timeout bounds it)
    with pytest.raises(NotYet, match=rf"^job 1: site 'closed' \(127.0.0.1:{port}\): unreachable: connection refused$"):
        run("slurm_monitor", {"job_id": "1", "site": "closed"}, c)
    assert failure("slurm_submit", {**job, "site": "unpinned"}, c) == \
        f"site 'unpinned' ({info.host}:{info.port}): host key not in known_hosts {empty_known}"
    assert failure("slurm_submit", {**job, "site": "nokey"}, c) == \
        f"site 'nokey' ({info.host}:{info.port}): key file {tmp_path / 'absent'} does not exist"
    print(f"\n[hpc] connection refused reported after {refused_s:.2f} s (4 tries)")


def test_threads_share_one_connection_and_a_dead_one_is_replaced(hpc_site: Config, info: SiteInfo) -> None:
    pool = SshPool()
    results: list[int] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(pool.run("local", info, "sleep 0.2; echo ok", timeout_s=30).exit_code)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == [0] * 8 and pool.connects == 1

    # the site's end of the connection dies (its sshd session process is killed): the next call reconnects once
    sessions = sshd_sessions(hpc_site)
    assert sessions, "no sshd session process found"
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pool.alive(info), 10, "the connection to be seen dead", poll_s=0.1)
    assert pool.run("local", info, "echo again", timeout_s=30).stdout == "again\n"
    assert pool.connects == 2
    pool.close()


def sshd_sessions(cfg: Config) -> list[int]:
    """The per-connection processes of the site's sshd (its listener's children)."""
    listener = hpc_site_module.site(cfg).sshd.proc.pid()
    assert listener, "the site's sshd is not running"
    children = subprocess.run(["pgrep", "-P", str(listener)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in children]


def test_a_command_that_outlives_its_timeout_is_one_line(info: SiteInfo) -> None:
    pool = SshPool()
    with pytest.raises(SshError, match=r"^site 'local' \(.*\): command did not end within 0.5 s$"):
        pool.run("local", info, "sleep 5", timeout_s=0.5, idempotent=False)
    assert pool.run("local", info, "echo fine", timeout_s=10).stdout == "fine\n"
    pool.close()


def test_measure_sbatch_round_trip_pooled_and_fresh(info: SiteInfo) -> None:
    command = "sbatch --parsable --job-name=haorch-measure --wrap=true"
    pooled = SshPool()
    pooled.run("local", info, "true", timeout_s=30)  # connected once, as a worker is after its first task
    kept, fresh = [], []
    for _ in range(15):
        t0 = time.monotonic()
        assert pooled.run("local", info, command, timeout_s=30).exit_code == 0
        kept.append(time.monotonic() - t0)
        one_off = SshPool()
        t0 = time.monotonic()
        assert one_off.run("local", info, command, timeout_s=30).exit_code == 0
        fresh.append(time.monotonic() - t0)
        one_off.close()
    pooled.close()
    print(f"\n[hpc] sbatch round trip, 15 each: pooled median {statistics.median(kept) * 1000:.0f} ms "
          f"(max {max(kept) * 1000:.0f}), fresh connection median {statistics.median(fresh) * 1000:.0f} ms "
          f"(max {max(fresh) * 1000:.0f})")
    assert statistics.median(kept) < statistics.median(fresh)


def test_every_hpc_executor_is_registered() -> None:
    assert {"stage_in", "stage_out", "slurm_submit", "slurm_monitor", "slurm_cancel"} <= set(EXECUTORS)
