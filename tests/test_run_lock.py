"""One job per output dir: a second holder is refused in one line, a dead holder's lock is gone, links are refused."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tstrain.errors import BusyError, TstrainError, WriteError
from tstrain.run_lock import LOCK_NAME, holder, locked

HOLD = textwrap.dedent("""
    import sys, time
    from tstrain.run_lock import locked
    with locked(sys.argv[1], "data dir"):
        print("held", flush=True)
        time.sleep(120)
""")


def start_holder(directory):
    """Return a process that holds ``directory``'s lock (it has said so once this returns)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                               env=env)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_holder_is_refused_in_one_line_naming_the_first(tmp_path):
    with locked(tmp_path / "run") as run:
        assert run == tmp_path / "run" and holder(run)["pid"] == os.getpid()
        with pytest.raises(BusyError) as refused:
            with locked(run):
                pytest.fail("the second holder ran")
    message = str(refused.value)
    assert "\n" not in message
    assert f"{run} is in use by another tstrain process (pid {os.getpid()}" in message
    assert f"kill {os.getpid()}" in message and "--resume" in message and "another --out" in message


def test_a_lock_held_by_another_process_refuses_and_says_how_that_job_goes_on(tmp_path):
    first = start_holder(tmp_path / "data")
    try:
        with pytest.raises(BusyError, match=rf"\(pid {first.pid}, .*continues when run again") as refused:
            with locked(tmp_path / "data", "data dir"):
                pass
        assert "--resume" not in str(refused.value)
    finally:
        first.kill()
        first.wait()


def test_a_killed_holder_leaves_its_file_but_no_lock(tmp_path):
    first = start_holder(tmp_path / "run")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert holder(tmp_path / "run")["pid"] == first.pid  # the stale file, still naming the dead holder
    with locked(tmp_path / "run") as run:  # taken at once: nothing to delete by hand
        assert holder(run)["pid"] == os.getpid()


def test_a_job_that_ends_removes_the_lock_file_and_an_empty_dir_it_created(tmp_path):
    with locked(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()
    with locked(tmp_path / "kept") as run:
        (run / "metrics.jsonl").write_text("{}\n")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["metrics.jsonl"]
    (tmp_path / "there").mkdir()
    with locked(tmp_path / "there"):
        pass
    assert (tmp_path / "there").is_dir()  # a dir the job did not create stays, even empty


def test_the_holder_record_names_the_process_and_its_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/tstrain", "train", "--out", str(tmp_path)])
    with locked(tmp_path):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["command"] == f"tstrain train --out {tmp_path}"
    assert holder(tmp_path / "nowhere") == {}  # no file: nothing known of a holder


def test_a_link_at_the_lock_name_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_NAME).symlink_to(target)
    with pytest.raises(WriteError) as refused:
        with locked(tmp_path / "run"):
            pytest.fail("the lock was taken through a link")
    assert isinstance(refused.value, TstrainError) and "\n" not in str(refused.value)
    assert "symbolic link" in str(refused.value) and target.read_text() == "keep me"
