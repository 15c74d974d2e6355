"""Atomic writes, output locks and the overwrite rule (latentcube.files)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
import torch

from latentcube.errors import LatentcubeError
from latentcube.files import (
    OutputExistsError,
    OutputInUseError,
    OutputLock,
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    check_output_path,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".stale-" in p.name)


# --- atomic writes -------------------------------------------------------------------------------------


def test_atomic_write_replaces_content_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _leftovers(target.parent) == []


def test_atomic_path_keeps_old_file_when_the_write_raises_midway(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("epoch,loss\n")  # half of a new file ...
        raise OSError(28, "disk full")  # ... then the disk fills up
    assert target.read_text() == "epoch,loss\n0,1.0\n"
    assert _leftovers(tmp_path) == []


def test_atomic_torch_save_keeps_old_file_when_pickling_fails(tmp_path):
    target = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.arange(3)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"w": torch.zeros(5), "bad": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.arange(3))
    assert _leftovers(tmp_path) == []


def test_atomic_write_with_relative_path_in_another_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_write_text("rel.txt", "x")
    assert (tmp_path / "rel.txt").read_text() == "x"
    assert _leftovers(tmp_path) == []


# --- OutputLock -----------------------------------------------------------------------------------------


def test_lock_file_holds_owner_and_is_released(tmp_path):
    store = tmp_path / "emb.zarr"
    with OutputLock(store) as lock:
        info = json.loads((tmp_path / "emb.zarr.lock").read_text())
        assert lock.lock_path == tmp_path / "emb.zarr.lock"
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert "started" in info
    assert not (tmp_path / "emb.zarr.lock").exists()


def test_lock_refused_while_held_by_a_live_process(tmp_path):
    store = tmp_path / "emb.zarr"
    # A real other process holds the lock: a sleeping child whose pid is alive.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "emb.zarr.lock").write_text(
            json.dumps(
                {"pid": child.pid, "host": socket.gethostname(), "started": "2026-01-02T03:04:05+00:00"}
            )
        )
        with pytest.raises(OutputInUseError) as err, OutputLock(store, what="embedding store"):
            pass
    finally:
        child.kill()
        child.wait()
    msg = str(err.value)
    assert isinstance(err.value, LatentcubeError)
    assert f"pid {child.pid}" in msg
    assert socket.gethostname() in msg
    assert "2026-01-02T03:04:05" in msg
    assert msg.startswith(f"embedding store {store} is being written by")
    assert "Fix: wait for that run to finish" in msg
    # The other run's lock is left alone.
    assert json.loads((tmp_path / "emb.zarr.lock").read_text())["pid"] == child.pid


def test_second_lock_in_same_process_is_refused(tmp_path):
    with OutputLock(tmp_path / "run"), pytest.raises(OutputInUseError, match=f"pid {os.getpid()}"):
        OutputLock(tmp_path / "run").acquire()


def test_lock_on_another_host_is_not_taken_over(tmp_path):
    (tmp_path / "out.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere-node", "started": "x"}))
    with pytest.raises(OutputInUseError, match="on host elsewhere-node"), OutputLock(tmp_path / "out"):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: this pid no longer runs
    lock_file = tmp_path / "out.lock"
    lock_file.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(), "started": "old"}))
    with caplog.at_level(logging.WARNING, logger="latentcube.files"), OutputLock(tmp_path / "out"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert f"left by pid {child.pid}" in caplog.text
    assert "no longer running" in caplog.text
    assert not lock_file.exists()
    assert _leftovers(tmp_path) == []


def test_unreadable_lock_is_stale_only_when_old(tmp_path):
    lock_file = tmp_path / "out.lock"
    lock_file.write_text("")  # a writer died between creating and filling it ... or is filling it now
    with pytest.raises(OutputInUseError, match="creating its lock right now"), OutputLock(tmp_path / "out"):
        pass
    old = os.stat(lock_file).st_mtime - 60
    os.utime(lock_file, (old, old))
    with OutputLock(tmp_path / "out"):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = OutputLock(tmp_path / "out")
    lock.acquire()
    other = {"pid": 1, "host": "elsewhere", "started": "x", "token": "other"}
    (tmp_path / "out.lock").write_text(json.dumps(other))
    lock.release()
    assert json.loads((tmp_path / "out.lock").read_text()) == other


# --- check_output_path -----------------------------------------------------------------------------------


def _is_cube(p):
    return (p / ".zattrs").exists()


def test_check_output_path_new_or_empty_is_fine(tmp_path):
    assert check_output_path(tmp_path / "new.zarr", overwrite=False, is_ours=_is_cube, what="cube") is False
    (tmp_path / "empty").mkdir()
    assert check_output_path(tmp_path / "empty", overwrite=False, is_ours=_is_cube, what="cube") is False


def test_check_output_path_existing_ours_needs_overwrite(tmp_path):
    cube = tmp_path / "c.zarr"
    cube.mkdir()
    (cube / ".zattrs").write_text("{}")
    with pytest.raises(OutputExistsError) as err:
        check_output_path(cube, overwrite=False, is_ours=_is_cube, what="cube")
    assert (
        str(err.value) == f"cube {cube} exists. Fix: pass --overwrite to replace it, or choose another --out"
    )
    assert check_output_path(cube, overwrite=True, is_ours=_is_cube, what="cube") is True
    assert (cube / ".zattrs").exists()  # the check deletes nothing; the caller replaces it


@pytest.mark.parametrize("overwrite", [False, True])
def test_check_output_path_refuses_what_is_not_ours_even_with_overwrite(tmp_path, overwrite):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    (thesis / "figures").mkdir()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for path in (thesis, a_file):
        with pytest.raises(OutputExistsError) as err:
            check_output_path(path, overwrite=overwrite, is_ours=_is_cube, what="cube")
        assert str(err.value) == (
            f"{path} exists and is not a latentcube cube; refusing to delete it. "
            "Fix: choose an empty or new --out"
        )
    assert (thesis / "thesis.tex").read_text() == "\\documentclass{article}"
    assert a_file.read_text() == "mine"
