"""One run at a time on a run folder (issue 21, item 4): a second process is refused at once,
with the folder and the holder's pid; shards of attribute share the folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kn_lens.folder_lock import LOCK_NAME, FolderBusyError, folder_lock

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys, time
from kn_lens.folder_lock import folder_lock
with folder_lock(sys.argv[1], "kn-lens reproduce --relations W01", shared=sys.argv[2] == "shared"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold(folder: Path, shared: bool = False) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (until killed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), "shared" if shared else "x"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_is_refused_naming_the_folder_and_pid(tmp_path):
    p = hold(tmp_path)
    try:
        with pytest.raises(FolderBusyError) as e, folder_lock(tmp_path, "kn-lens identify"):
            pass
        msg = str(e.value)
        assert str(tmp_path) in msg and f"pid {p.pid}" in msg and "reproduce" in msg
        with pytest.raises(FolderBusyError), folder_lock(tmp_path, "attribute", shared=True):
            pass
    finally:
        p.kill()
        p.wait()
    # The system drops the lock of a killed process: no stale lock.
    with folder_lock(tmp_path, "kn-lens identify"):
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"{os.getpid()} kn-lens identify")


def test_shards_share_the_folder_but_not_with_an_exclusive_step(tmp_path):
    p = hold(tmp_path, shared=True)
    try:
        with folder_lock(tmp_path, "kn-lens attribute --shard 2/2", shared=True):
            pass
        with pytest.raises(FolderBusyError, match=f"pid {p.pid}"), folder_lock(tmp_path, "x"):
            pass
    finally:
        p.kill()
        p.wait()


def test_the_cli_refuses_a_busy_folder_with_exit_2_and_leaves_it_alone(tmp_path, tiny_ckpt, capsys):
    from kn_lens import cli
    from tests.cli.helpers import base_args, write_facts

    facts, out = write_facts(tmp_path / "f.jsonl", per_relation=1), tmp_path / "o"
    assert cli.main(["attribute", *base_args(tiny_ckpt, facts, out, "--steps", "2")]) == 0
    run_json = (out / "run.json").read_text()
    p = hold(out)
    try:
        rc = cli.main(["identify", "--relations", "P19", "--out", str(out), "-q"])
        err = capsys.readouterr().err
    finally:
        p.kill()
        p.wait()
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert str(out) in err and f"pid {p.pid}" in err and "Traceback" not in err
    assert not (out / "neurons.json").exists()
    assert (out / "run.json").read_text() == run_json  # the refused run changed no default
    assert cli.main(["identify", "--out", str(out), "-q"]) == 0
