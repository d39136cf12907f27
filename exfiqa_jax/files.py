"""Atomic, crash-safe writes: a result file either exists complete or not at all.

Every writer goes through `atomic_path`: write to a hidden temporary name in the same
directory, flush and fsync, then `os.replace` onto the final name (atomic on POSIX).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` on success only."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1]  # keep the extension (np.save appends .npy otherwise)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}",
                             dir=directory)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    np.save(tmp, np.asarray(array))


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def slug(text: str) -> str:
  """`text` as a safe file or cache name (runs of other characters become one "_")."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def check_output_dir(path: str | os.PathLike, flag: str = "--config.output") -> str:
  """Creates `path` if needed and proves it is a writable folder, before any compute.

  A file in its place, a parent that is a file, or a folder this process cannot write is a
  ValueError naming `flag` (the setting that fixes it)."""
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"output {path} is a file, not a folder; pass {flag}=<a folder>")
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"cannot write into the output folder {path} ({e.strerror or e}); pass "
                     f"{flag}=<a writable folder>") from e
  return path


def folder_bytes(path: str | os.PathLike) -> int:
  """Bytes of the files under `path` (links not followed)."""
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(path) for name in names
             if not os.path.islink(os.path.join(folder, name)))


def clean_temporaries(directory: str | os.PathLike, names: Any = None) -> list[str]:
  """Removes the temporary files `atomic_path` left in `directory` when a run was killed
  (`.<name>.<random>.tmp<ext>`), for the given output `names` or for every name."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    return []
  wanted = None if names is None else {os.path.basename(os.fspath(n)) for n in names}
  removed = []
  for entry in os.listdir(directory):
    match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp(\.[^.]*)?", entry)
    if match and (wanted is None or match.group(1) in wanted):
      with contextlib.suppress(OSError):
        os.remove(os.path.join(directory, entry))
        removed.append(entry)
  return removed
