"""Atomic, crash-safe writes: a result file either exists complete or not at all.

Every writer goes through `atomic_path`: write to a hidden temporary name in the same
directory, flush and fsync, then `os.replace` onto the final name (atomic on POSIX). The file
gets the mode a plain open() gives a new file (0o666 less the umask), so colleagues on shared
storage read results as they read anything else the user writes. JSON is strict: no NaN or
Infinity literals. `check_output_dir` and `check_replaceable` run before any compute: a writer
never writes into the working directory by accident, nor deletes what it did not write.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import tempfile
from typing import Any, Collection, Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` on success only."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1]  # keep the extension (np.save appends .npy otherwise)
  tmp = _new_file(directory, f".{os.path.basename(path)}.", f".tmp{suffix}")
  try:
    yield tmp
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def _new_file(directory: str, prefix: str, suffix: str) -> str:
  """Creates an empty file under a fresh random name, mode 0o666 less the umask: the mode a
  plain open() gives (tempfile.mkstemp's 0o600 would hide results from the user's group)."""
  for _ in range(100):
    path = os.path.join(directory, f"{prefix}{secrets.token_hex(4)}{suffix}")
    try:
      os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
      return path
    except FileExistsError:
      continue
  raise FileExistsError(f"no free temporary name for {prefix}*{suffix} in {directory}")


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Strict JSON (RFC 8259, which has no NaN or Infinity): a non-finite float is written as
  null, as pandas' to_json does; numpy scalars and arrays as numbers and lists."""
  write_text(path, json.dumps(_strict(obj), indent=2, allow_nan=False) + "\n")


def _strict(obj: Any) -> Any:
  """`obj` with every non-finite float (NaN, ±inf) as None, numpy scalars and arrays as Python
  numbers and lists, tuples as lists; other values as they are."""
  if isinstance(obj, float):          # np.float64 included
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _strict(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_strict(v) for v in obj]
  if isinstance(obj, (np.ndarray, np.generic)):
    return _strict(obj.tolist())
  return obj


def read_json(path: str | os.PathLike) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    np.save(tmp, np.asarray(array))


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})


def slug(text: str) -> str:
  """`text` as a safe file or cache name (runs of other characters become one "_")."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def check_output_dir(path: str | os.PathLike, flag: str = "--config.output") -> str:
  """Creates `path` if needed and proves it is a writable folder, before any compute.

  A file in its place, a parent that is a file, or a folder this process cannot write is a
  ValueError naming `flag` (the setting that fixes it), and so is an empty `path`, which would
  write into the working directory."""
  if not os.fspath(path).strip():
    raise ValueError(f"{flag} is empty: results would be written into the working directory "
                     f"{os.getcwd()}; pass {flag}=<a folder> (`.` to mean it)")
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


def check_replaceable(path: str | os.PathLike, *, folder: bool, ours: Collection[str] = (),
                      inputs: Sequence[str | os.PathLike] = (), overwrite: bool = False,
                      flag: str = "--out", overwrite_flag: str = "--overwrite",
                      example: str = "") -> str:
  """Proves, before any work, that writing `path` (a `folder` replaced as a whole, or one file)
  deletes nothing its writer did not write; returns the absolute path.

  Refused whatever `overwrite` says: `path` is one of the `inputs` or a folder holding one, a
  symbolic link, or a file where a folder is wanted (or the reverse). Refused without
  `overwrite`: an existing file, and a non-empty folder unless it holds exactly the entries
  `ours` names (what an earlier run of the same writer left). Each refusal is a FileExistsError
  naming `flag`, what to pass instead (`example`, if given) and, where it helps, `overwrite_flag`.
  """
  path = os.path.abspath(os.fspath(path))
  real = os.path.realpath(path)
  kind = "folder" if folder else "file"
  instead = f"pass {flag}=<a new {kind}>" + (f", e.g. {flag}={example}" if example else "")
  for source in inputs:
    source = os.path.realpath(os.fspath(source))
    if os.path.commonpath([real, source]) == real:
      raise FileExistsError(
          f"{flag}={path} {'is' if source == real else 'holds'} the input {source}: writing "
          f"there would delete it; {instead}")
  if not os.path.lexists(path):
    return path
  if os.path.islink(path):
    raise FileExistsError(f"{flag}={path} is a symbolic link (to {real}); pass {flag}={real} "
                          f"to write there, or {flag}=<a new {kind}>")
  if folder != os.path.isdir(path):
    what = "a folder" if os.path.isdir(path) else "a file"
    raise FileExistsError(f"{flag}={path} is {what}, not a {kind}; {instead}")
  if overwrite:
    return path
  if not folder:
    raise FileExistsError(f"{flag}={path} already exists; add {overwrite_flag} to replace it, "
                          f"or pass {flag}=<a new file>")
  foreign = sorted(set(os.listdir(path)) - set(ours))
  if foreign:
    listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    raise FileExistsError(
        f"{flag}={path} already holds what this command does not write ({listed}); pass "
        f"{flag}=<a new or empty folder>, or add {overwrite_flag} to replace {path} and "
        "everything in it")
  return path


def holds_only(path: str | os.PathLike, names: Collection[str]) -> bool:
  """Whether the folder `path` holds nothing but entries named in `names` (e.g. the leftovers
  of an interrupted save, which that save may remove)."""
  return os.path.isdir(path) and not os.path.islink(path) and set(os.listdir(path)) <= set(names)


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
