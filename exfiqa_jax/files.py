"""Atomic, crash-safe writes: a result file either exists complete or not at all.

Every writer goes through `atomic_path`: write to a hidden temporary name in the same
directory, flush and fsync, then `os.replace` onto the final name (atomic on POSIX). The file
gets the mode a plain open() gives a new file (0o666 less the umask), so colleagues on shared
storage read results as they read anything else the user writes. JSON is strict: no NaN or
Infinity literals. `check_output_dir` and `check_replaceable` run before any compute: a writer
never writes into the working directory by accident, nor deletes what it did not write.
`folder_lock` gives a folder one owner while a job writes into it (docs/caching.md).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import math
import os
import re
import secrets
import socket
import tempfile
import time
from typing import Any, Collection, Iterator, Sequence

import numpy as np
from absl import logging


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


def output_identity(path: str | os.PathLike) -> dict[str, int]:
  """What a completion stamp records of one output file: size, mtime_ns and inode. Every
  writer here returns it for the file IT wrote (taken from its private temporary, whose inode,
  size and mtime the rename keeps), so a stamp vouches for its own run's files even when
  another job replaced them since (identity.write_stamp)."""
  st = os.stat(path)
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def write_text(path: str | os.PathLike, text: str) -> dict[str, int]:
  """Writes `text` (UTF-8) atomically; returns the written file's `output_identity`."""
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    return output_identity(tmp)


def write_json(path: str | os.PathLike, obj: Any) -> dict[str, int]:
  """Strict JSON (RFC 8259, which has no NaN or Infinity): a non-finite float is written as
  null, as pandas' to_json does; numpy scalars and arrays as numbers and lists."""
  return write_text(path, json.dumps(_strict(obj), indent=2, allow_nan=False) + "\n")


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


def save_npy(path: str | os.PathLike, array: np.ndarray) -> dict[str, int]:
  with atomic_path(path) as tmp:
    np.save(tmp, np.asarray(array))
    return output_identity(tmp)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> dict[str, int]:
  with atomic_path(path) as tmp:
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    return output_identity(tmp)


def slug(text: str) -> str:
  """`text` as a safe file or cache name (runs of other characters become one "_")."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def with_user_paths(config: Any, fields: Sequence[str]) -> Any:
  """A copy of the ConfigDict `config` with `~` expanded in each of `fields` it has ("a.b";
  "a.*": every entry of the node a): `~/out` means the home folder for every path a job reads
  or writes, never a folder named "~" for some."""
  config = type(config)(config.to_dict())
  for field in fields:
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node.get(part) if hasattr(node, "get") else None
    if not hasattr(node, "get"):
      continue
    for key in (list(node.keys()) if leaf == "*" else [leaf] if leaf in node else []):
      if isinstance(node[key], str) and node[key]:
        node[key] = os.path.expanduser(node[key])
  return config


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
    probe_writable(path)
  except OSError as e:
    raise ValueError(f"cannot write into the output folder {path} ({e.strerror or e}); pass "
                     f"{flag}=<a writable folder>") from e
  return path


def probe_writable(folder: str | os.PathLike) -> None:
  """Creates and removes a file in `folder`: an OSError when this process cannot write there
  (a read-only mount, another user's folder; os.access cannot tell on every filesystem)."""
  fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=folder)
  os.close(fd)
  os.remove(probe)


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


LOCK_NAME = ".exfiqa.lock"


class FolderLockedError(RuntimeError):
  """Another live job owns the folder (see `folder_lock`)."""


@contextlib.contextmanager
def folder_lock(path: str, what: str, flag: str, *, wait: bool = False, enabled: bool = True
                ) -> Iterator[None]:
  """Owns the folder `path` for the duration of the block: an advisory `flock` on
  `<path>/.exfiqa.lock`, which holds one JSON line naming the holder (PID, host, `what`, start
  time). Two jobs writing into one folder would interleave their files, and a completion stamp
  would vouch for the other run's rows (docs/caching.md).

  A second holder fails at once with a FolderLockedError naming the holder and `flag` (the
  setting that picks another folder); with `wait`, it waits for the holder to finish instead
  (a data-set build that a second job would otherwise build again). The kernel drops the lock
  when its holder dies; a lock still held for a dead process of this host (a forked worker
  that outlived it kept the file open) is taken over silently. The lock file is removed on
  release. Reentry from the same process is a conflict too: one folder, one owner.
  `enabled=False` takes no lock: on several hosts only process 0 writes the outputs, so only
  it owns the folder (`enabled=parallel.is_writer()`).
  """
  if not enabled:
    yield
    return
  path = os.path.abspath(os.fspath(path))
  lock_path = os.path.join(path, LOCK_NAME)
  fd = _acquire(lock_path, what, flag, wait)
  if fd is None:               # a filesystem without locks: no owner, as before locks existed
    yield
    return
  try:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "job": what,
              "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    yield
  finally:
    with contextlib.suppress(OSError):
      if _same_file(lock_path, fd):
        os.remove(lock_path)
    os.close(fd)      # closing drops the flock


_NO_LOCKS = {getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS")
             if hasattr(errno, n)}


def _acquire(lock_path: str, what: str, flag: str, wait: bool) -> int | None:
  """The fd of `lock_path` with an exclusive flock held, for the file the name points at now
  (an earlier holder may have removed or replaced it between our open and our flock); None
  on a filesystem that has no locks (a warning says so)."""
  logged = False
  while True:
    try:
      os.makedirs(os.path.dirname(lock_path), exist_ok=True)
      fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as e:
      raise PermissionError(e.errno, f"{what}: cannot create the lock file {lock_path} "
                            f"({e.strerror or e}); pass {flag}=<a folder this job can write>"
                            ) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in _NO_LOCKS:
        os.close(fd)
        logging.warning("%s: the filesystem of %s has no file locks (%s); running without "
                        "an owner for it: do not start a second job there", what,
                        os.path.dirname(lock_path), e.strerror)
        return None
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise
      holder = _holder(fd)
      if _is_dead_here(holder) and _same_file(lock_path, fd):
        logging.info("Taking over %s from process %s, which is no longer running.", lock_path,
                     holder.get("pid"))
        with contextlib.suppress(FileNotFoundError):
          os.remove(lock_path)
        os.close(fd)
        continue
      os.close(fd)
      if not wait:
        raise FolderLockedError(
            f"{what}: {os.path.dirname(lock_path)} is in use by another job "
            f"({_describe(holder)}); wait for it to finish, or pass {flag}=<another folder>"
        ) from None
      if not logged:
        logging.info("%s: waiting for %s (%s) to finish with %s.", what,
                     holder.get("job", "another job"), _describe(holder),
                     os.path.dirname(lock_path))
        logged = True
      time.sleep(1.0)
      continue
    if _same_file(lock_path, fd):
      return fd
    os.close(fd)      # we locked a file its holder removed on release: lock the new one


def _same_file(path: str, fd: int) -> bool:
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return False
  own = os.fstat(fd)
  return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(fd: int) -> dict:
  """The holder line of a lock file; {} while it is being written or when it is not ours."""
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace").splitlines()[0])
  except (OSError, ValueError, IndexError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _is_dead_here(holder: dict) -> bool:
  """Whether the holder ran on this host and its process is gone (its lock is stale)."""
  pid = holder.get("pid")
  if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False      # alive, another user's
  return False


def _describe(holder: dict) -> str:
  if not holder:
    return "holder not recorded yet"
  return (f"{holder.get('job', 'a job')}, PID {holder.get('pid', '?')} on host "
          f"{holder.get('host', '?')}, since {holder.get('since', '?')}")
