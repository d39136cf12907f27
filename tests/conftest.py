"""Test-wide setup. Multi-device cases run in subprocesses (exfiqa_jax.testing.subproc) with
XLA_FLAGS set there; the package is installed (`pip install -e .[dev]`), so nothing patches
sys.path."""
from __future__ import annotations

import builtins
import io
import os
import stat

import pytest


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
