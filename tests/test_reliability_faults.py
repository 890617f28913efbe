"""Reliability, faults: nothing finished is lost. Real processes, real signals, a real PostgreSQL server, real file
systems; nothing is mocked and no fault-injection hook exists in the code.

How each fault is timed, from the outside only:

* **during training**: the trial's ``trials/<n>/spec.json`` exists (``nas.tf.candidate.evaluate`` writes it just
  before ``train_qat``), its ``model_int8.tflite`` does not, and the worker holds no extra descriptor on its log;
* **during conversion**: ``nas.tf.convert.to_int8`` redirects the converter's stdout into stderr while
  ``converter.convert()`` runs, so the worker holds a *third* descriptor on its log file exactly then
  (``/proc/<pid>/fd``); the kill lands inside that window (checked: no ``model_int8.tflite`` afterwards);
* **during a storage write**: SQLite's rollback journal ``study.db-journal`` exists only while a write
  transaction is open. The test holds a read transaction (a SHARED lock) on ``study.db``, so the worker's commit
  waits for its EXCLUSIVE lock with the journal written (SQLite's locking protocol, https://sqlite.org/lockingv3.html);
  the coordinator is stopped, so the writer is the worker. The worker is killed while it waits, and the journal
  still being there afterwards proves the transaction was cut off. (Racing the journal's milliseconds of life
  without the lock failed 5 tries in a row on a loaded CI machine.)

Out of memory: the worker inherits an address-space limit (``RLIMIT_AS``, set for the test's ``nas search`` process
only) and the space holds a 2048x2048 input whose data preparation cannot fit it. NaN: ``--lr 1e30``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from nas import results, rundir, search
from nas.storage import trial_id
from tests.test_reliability_input import one_line_error
from nas.testing import free_port, pg_bin
from tests.test_search import NAS, QUICK, ROOT, TINY, nas, wait_for, write_space

# -- helpers shared with test_reliability_concurrency.py ---------------------------------------------------------


def start_search(tmp_path: Path, *args: str, name: str = "search", preexec_fn=None) -> subprocess.Popen:
    """`nas search ...` in the background, in a session of its own (so signals reach only it)."""
    out = open(tmp_path / f"{name}.out", "w")
    err = open(tmp_path / f"{name}.err", "w")
    proc = subprocess.Popen([*NAS, "search", *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT,
                            start_new_session=True, preexec_fn=preexec_fn)
    out.close()
    err.close()
    proc.err_path = tmp_path / f"{name}.err"  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


def workers_of(pid: int) -> list[int]:
    """Live `python -m nas.search worker` children of the coordinator ``pid`` (other people's searches ignored)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z" and b"nas.search\x00worker" in cmd:
            found.append(int(entry))
    return found


def log_descriptors(pid: int, logs: Path) -> int:
    """How many open descriptors of ``pid`` point at a file in ``logs`` (2 normally: stdout and stderr)."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(logs))
            except OSError:
                continue
    except OSError:
        return 0
    return n


def is_zombie_or_gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trained_snapshot(run_dir: Path, storage: str | None = None) -> dict[int, tuple]:
    """What a finished trial is: its figures in the study and the bytes of its model."""
    run = results.Run(run_dir, storage)
    snap = {}
    for t in run.frozen_trials():
        if t.state.name == "COMPLETE":
            m = t.user_attrs["metrics"]
            snap[t.number] = (t.user_attrs["spec"], m["int8_metric"], m["measured_memory_bytes"], tuple(t.values),
                              m["tflite_sha256"], sha256(run_dir / t.user_attrs["trial_dir"] / rundir.MODEL_FILE))
    return snap


def check_study(run_dir: Path, storage: str | None = None, budget: int | None = None) -> list:
    """The study and the run directory agree: trial numbers 0..n-1 once each, every trained trial's files are
    there and its ``.tflite`` is byte for byte what its record says (sha256 and size), no files of trials the
    study does not know, and (with ``budget``) exactly the budget trained, nothing left running."""
    run = results.open_run(run_dir, storage)
    frozen = sorted(run.frozen_trials(), key=lambda t: t.number)
    assert [t.number for t in frozen] == list(range(len(frozen))), "a trial number was reused or skipped"
    assert len({trial_id(t) for t in frozen}) == len(frozen)
    records = run.trials()
    by_number = {r.number: r for r in records}
    for t in frozen:
        if t.state.name != "COMPLETE":
            continue
        m = t.user_attrs["metrics"]
        assert t.user_attrs["trial_dir"] == f"{rundir.TRIALS_DIR}/{t.number}"
        folder = run_dir / t.user_attrs["trial_dir"]
        model = (folder / rundir.MODEL_FILE).read_bytes()
        assert hashlib.sha256(model).hexdigest() == m["tflite_sha256"], f"trial {t.number}: .tflite differs"
        assert len(model) == m["tflite_bytes"]
        on_disk = json.loads((folder / "metrics.json").read_text())
        assert (on_disk["tflite_sha256"], on_disk["spec"]) == (m["tflite_sha256"], t.user_attrs["spec"])
        assert (folder / "model_qat.h5").is_file() and by_number[t.number].model_path
    trials_dir = run_dir / rundir.TRIALS_DIR
    folders = {int(p.name) for p in trials_dir.iterdir()} if trials_dir.is_dir() else set()
    known = {r.number for r in records if r.status in ("trained", "failed", "interrupted")}
    assert folders <= known, f"files of trials the study does not know: {sorted(folders - known)}"
    if budget is not None:
        statuses = [r.status for r in records]
        assert statuses.count("trained") == budget, statuses
        assert "running" not in statuses, statuses
    return records


def assert_intact(before: dict[int, tuple], run_dir: Path, storage: str | None = None) -> None:
    after = trained_snapshot(run_dir, storage)
    for n, snap in before.items():
        assert after.get(n) == snap, f"finished trial {n} changed: {snap} -> {after.get(n)}"


def first_trained_and_live(run: results.Run, run_dir: Path):
    """(finished trials, the trial now being trained) once there is at least one of each, else None."""
    trials = run.frozen_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    live = [t for t in trials if t.state.name == "RUNNING" and t.user_attrs.get("status") == "training"
            and (run_dir / rundir.TRIALS_DIR / str(t.number) / "spec.json").exists()]
    return (done, live[0]) if done and live else None


def resume_to_the_end(run_dir: Path, before: dict, budget: int, victims: list[int], storage: str | None = None):
    out = nas("search", "--resume", str(run_dir), *(["--storage", storage] if storage else []), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    records = {r.number: r for r in check_study(run_dir, storage, budget=budget)}
    assert_intact(before, run_dir, storage)
    for v in victims:
        assert records[v].status == "interrupted" and records[v].state == "FAIL", records[v]
        assert records[v].reason
    return records


def tiny_search_args(tmp_path: Path, run_dir: Path, trials: int, *extra: str) -> list[str]:
    space = write_space(tmp_path / "tiny.yaml", TINY)
    return ["--constraints", "mcu_vww.yaml", "--dataset", "mnist", "--trials", str(trials), *QUICK,
            "--space", str(space), "--run-dir", str(run_dir), *extra]


# -- SIGKILL during training, conversion, a storage write ---------------------------------------------------------


@pytest.mark.slow
def test_sigkill_of_the_worker_during_training(tmp_path):
    """The worker alone is killed while it trains: the coordinator reports it (exit 1) and marks the trial
    interrupted; resume trains the rest. (tests/test_search.py kills the coordinator during training in the
    default suite.)"""
    run_dir = tmp_path / "run"
    args = tiny_search_args(tmp_path, run_dir, 3)
    args[args.index("--epochs") + 1] = "3"  # a longer training phase to land in
    proc = start_search(tmp_path, *args)
    try:
        wait_for(lambda: (run_dir / "run.yaml").exists(), 300, "the run directory")
        run = results.Run(run_dir)
        _, victim = wait_for(lambda: first_trained_and_live(run, run_dir), 600, "a finished trial and one training")
        pid = victim.user_attrs["worker"]["pid"]
        time.sleep(0.5)
        folder = run_dir / rundir.TRIALS_DIR / str(victim.number)
        assert log_descriptors(pid, run_dir / "logs") == 2 and not (folder / rundir.MODEL_FILE).exists()
        before = trained_snapshot(run_dir)
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        stop(proc)
    assert proc.returncode == 1
    err = proc.err_path.read_text()
    assert "worker 0 exited with status -9" in err and "Traceback" not in err
    assert not (folder / rundir.MODEL_FILE).exists() and not (folder / "metrics.json").exists()
    records = {r.number: r for r in results.Run(run_dir).trials()}
    assert records[victim.number].status == "interrupted"  # marked at once by the coordinator that saw it die
    resume_to_the_end(run_dir, before, 3, [victim.number])


def test_sigkill_during_int8_conversion_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_search(tmp_path, *tiny_search_args(tmp_path, run_dir, 3))
    logs = run_dir / "logs"
    try:
        wait_for(lambda: (run_dir / "run.yaml").exists(), 300, "the run directory")
        run = results.Run(run_dir)
        wait_for(lambda: first_trained_and_live(run, run_dir), 600, "a finished trial and one training")
        before = trained_snapshot(run_dir)
        (pid,) = wait_for(lambda: workers_of(proc.pid), 60, "the worker")
        deadline = time.monotonic() + 600
        while log_descriptors(pid, logs) < 3:  # the converter's stdout redirection: conversion is running
            assert time.monotonic() < deadline and proc.poll() is None, "never saw a conversion"
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)  # everything dies: worker and coordinator
        proc.wait(timeout=60)
        wait_for(lambda: is_zombie_or_gone(pid), 30, "the worker to die")
    finally:
        stop(proc)
    (victim,) = [t for t in results.Run(run_dir).frozen_trials() if t.state.name == "RUNNING"]
    folder = run_dir / rundir.TRIALS_DIR / str(victim.number)
    assert (folder / "spec.json").exists()  # it had been trained ...
    assert not [p.name for p in folder.iterdir() if p.name.startswith(rundir.MODEL_FILE)]  # ... not converted
    assert victim.number not in before
    records = resume_to_the_end(run_dir, before, 3, [victim.number])
    assert "killed or interrupted" in records[victim.number].reason


def journal_bytes(journal: Path) -> int:
    try:
        return journal.stat().st_size
    except FileNotFoundError:
        return 0


def test_sigkill_during_a_storage_write_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    journal = run_dir / (rundir.STUDY_DB + "-journal")
    proc = start_search(tmp_path, *tiny_search_args(tmp_path, run_dir, 3))
    try:
        wait_for(lambda: (run_dir / "run.yaml").exists(), 300, "the run directory")
        run = results.Run(run_dir)
        wait_for(lambda: [t for t in run.frozen_trials() if t.state.name == "COMPLETE"], 600, "a finished trial")
        before = trained_snapshot(run_dir)
        (pid,) = wait_for(lambda: workers_of(proc.pid), 120, "the worker")
        os.kill(proc.pid, signal.SIGSTOP)  # the coordinator stays out of the database: the writer is the worker
        reader = sqlite3.connect(run_dir / rundir.STUDY_DB, timeout=60, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # SHARED lock until COMMIT
            wait_for(lambda: journal_bytes(journal), 300, "the worker's write transaction", step=0.005)
            time.sleep(0.2)
            assert journal_bytes(journal)  # its commit still waits for our lock
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: is_zombie_or_gone(pid), 30, "the worker to die", step=0.01)
            hot = journal_bytes(journal) > 0
            reader.execute("COMMIT")  # a reader ends without touching the journal; the next writer rolls it back
        finally:
            reader.close()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        stop(proc)
    assert hot, "the worker's journal was gone after the kill: the transaction was not cut off"
    # Opening the study rolls the cut-off transaction back; what it left RUNNING must end up interrupted.
    victims = [t.number for t in results.Run(run_dir).frozen_trials() if t.state.name == "RUNNING"]
    resume_to_the_end(run_dir, before, 3, victims)
    assert not journal.exists()  # rolled back when the study was opened again
    with contextlib.closing(sqlite3.connect(run_dir / rundir.STUDY_DB)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- a candidate that runs out of memory or produces NaN -----------------------------------------------------------

BIG_BOARD = """\
name: big board (limits that a 2048x2048 input passes on paper)
runtime: tflm
limits:
  sram: 64 GB
  flash: 1 GB
hardware:
  clock_hz: 1 GHz
  macs_per_cycle: 1
  inference_power_mw: 100
"""
ADDRESS_SPACE_LIMIT = 16 * 1024 ** 3  # far above a worker's needs (~3 GB), far below 3250 x 2048 x 2048 x 4 B


def _first_resolutions(space_file: Path, seed: int, n: int) -> list[int]:
    """The resolutions the worker of session 0 will sample first (--sampler random: no rejections here)."""
    import optuna

    from nas import space as space_mod

    sp = space_mod.load_space(str(space_file))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=search.make_sampler("random", search.worker_seed(seed, 0, 0), n))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space_mod.sample(sp, trial.suggest_categorical)["resolution"])
        study.tell(trial, [0.0, 0.0, 0.0])
    return out


def test_out_of_memory_candidate_fails_with_the_reason_and_the_search_goes_on(tmp_path):
    space = write_space(tmp_path / "oom.yaml", {**TINY, "resolution": [32, 2048], "upsample": True})
    board = tmp_path / "big_board.yaml"
    board.write_text(BIG_BOARD)
    seed = next(s for s in range(50) if set(_first_resolutions(space, s, 3)) == {32, 2048})
    big = [i for i, r in enumerate(_first_resolutions(space, seed, 3)) if r == 2048]
    run_dir = tmp_path / "run"

    def limit_memory() -> None:  # this test's nas search and its workers only
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    proc = start_search(tmp_path, "--constraints", str(board), "--dataset", "mnist", "--trials", "3", *QUICK,
                        "--space", str(space), "--run-dir", str(run_dir), "--sampler", "random", "--seed", str(seed),
                        preexec_fn=limit_memory)
    try:
        proc.wait(timeout=900)
    finally:
        stop(proc)
    assert proc.returncode == 0, proc.err_path.read_text()[-3000:]
    records = check_study(run_dir)
    assert [r.number for r in records if r.status == "failed"] == big
    for r in records:
        if r.number in big:
            assert r.spec.startswith("in2048x1") and "MemoryError" in r.reason and "GiB" in r.reason, r.reason
            assert r.train_seconds == 0 and r.model_path is None
        else:
            assert r.status == "trained" and r.spec.startswith("in32x1") and r.model_path
    assert results.open_run(run_dir).summary().used == 3  # the failures used budget, the search went on


def test_nan_loss_fails_with_the_reason_and_the_search_goes_on(tmp_path):
    run_dir = tmp_path / "run"
    out = nas("search", *tiny_search_args(tmp_path, run_dir, 2, "--lr", "1e30"), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "learning rate 1e+30" in out.stdout and "0 trained" in out.stdout and "2 failed" in out.stdout
    records = check_study(run_dir)
    assert [r.status for r in records] == ["failed", "failed"]  # the second ran after the first had failed
    for r in records:
        assert "loss became NaN/inf" in r.reason and "lower the learning rate" in r.reason, r.reason
        assert r.model_path is None and r.state == "FAIL"
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["budget"]["learning_rate"] == 1e30


# -- disk full or an unwritable run directory -----------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str):
    """A small file system of its own (root can mount a tmpfs); skipped, saying why, where that is impossible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:  # root that cannot mount: a broken machine, not a reason to skip (CI mounts it)
        pytest.fail(f"cannot mount a tmpfs as root ({res.stderr.strip() or res.returncode}): the container lacks "
                    f"CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_run_dir_under_a_file_is_refused_before_anything_is_read(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    out = nas("search", "--constraints", "mcu_vww.yaml", "--run-dir", str(tmp_path / "a_file" / "run"))
    one_line_error(out, "--run-dir", "is a file", "cannot be made")
    out = nas("search", "--constraints", "mcu_vww.yaml", "--run-dir", str(tmp_path / "a_file"))
    one_line_error(out, "--run-dir", "is a file")


def test_read_only_run_dir_is_refused_before_training(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        out = nas("search", "--constraints", "mcu_vww.yaml", "--run-dir", str(ro / "run"))
        one_line_error(out, "--run-dir", "cannot create files in", "Read-only file system")


def test_full_disk_is_refused_before_training(tmp_path):
    space = write_space(tmp_path / "tiny.yaml", TINY)
    with tmpfs(tmp_path / "small", "1m") as small:
        out = nas("search", "--constraints", "mcu_vww.yaml", "--space", str(space), "--dataset", "mnist",
                  "--run-dir", str(small / "run"))
        one_line_error(out, "--run-dir", "room for the study and at least one trial", "MB free")
        assert list(small.iterdir()) == []  # no run directory, no study, no worker log


def test_resume_onto_a_full_or_read_only_disk_is_refused_before_training(tmp_path):
    space = write_space(tmp_path / "tiny.yaml", TINY)
    with tmpfs(tmp_path / "disk", "24m") as disk:
        run_dir = disk / "run"
        code = (f"from nas import search; search.create_run(search.SearchRequest(constraints='mcu_vww.yaml', "
                f"space={str(space)!r}, dataset='mnist', trials=2, epochs=1, train_limit=300, "
                f"run_dir={str(run_dir)!r}))")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)  # no open database left here
        sessions = yaml.safe_load((run_dir / "run.yaml").read_text())["sessions"]
        free = shutil.disk_usage(disk).free
        with open(disk / "filler", "wb") as f:  # someone else fills the disk
            f.truncate(0)
            f.write(b"\0" * (free - 512 * 1024))
        one_line_error(nas("search", "--resume", str(run_dir)), "--resume", "room for the study", "MB free")
        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        one_line_error(nas("search", "--resume", str(run_dir)), "--resume", "Read-only file system")
        assert yaml.safe_load((run_dir / "run.yaml").read_text())["sessions"] == sessions  # nothing started
        assert not (run_dir / "logs").exists()


def fill(disk: Path) -> Path:
    """Someone else fills the disk to the last byte."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 20))
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
    return filler


def test_disk_that_fills_during_the_search_stops_it_cleanly_and_resume_finishes(tmp_path):
    with tmpfs(tmp_path / "disk", "40m") as disk:
        run_dir = disk / "run"
        proc = start_search(tmp_path, *tiny_search_args(tmp_path, run_dir, 2))
        try:
            wait_for(lambda: (run_dir / "run.yaml").exists(), 300, "the run directory")
            run = results.Run(run_dir)
            _, victim = wait_for(lambda: first_trained_and_live(run, run_dir), 600, "a finished trial and one training")
            before = trained_snapshot(run_dir)
            filler = fill(disk)
            assert shutil.disk_usage(disk).free < 64 * 1024
            proc.wait(timeout=600)
        finally:
            stop(proc)
        err = proc.err_path.read_text()
        assert proc.returncode == 1, err[-3000:]
        assert "Traceback" not in err
        assert "nas search: worker 0 stopped: the disk of" in err and "(exit status 5)" in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("nas search: error: the disk of") and f"nas search --resume {run_dir}" in last, last
        assert not [t for t in results.Run(run_dir).frozen_trials() if t.state.name == "COMPLETE"
                    and t.number not in before]  # nothing was trained after the disk filled
        filler.unlink()
        records = resume_to_the_end(run_dir, before, 2, [victim.number])
        assert records[victim.number].status == "interrupted"  # not failed: a full disk is not the candidate's fault


# -- PostgreSQL stops during a distributed run ------------------------------------------------------------------


class PgServer:
    """A throw-away PostgreSQL server that a test can stop and start again (same data, same port)."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's 'postgresql' "
                        "package (apt-get install -y postgresql)")
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.tmp = Path(tempfile.mkdtemp(prefix="tinynas-pg-"))
        if self.as_postgres:
            shutil.chown(self.tmp, "postgres", "postgres")
        self.data, self.port, self.running = self.tmp / "data", free_port(), False
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/tinynas"
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE tinynas")
        conn.close()

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_postgres, *cmd], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.tmp / "log.txt"), "-w", "-t", "60", "start",
                  "-o", f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off")
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def close(self) -> None:
        if self.running:
            subprocess.run([*self.as_postgres, self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=120)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def pg_server():
    server = PgServer()
    try:
        yield server
    finally:
        server.close()


def test_postgresql_stops_during_a_distributed_run_then_resume_loses_nothing(tmp_path, pg_server):
    run_dir = tmp_path / "run"
    budget = 4
    proc = start_search(tmp_path, *tiny_search_args(tmp_path, run_dir, budget, "--workers", "2",
                                                    "--storage", pg_server.url))
    try:
        wait_for(lambda: (run_dir / "run.yaml").exists(), 300, "the run directory")
        run = results.Run(run_dir)
        wait_for(lambda: [t for t in run.frozen_trials() if t.state.name == "COMPLETE"], 600, "a finished trial")
        before = trained_snapshot(run_dir)
        pg_server.stop("immediate")  # the database server goes away mid-run, as in a crash
        proc.wait(timeout=600)
    finally:
        stop(proc)
    assert proc.returncode == 1
    err = proc.err_path.read_text()
    assert "Traceback" not in err, err[-3000:]
    final = [line for line in err.splitlines() if line.startswith("nas search: error:")]
    assert len(final) == 1 and "is unreachable" in final[0] and "OperationalError" in final[0], err[-3000:]
    assert f"nas search --resume {run_dir}" in final[0]
    lost = [line for line in err.splitlines() if "lost the study's storage and stopped (exit status 4)" in line]
    assert len(lost) == 2, err[-3000:]  # both workers said so, and exited non-zero
    for log in sorted((run_dir / "logs").glob("worker-0-*.log")):
        last = [line for line in log.read_text().splitlines() if " ERROR " in line]
        assert last and "lost the study's storage" in last[-1] and "postgresql+psycopg2://postgres@" in last[-1]

    pg_server.start()
    cut_off = [t.number for t in results.Run(run_dir, pg_server.url).frozen_trials() if t.state.name == "RUNNING"]
    records = resume_to_the_end(run_dir, before, budget, cut_off, storage=pg_server.url)
    assert len([r for r in records.values() if r.status == "trained"]) == budget
    assert nas("pareto", str(run_dir)).returncode == 0
