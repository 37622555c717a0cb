"""A run directory has one writer: a second is refused by name, a dead one's lock is taken over."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pyro_manifold.errors import RunDirectoryError, RunLockedError
from pyro_manifold.infer.rundir import LOCK_NAME, RunLock, check_run_dir

HOLD = textwrap.dedent(
    """
    import sys, time
    from pyro_manifold.infer.rundir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def _snapshot(run_dir):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}


def test_a_second_live_writer_is_refused_naming_the_holder_and_a_killed_ones_lock_is_taken(
    tmp_path,
):
    run = tmp_path / "run"
    proc = _holder(run)
    try:
        before = _snapshot(run)
        with pytest.raises(RunLockedError, match=f"pid {proc.pid} on host") as info:
            RunLock(run).acquire()
        assert info.value.holder["pid"] == proc.pid
        assert _snapshot(run) == before  # the refusal wrote nothing
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLock(run) as lock:  # the dead process's lock went with it
        assert lock.held and str(os.getpid()) in (run / LOCK_NAME).read_text()
    assert not lock.held


def test_two_writers_in_one_process_are_refused_and_release_lets_the_next_in(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    first.release()  # a no-op
    with RunLock(tmp_path):
        pass


def test_check_run_dir_refuses_files_and_creates_nothing(tmp_path):
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(RunDirectoryError, match="expected a directory, got the file"):
        check_run_dir(file)
    with pytest.raises(RunDirectoryError, match="f.txt' is a file"):
        check_run_dir(file / "run")
    with pytest.raises(RunDirectoryError, match="run_dir: expected a path, got int"):
        check_run_dir(3)
    assert check_run_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only directories")
def test_check_run_dir_refuses_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunDirectoryError, match="read-only"):
            check_run_dir(ro / "run")
    finally:
        ro.chmod(0o700)


def test_check_run_dir_refuses_what_the_system_says_is_not_writable(tmp_path, monkeypatch):
    # the test above cannot run as root (root writes anywhere): ask os.access the same way
    import pyro_manifold.infer.rundir as rundir

    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)
    with pytest.raises(RunDirectoryError, match="read-only"):
        check_run_dir(tmp_path / "run")
    with pytest.raises(RunDirectoryError, match="the directory is read-only"):
        check_run_dir(tmp_path)


def test_a_lock_file_that_cannot_be_opened_is_our_error(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()  # a directory where the lock file goes
    with pytest.raises(RunDirectoryError, match="expected to open its lock file"):
        RunLock(tmp_path).acquire()


def test_a_lock_file_removed_between_open_and_lock_is_not_taken(tmp_path, monkeypatch):
    """A writer abandoning a new run directory deletes its lock file: a writer that had
    opened that file and locks it after must not hold the directory beside the next one."""
    import pyro_manifold.infer.rundir as rundir

    real_flock, other = rundir.fcntl.flock, RunLock(tmp_path)

    def flock_after_a_swap(fd, operation):
        # between our open and our lock: the file goes, and another writer takes a new one
        (tmp_path / LOCK_NAME).unlink()
        monkeypatch.setattr(rundir.fcntl, "flock", real_flock)
        other.acquire()
        return real_flock(fd, operation)

    first = RunLock(tmp_path).acquire()
    first.abandon()  # as a fit that fails in its set-up leaves it: no lock file
    monkeypatch.setattr(rundir.fcntl, "flock", flock_after_a_swap)
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    assert other.held
