"""Test-wide setup. Multi-device cases run in subprocesses (exfiqa_jax.testing.subproc) with
XLA_FLAGS set there; the package is installed (`pip install -e .[dev]`), so nothing patches
sys.path.

The tests run with a persistent XLA compilation cache of their own, as the command line does by
default (exfiqa_jax/compile_cache.py): a fresh folder per test process, shared with the
subprocesses it starts (the environment), removed at the end. Many tests build the same tiny
programs again (each trainer.train, each job run); loading them instead of compiling them again
halves such tests on two cores, and the programs are the same. A test that sets up a cache of
its own (test_compile_cache.py, the command line's --config.compile_cache) uses that one.
"""
from __future__ import annotations

import atexit
import builtins
import io
import os
import shutil
import stat
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:        # before anything imports jax
  _ROOT = tempfile.mkdtemp(prefix="exfiqa-tests-")   # cascade cost tables go beside xla/
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_ROOT, "xla")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

import pytest  # noqa: E402


@pytest.fixture
def special_opens(monkeypatch):
  """Refuses (and records) every open of a named pipe, a device or a socket during the test,
  which then fails: code must stat a path and skip or refuse such a file before opening it
  (opening a FIFO blocks forever, /dev/zero never ends), so a regression fails here instead of
  hanging CI."""
  opened: list[str] = []
  real_open, real_os_open = builtins.open, os.open

  def check(path) -> None:
    if isinstance(path, int):
      return
    try:
      mode = os.stat(path).st_mode
    except (OSError, TypeError, ValueError):
      return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
      opened.append(os.fsdecode(path))
      raise AssertionError(f"opened {os.fsdecode(path)}, which is not a regular file")

  def guarded_open(file, *args, **kwargs):
    check(file)
    return real_open(file, *args, **kwargs)

  def guarded_os_open(path, *args, **kwargs):
    check(path)
    return real_os_open(path, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", guarded_open)
  monkeypatch.setattr(io, "open", guarded_open)
  monkeypatch.setattr(os, "open", guarded_os_open)
  yield opened
  assert not opened, f"special files were opened: {opened}"
