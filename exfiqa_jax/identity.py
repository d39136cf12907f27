"""What a result was made from: identities of input files and checkpoints, stamps, what changed.

Every cached result (the score and embed tasks' outputs, each evaluation stage of
exfiqa_jax/evaluation/stages.py, each built data set of exfiqa_jax/data/builders) records what it
was made from: the config fields it depends on and the identity of every input file. A mismatch
recomputes, and `changes(old, new)` says what changed for the log line (docs/caching.md).

  file_identity(path)        a file: absolute path, size, and the SHA-256 of its content when
                             that is cheap (up to DIGEST_LIMIT bytes), else its mtime_ns; a
                             folder: the same over every file below it (one digest)
  files_identity(paths)      a list of files (images) as one digest; contents are hashed while
                             the whole list is up to DIGEST_LIMIT bytes, else size + mtime_ns
  canonical(value)           the one canonical JSON form of configs and identities (`exact=True`:
                             the stage-fingerprint form, floats as repr and arrays as digests)
  write_stamp / check_stamp  a completion stamp, written LAST, that records the identity and the
                             output files it vouches for, as its own run wrote them (what the
                             files.* writers return); a stamp that does not match (or whose
                             outputs were replaced since) is not "done"
  open_regular(path)         a file opened for reading only when it is a regular file
A checkpoint's identity (a content digest) is exfiqa_jax/checkpoints.py's: of the bytes a load
read (read_pt / read_model, what a loaded model carries as `identity`), or of a path as it is
now (checkpoint_identity).
Digests of unchanged files are memoised per process by (path, size, mtime_ns, ctime_ns, inode):
any write, even one that restores the mtime, changes ctime.

Only regular files are ever opened: a path is stat-ed first (opening a named pipe blocks until a
writer comes, reading /dev/zero never ends). A special file given as a file (a checkpoint, a list)
is a SpecialFileError naming it and its kind; one met inside a folder or an image list is recorded
by its kind, unread (docs/caching.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any, BinaryIO, Iterable, Mapping, Sequence

import numpy as np
from absl import logging

from exfiqa_jax import files, parallel

DIGEST_LIMIT = 64 << 20     # bytes: files and file lists up to this size are content-hashed
_CHUNK = 1 << 20
_memo: dict[tuple, str] = {}


class SpecialFileError(OSError):
  """A path that is not a regular file (a named pipe, a device, a socket, a folder) where the
  bytes of a file are needed: refused before it is opened."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def kind_of(st: os.stat_result) -> str:
  """What a stat result describes, in words: "a regular file", "a named pipe (FIFO)", ..."""
  if stat.S_ISREG(st.st_mode):
    return "a regular file"
  return next((kind for test, kind in _KINDS if test(st.st_mode)), "a special file")


def regular_stat(path: str | os.PathLike) -> os.stat_result:
  """os.stat of a regular file (a symbolic link to one counts); SpecialFileError naming the path
  and its kind for anything else, FileNotFoundError when it does not exist."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"{os.fsdecode(path)} does not exist") from None
  if not stat.S_ISREG(st.st_mode):
    raise SpecialFileError(_not_regular(path, st))
  return st


def _not_regular(path: str | os.PathLike, st: os.stat_result) -> str:
  via = " (through a symbolic link)" if os.path.islink(path) else ""
  return f"{os.fsdecode(path)} is {kind_of(st)}{via}, not a regular file; it is not read"


def open_regular(path: str | os.PathLike) -> BinaryIO:
  """A regular file opened for binary reading. Stat-ed first, then opened non-blocking and
  checked again through the descriptor, so a file swapped for a pipe in between never blocks."""
  regular_stat(path)
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise SpecialFileError(_not_regular(path, st))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def _stat_key(path: str, st: os.stat_result) -> tuple:
  return (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def sha256_file(path: str | os.PathLike) -> str:
  """SHA-256 of a regular file's bytes (memoised while the file is unchanged)."""
  path = os.path.abspath(os.fspath(path))
  key = _stat_key(path, regular_stat(path))
  if key not in _memo:
    digest = hashlib.sha256()
    with open_regular(path) as f:
      while block := f.read(_CHUNK):
        digest.update(block)
    _memo[key] = digest.hexdigest()
  return _memo[key]


def _walk(path: str, exclude: Sequence[str] = ()) -> list[tuple[str, str]]:
  """(relative path, absolute path) of every file below `path`, sorted; hidden entries and the
  `exclude` folders (e.g. a data_dir inside the manual_dir) left out."""
  excluded = {os.path.abspath(e) for e in exclude}
  out = []
  for folder, dirs, names in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                     and os.path.abspath(os.path.join(folder, d)) not in excluded)
    for name in names:
      if not name.startswith("."):
        full = os.path.join(folder, name)
        out.append((os.path.relpath(full, path), full))
  return sorted(out)


def _entries_digest(entries: Iterable[tuple[str, os.stat_result | None, str]],
                    contents: bool) -> str:
  digest = hashlib.sha256()
  for name, st, full in entries:
    if st is None:
      part = [name, None]
    elif not stat.S_ISREG(st.st_mode):      # recorded by kind, never opened
      part = [name, kind_of(st)]
    elif contents:
      part = [name, st.st_size, sha256_file(full)]
    else:
      part = [name, st.st_size, st.st_mtime_ns]
    digest.update(json.dumps(part).encode() + b"\n")
  return digest.hexdigest()


def _stat(path: str) -> os.stat_result | None:
  try:
    return os.stat(path)
  except OSError:
    return None


def file_identity(path: str | os.PathLike, digest: bool | None = None,
                  exclude: Sequence[str] = ()) -> dict[str, Any]:
  """Identity of a file or folder. `digest`: None = hash contents up to DIGEST_LIMIT bytes,
  True = always, False = never (size + mtime_ns only)."""
  path = os.path.abspath(os.fspath(path))
  st = _stat(path)
  if st is not None and not stat.S_ISDIR(st.st_mode):
    regular_stat(path)                     # a pipe, a device: SpecialFileError naming it
    if digest or (digest is None and st.st_size <= DIGEST_LIMIT):
      return {"path": path, "size": st.st_size, "sha256": sha256_file(path)}
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
  if st is not None:
    entries = [(rel, _stat(full), full) for rel, full in _walk(path, exclude)]
    size = sum(e.st_size for _, e, _ in entries if e is not None and stat.S_ISREG(e.st_mode))
    contents = bool(digest or (digest is None and size <= DIGEST_LIMIT))
    return {"path": path, "files": len(entries), "size": size,
            ("sha256" if contents else "stat_sha256"): _entries_digest(entries, contents)}
  raise FileNotFoundError(f"{path} does not exist")


def files_identity(paths: Sequence[str | os.PathLike], digest: bool | None = None
                   ) -> dict[str, Any]:
  """One identity for a list of files (the images of a run), in order; missing files count as
  missing and anything but a regular file (a folder, a pipe) as not_regular, recorded by its
  kind and never opened (a run that skips unreadable files records which were unusable)."""
  paths = [os.path.abspath(os.fspath(p)) for p in paths]
  stats = [_stat(p) for p in paths]
  regular = [st is not None and stat.S_ISREG(st.st_mode) for st in stats]
  size = sum(st.st_size for st, r in zip(stats, regular) if r)
  contents = bool(digest or (digest is None and size <= DIGEST_LIMIT))
  not_regular = sum(st is not None and not r for st, r in zip(stats, regular))
  return {"count": len(paths), "missing": sum(st is None for st in stats), "size": size,
          **({"not_regular": not_regular} if not_regular else {}),   # earlier stamps stay valid
          ("sha256" if contents else "stat_sha256"):
              _entries_digest(zip(paths, stats, paths), contents)}


def names_identity(names: Sequence[str]) -> dict[str, Any]:
  """A list of names (the images of a run, in order) as a count and one digest (a name that is
  not UTF-8 on disk, held as surrogates by os.listdir, is hashed as its bytes)."""
  digest = hashlib.sha256("\n".join(str(n) for n in names).encode("utf-8", "surrogateescape"))
  return {"count": len(names), "sha256": digest.hexdigest()}


# ----------------------------------------------------------------------------- comparisons
def canonical(value: Any, exact: bool = False) -> Any:
  """JSON-ready copy: ConfigDicts as dicts (keys sorted as text), tuples as lists, numpy
  scalars as numbers; an object with `canonical_form()` (an evaluation Stage) as what it returns.

  exact=True is the form stage fingerprints hash (exfiqa_jax/evaluation/stages.py): a Python
  float as its repr (exact, and 1e-3 != 0.001000001), an array as the SHA-256 of its bytes with
  its shape and dtype. Without it floats stay numbers and 0-d arrays become numbers."""
  if hasattr(value, "canonical_form"):
    return canonical(value.canonical_form(), exact)
  if not exact and hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): canonical(v, exact)
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
  if hasattr(value, "to_dict"):          # ml_collections.ConfigDict (exact: after Mapping)
    return canonical(value.to_dict(), exact)
  if isinstance(value, (list, tuple)):
    return [canonical(v, exact) for v in value]
  if exact:
    if isinstance(value, np.ndarray):
      # the buffer itself, not a tobytes() copy (IJB-C's template pairs are 250 MB)
      return {"sha256": hashlib.sha256(np.ascontiguousarray(value).data).hexdigest(),
              "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
      return value.item()
    return repr(value) if isinstance(value, float) else value
  if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
    return value.item()
  return value


def _short(value: Any) -> str:
  text = json.dumps(value, sort_keys=True, default=str)
  if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
    return value[:12] + "…"
  return text if len(text) <= 60 else text[:57] + "…"


def changes(old: Any, new: Any, prefix: str = "") -> list[str]:
  """Human-readable differences between two canonical values: ["num_heads: 4 → 2", ...]."""
  old, new = canonical(old), canonical(new)
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      name = f"{prefix}.{key}" if prefix else key
      if key not in old:
        out.append(f"{name}: new ({_short(new[key])})")
      elif key not in new:
        out.append(f"{name}: no longer recorded (was {_short(old[key])})")
      else:
        out.extend(changes(old[key], new[key], name))
    return out
  if old == new:
    return []
  return [f"{prefix or 'value'}: {_short(old)} → {_short(new)}"]


def describe(diff: Sequence[str], limit: int = 6) -> str:
  shown = "; ".join(diff[:limit])
  return shown + (f"; and {len(diff) - limit} more" if len(diff) > limit else "")


# ---------------------------------------------------------------------------------- stamps
STAMP_FORMAT = 1


def write_stamp(path: str | os.PathLike, identity: Mapping[str, Any],
                outputs: Sequence[str | os.PathLike] | Mapping[str | os.PathLike, Any],
                **extra: Any) -> None:
  """Writes the completion stamp (atomically) LAST, after every output in `outputs`.

  `outputs` maps each output to what the files.* writer returned when this run wrote it
  (files.output_identity): the stamp then describes the files its own run wrote, and a file
  another job put in their place since is "replaced" to check_stamp. A plain list of paths
  records the files as they are now."""
  directory = os.path.dirname(os.path.abspath(os.fspath(path)))
  written = (dict(outputs) if isinstance(outputs, Mapping)
             else {p: files.output_identity(p) for p in outputs})
  recorded = {}
  for p, ident in written.items():
    rel = os.path.relpath(os.path.abspath(os.fspath(p)), directory)
    recorded[rel] = dict(ident)
    if not _same_output(_current(p), recorded[rel]):
      logging.warning("%s was replaced by another job after this run wrote it; the stamp "
                      "records this run's file, so the next run recomputes", p)
  files.write_json(path, {"stamp_format": STAMP_FORMAT, "identity": canonical(identity),
                          "outputs": recorded, **canonical(extra)})


def _current(path: str | os.PathLike) -> dict[str, int] | None:
  try:
    return files.output_identity(path)
  except OSError:
    return None


def _same_output(current: Mapping[str, int] | None, recorded: Mapping[str, Any]) -> bool:
  """Whether the file now at an output's path is the one recorded (every field the stamp has:
  stamps written before the inode was recorded compare size and mtime_ns)."""
  return current is not None and all(current.get(k) == v for k, v in recorded.items())


def read_stamp(path: str | os.PathLike) -> dict[str, Any] | None:
  try:
    with open(path, encoding="utf-8") as f:
      stamp = json.load(f)
  except (OSError, ValueError):
    return None
  return stamp if isinstance(stamp, dict) and "identity" in stamp else None


def check_stamp(path: str | os.PathLike, identity: Mapping[str, Any]) -> tuple[bool, str]:
  """(done, why not): the stamp exists, records `identity`, and every output it vouches for is
  still the file that run wrote."""
  path = os.path.abspath(os.fspath(path))
  stamp = read_stamp(path)
  if stamp is None:
    return False, ("no completion stamp" if not os.path.exists(path)
                   else f"unreadable completion stamp {os.path.basename(path)}")
  diff = changes(stamp["identity"], identity)
  if diff:
    return False, "inputs changed since the last run: " + describe(diff)
  directory = os.path.dirname(path)
  for rel, recorded in stamp.get("outputs", {}).items():
    current = _current(os.path.join(directory, rel))
    if current is None:
      return False, f"{rel} is missing"
    if not isinstance(recorded, Mapping) or not _same_output(current, recorded):
      return False, f"{rel} was replaced after the run that wrote it"
  return True, "complete"


def begin_run(stamp_path: str | os.PathLike, identity: Mapping[str, Any],
              outputs: Sequence[str | os.PathLike], task: str) -> bool:
  """True when the stamp vouches for a finished run made from `identity`: nothing to do.
  Otherwise logs why `task` runs again and, on the writing process, removes the stale stamp (so
  an interrupted run leaves none behind) and temporaries left beside `outputs`."""
  stamp_path = os.fspath(stamp_path)
  out_dir = os.path.dirname(os.path.abspath(stamp_path))
  done, why = check_stamp(stamp_path, identity)
  if done:
    logging.info("%s already complete in %s; nothing to do", task, out_dir)
    return True
  if os.path.exists(stamp_path) or any(os.path.exists(o) for o in outputs):
    logging.info("%s again into %s: %s", task, out_dir, why)
  if parallel.is_writer():
    if os.path.exists(stamp_path):
      os.remove(stamp_path)
    files.clean_temporaries(out_dir, (*outputs, stamp_path))
  return False
