"""Atomic writes: a file exists complete or not at all; no temporary file is left behind."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

from exfiqa_jax import files


def test_writers_round_trip_and_leave_no_temporaries(tmp_path):
  files.write_text(tmp_path / "a" / "t.txt", "héllo\n")
  files.write_json(tmp_path / "j.json", {"x": np.float32(1.5), "y": np.arange(3)})
  files.save_npz(tmp_path / "z.npz", a=np.arange(4))
  files.save_npy(tmp_path / "y.npy", np.ones(2))
  assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
  assert files.read_json(tmp_path / "j.json") == {"x": 1.5, "y": [0, 1, 2]}
  assert np.load(tmp_path / "z.npz")["a"].tolist() == [0, 1, 2, 3]
  assert np.load(tmp_path / "y.npy").tolist() == [1.0, 1.0]
  assert sorted(os.listdir(tmp_path)) == ["a", "j.json", "y.npy", "z.npz"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "keep.txt"
  files.write_text(path, "old")
  with pytest.raises(RuntimeError):
    with files.atomic_path(path) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("disk full")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]


def test_slug():
  assert files.slug("precomputed:a/b c.npy") == "precomputed_a_b_c.npy"
  assert files.slug("///") == "x"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_written_files_get_the_mode_of_a_plain_open(tmp_path, umask):
  """Not mkstemp's 0o600: colleagues on shared storage read results as any file the user
  writes."""
  old = os.umask(umask)
  try:
    files.write_text(tmp_path / "a.txt", "x")
    files.save_npy(tmp_path / "b.npy", np.ones(2))
    with open(tmp_path / "plain.txt", "w") as f:
      f.write("x")
  finally:
    os.umask(old)
  for name in ("a.txt", "b.npy", "plain.txt"):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask, name


def test_json_is_strict_non_finite_floats_are_null(tmp_path):
  files.write_json(tmp_path / "s.json", {"pauc": float("nan"), "ratio": np.float32(np.inf),
                                         "ci": np.array([-np.inf, 0.25]), "n": np.int64(3),
                                         "rows": ({"x": np.float64("nan"), "y": 1.5},)})
  text = (tmp_path / "s.json").read_text()
  assert json.loads(text, parse_constant=pytest.fail) == {
      "pauc": None, "ratio": None, "ci": [None, 0.25], "n": 3, "rows": [{"x": None, "y": 1.5}]}
  with pytest.raises(TypeError):
    files.write_json(tmp_path / "t.json", {"x": object()})
  assert sorted(os.listdir(tmp_path)) == ["s.json"]


@pytest.mark.parametrize("output", ["", "  "])
def test_an_empty_output_is_refused_naming_its_flag(tmp_path, monkeypatch, output):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="--config.output is empty.*--config.output=<a folder>"):
    files.check_output_dir(output)
  assert os.listdir(tmp_path) == []
  assert files.check_output_dir(".") == str(tmp_path)


def _tree(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case,overwrite,refused", [
    ("missing", False, None), ("empty folder", False, None), ("earlier run", False, None),
    ("other files", False, "already holds what this command does not write.*--overwrite"),
    ("other files", True, None),
    ("input's folder", True, "holds the input"), ("input", True, "is the input"),
    ("a file", True, "is a file, not a folder"), ("link", True, "symbolic link"),
])
def test_check_replaceable_folder(tmp_path, case, overwrite, refused):
  src = tmp_path / "in" / "m.pt"
  src.parent.mkdir()
  src.write_bytes(b"input")
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text("{}")
  (tmp_path / "mixed").mkdir()
  (tmp_path / "mixed" / "notes.txt").write_text("mine")
  (tmp_path / "empty").mkdir()
  (tmp_path / "file").write_text("x")
  os.symlink(tmp_path / "run", tmp_path / "link")
  target = {"missing": tmp_path / "new", "empty folder": tmp_path / "empty",
            "earlier run": tmp_path / "run", "other files": tmp_path / "mixed",
            "input's folder": src.parent, "input": src, "a file": tmp_path / "file",
            "link": tmp_path / "link"}[case]
  before = _tree(tmp_path)
  call = lambda: files.check_replaceable(target, folder=True, ours=("config.json", "vars"),
                                         inputs=[src], overwrite=overwrite, example="ex")
  if refused is None:
    assert call() == str(target)
  else:
    with pytest.raises(FileExistsError, match=f"--out={target}.*{refused}") as e:
      call()
    assert "--out=" in str(e.value).split(str(target), 1)[1]    # says what to pass instead
  assert _tree(tmp_path) == before                               # it only looks


def test_check_replaceable_file(tmp_path):
  (tmp_path / "old.pt").write_bytes(b"x")
  (tmp_path / "dir").mkdir()
  check = lambda p, **kw: files.check_replaceable(tmp_path / p, folder=False, **kw)
  assert check("new.pt") == str(tmp_path / "new.pt")
  with pytest.raises(FileExistsError, match="already exists; add --overwrite"):
    check("old.pt")
  assert check("old.pt", overwrite=True) == str(tmp_path / "old.pt")
  with pytest.raises(FileExistsError, match="is a folder, not a file; pass --out=<a new file>"):
    check("dir", overwrite=True)
  with pytest.raises(FileExistsError, match="holds the input"):
    check("dir", inputs=[tmp_path / "dir" / "x"], overwrite=True)


# folder_lock: one owner per output folder or data-set build while a job runs.


def test_a_second_job_on_a_locked_folder_fails_at_once_naming_the_holder(tmp_path):
  with files.folder_lock(str(tmp_path), "eval", "--config.output"):
    line = json.loads((tmp_path / files.LOCK_NAME).read_text())
    assert line["pid"] == os.getpid() and line["job"] == "eval"
    with pytest.raises(files.FolderLockedError) as e:
      with files.folder_lock(str(tmp_path), "score", "--config.output"):
        pytest.fail("two owners")
    message = str(e.value)
    for part in (f"PID {os.getpid()}", socket.gethostname(), line["since"], str(tmp_path),
                 "--config.output=<another folder>"):
      assert part in message
  assert not (tmp_path / files.LOCK_NAME).exists()       # released and removed
  with files.folder_lock(str(tmp_path), "score", "--config.output"):
    pass


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


@pytest.mark.parametrize("host, taken_over", [("here", True), ("elsewhere", False)])
def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, host, taken_over):
  """The flock is still held (a forked worker that outlived its job kept the file open), but the
  recorded holder is gone: taken over silently. A holder on another host cannot be checked."""
  lock = tmp_path / files.LOCK_NAME
  lock.write_text(json.dumps({"pid": _dead_pid(), "job": "eval", "since": "then",
                              "host": socket.gethostname() if host == "here" else "other"}))
  orphan = os.open(lock, os.O_RDWR)
  fcntl.flock(orphan, fcntl.LOCK_EX | fcntl.LOCK_NB)
  try:
    if taken_over:
      with files.folder_lock(str(tmp_path), "eval", "--config.output"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    else:
      with pytest.raises(files.FolderLockedError, match="on host other"):
        with files.folder_lock(str(tmp_path), "eval", "--config.output"):
          pass
  finally:
    os.close(orphan)


def test_a_waiting_job_takes_the_folder_when_its_holder_ends(tmp_path, monkeypatch):
  """wait=True (a data-set build): B waits while A holds the folder; A ends inside B's wait."""
  first = contextlib.ExitStack()
  first.enter_context(files.folder_lock(str(tmp_path), "build A", "--config.data.data_dir"))
  waits = []
  monkeypatch.setattr(files.time, "sleep", lambda s: (waits.append(s), first.close()))
  with files.folder_lock(str(tmp_path), "build B", "--config.data.data_dir", wait=True):
    assert json.loads((tmp_path / files.LOCK_NAME).read_text())["job"] == "build B"
  assert len(waits) == 1


def test_a_filesystem_without_locks_runs_without_an_owner(tmp_path, monkeypatch, caplog):
  def no_locks(fd, op):
    raise OSError(errno.ENOLCK, "No locks available")
  monkeypatch.setattr(files.fcntl, "flock", no_locks)
  with files.folder_lock(str(tmp_path), "eval", "--config.output"):
    pass
  assert "has no file locks" in caplog.text
