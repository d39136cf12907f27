"""Cached pipeline stages: a killed run resumes, a changed config recomputes only what it touches.

Every stage's arrays live in `<root>/<name>.npz` together with the fingerprint (SHA-256 of a
canonical JSON) of what the stage depends on: the config fields it reads, the identity of the
files it reads (exfiqa_jax/identity.py: path, size, and a content digest where cheap or mtime;
checkpoints always by content) and the fingerprints of the stages it consumes. A stage whose
stored fingerprint matches is loaded, not recomputed; a changed field changes the fingerprint
of that stage and, through the chain, of every stage downstream — and of nothing else. A
recomputed stage logs what changed (its stored dependencies against the new ones). A stage file
that cannot be read — truncated, emptied, bit-flipped (the zip CRCs are checked as it loads) —
is recomputed with a warning, never an error.

Long stages run in chunks (`run_chunked`): each finished chunk is written at once, so a run
killed in the middle of scoring 469k IJB-C images restarts at the first missing chunk.
Writes are atomic (exfiqa_jax/files.py); on several hosts only process 0 writes and the
"cached or not" decision of process 0 is broadcast, so every host runs the same programs.
Every event goes to `<root>/stages.jsonl` (stage, fingerprint, computed | cached | chunk).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from exfiqa_jax import files, identity, parallel

FINGERPRINT_KEY = "__fingerprint__"
DEPS_KEY = "__deps__"
LOG_FILE = "stages.jsonl"


@dataclasses.dataclass
class Stage:
  """A finished stage: its arrays (numpy) and the fingerprint downstream stages depend on."""
  name: str
  fingerprint: str
  arrays: dict[str, np.ndarray]
  cached: bool

  def __getitem__(self, key: str) -> np.ndarray:
    return self.arrays[key]

  def canonical_form(self) -> dict[str, str]:
    """What a downstream stage's fingerprint records of this one (identity.canonical)."""
    return {"stage": self.name, "fingerprint": self.fingerprint}


def fingerprint(deps: Mapping[str, Any]) -> str:
  """SHA-256 of the canonical JSON of `deps` (dicts, lists, numbers, strings, arrays, Stages;
  identity.canonical's exact form)."""
  text = json.dumps(identity.canonical(deps, exact=True), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def _agree(flag: bool) -> bool:
  """Process 0's decision, on every host."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


class StageCache:
  """Stages under `root` (normally `<config.output>/cache`).

  `after_stage(name)`, when set (class-wide), is called after each stage is stored or loaded: a
  hook for tests that stop a run deterministically after stage N (a simulated kill).
  """

  after_stage: Callable[[str], None] | None = None

  def __init__(self, root: str, progress: bool = True):
    self.root = os.path.abspath(root)
    self.progress = progress and parallel.is_writer()
    self.events: list[dict[str, Any]] = []

  def path(self, name: str) -> str:
    return os.path.join(self.root, name + ".npz")

  def _log(self, name: str, fp: str, event: str, **extra) -> None:
    entry = {"stage": name, "fingerprint": fp[:16], "event": event, "time": time.time(), **extra}
    self.events.append(entry)
    if parallel.is_writer():
      os.makedirs(self.root, exist_ok=True)
      with open(os.path.join(self.root, LOG_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    if event in ("computed", "cached") and StageCache.after_stage is not None:
      StageCache.after_stage(name)

  def load(self, name: str, fp: str, deps: Mapping[str, Any] | None = None
           ) -> dict[str, np.ndarray] | None:
    """The stored arrays if the stage exists with fingerprint `fp`, else None (a stale stage
    logs what changed against `deps`; an unreadable one is a warning)."""
    path = self.path(name)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path, allow_pickle=False) as data:
        if str(data[FINGERPRINT_KEY]) != fp:
          if deps is not None:
            self._log_changes(name, str(data[DEPS_KEY]) if DEPS_KEY in data.files else "", deps)
          return None
        return {k: data[k] for k in data.files if k not in (FINGERPRINT_KEY, DEPS_KEY)}
    except Exception as e:  # noqa: BLE001  truncated/empty/bit-flipped: zipfile, EOF, CRC, ...
      logging.warning("stage %s: cannot read %s (%s: %s); recomputing it", name, path,
                      type(e).__name__, e)
      return None

  def _log_changes(self, name: str, stored: str, deps: Mapping[str, Any]) -> None:
    try:
      old = json.loads(stored)
    except ValueError:
      old = None
    what = (identity.describe(identity.changes(old, identity.canonical(deps, exact=True)))
            if old is not None else "its stored dependencies are unreadable")
    logging.info("stage %s: recomputing, changed since the cached run: %s", name, what)

  def _store(self, path: str, fp: str, deps: Mapping[str, Any], arrays: Mapping[str, Any]
             ) -> None:
    if parallel.is_writer():
      files.clean_temporaries(os.path.dirname(path), [path])   # left by a killed run
      files.save_npz(path, **{FINGERPRINT_KEY: np.asarray(fp),
                           DEPS_KEY: np.asarray(json.dumps(identity.canonical(deps, exact=True),
                                                          sort_keys=True)),
                           **{k: np.asarray(v) for k, v in arrays.items()}})

  def run(self, name: str, deps: Mapping[str, Any],
          compute: Callable[[], Mapping[str, np.ndarray]]) -> Stage:
    """Loads stage `name` if its fingerprint matches `deps`, else computes and stores it."""
    fp = fingerprint(deps)
    arrays = (self.load(name, fp, deps) if parallel.is_writer() or jax.process_count() > 1
              else None)
    if _agree(arrays is not None):
      if arrays is None:     # another host decided "cached": the output must be shared
        arrays = self.load(name, fp)
        if arrays is None:
          raise RuntimeError(f"stage {name}: process 0 found it cached but this host cannot read "
                             f"{self.path(name)}; put config.output on a shared filesystem")
      logging.info("stage %s: cached (%s)", name, fp[:12])
      self._log(name, fp, "cached")
      return Stage(name, fp, arrays, True)
    start = time.time()
    logging.info("stage %s: computing", name)
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    self._store(self.path(name), fp, deps, arrays)
    seconds = time.time() - start
    logging.info("stage %s: done in %.1f s", name, seconds)
    self._log(name, fp, "computed", seconds=round(seconds, 3))
    return Stage(name, fp, arrays, False)

  def run_chunked(self, name: str, deps: Mapping[str, Any], num_items: int, chunk_size: int,
                  compute_chunk: Callable[[int, int], Mapping[str, np.ndarray]],
                  unit: str = "img") -> Stage:
    """Like `run` for a stage over `num_items` rows computed in chunks of `chunk_size` rows:
    `compute_chunk(start, stop)` → arrays with `stop - start` leading rows. Finished chunks are
    kept in `<name>.parts/<fingerprint>/` until the stage is complete, then concatenated."""
    full_deps = {**deps, "__chunk_size__": int(chunk_size), "__items__": int(num_items)}
    fp = fingerprint(full_deps)
    final = (self.load(name, fp, full_deps) if parallel.is_writer() or jax.process_count() > 1
             else None)
    if _agree(final is not None):
      if final is None:
        final = self.load(name, fp)
        if final is None:
          raise RuntimeError(f"stage {name}: cached on process 0 but unreadable here; put "
                             "config.output on a shared filesystem")
      logging.info("stage %s: cached (%s)", name, fp[:12])
      self._log(name, fp, "cached")
      return Stage(name, fp, final, True)
    parts_root = os.path.join(self.root, name + ".parts")
    parts_dir = os.path.join(parts_root, fp[:16])
    if parallel.is_writer() and os.path.isdir(parts_root):
      for stale in os.listdir(parts_root):     # chunks of an older config
        if stale != fp[:16]:
          shutil.rmtree(os.path.join(parts_root, stale), ignore_errors=True)
    chunk_size = max(1, int(chunk_size))
    starts = list(range(0, num_items, chunk_size))
    pieces: list[dict[str, np.ndarray]] = []
    start_time = time.time()
    resumed = 0
    with tqdm(total=num_items, desc=name, unit=unit, smoothing=0.1,
              disable=not self.progress) as bar:
      for lo in starts:
        hi = min(num_items, lo + chunk_size)
        arrays, cached = self._chunk(name, fp, os.path.join(parts_dir, f"{lo:010d}.npz"), lo,
                                     hi, compute_chunk)
        resumed += cached
        pieces.append(arrays)
        bar.update(hi - lo)
    if not pieces:
      raise ValueError(f"stage {name}: nothing to compute (0 items)")
    result = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    self._store(self.path(name), fp, full_deps, result)
    if parallel.is_writer():
      shutil.rmtree(parts_root, ignore_errors=True)
    seconds = time.time() - start_time
    logging.info("stage %s: done in %.1f s (%d of %d chunks from a previous run)", name, seconds,
                 resumed, len(starts))
    self._log(name, fp, "computed", seconds=round(seconds, 3), resumed_chunks=resumed)
    return Stage(name, fp, result, False)

  def _chunk(self, name: str, fp: str, part_path: str, lo: int, hi: int,
             compute_chunk: Callable[[int, int], Mapping[str, np.ndarray]]
             ) -> tuple[dict[str, np.ndarray], bool]:
    """Rows [lo, hi) of a chunked stage: (arrays, True) from a finished chunk of an earlier
    run, else (computed and stored, False)."""
    arrays = self.load(part_path[len(self.root) + 1:-4], fp) if parallel.is_writer() or (
        jax.process_count() > 1) else None
    if _agree(arrays is not None):
      if arrays is None:
        raise RuntimeError(f"stage {name}: chunk {lo} is cached on process 0 but not "
                           "readable here; put config.output on a shared filesystem")
      return arrays, True
    arrays = {k: np.asarray(v) for k, v in compute_chunk(lo, hi).items()}
    for k, v in arrays.items():
      if v.shape[:1] != (hi - lo,):
        raise ValueError(f"stage {name}: chunk [{lo}, {hi}) returned {k} with shape "
                         f"{v.shape}, expected {hi - lo} leading rows")
    self._store(part_path, fp, {"stage": name, "chunk": lo}, arrays)
    self._log(name, fp, "chunk", start=lo, stop=hi)
    return arrays, False

  def computed(self) -> list[str]:
    """Stages computed (not loaded) in this process so far."""
    return [e["stage"] for e in self.events if e["event"] == "computed"]


def read_log(root: str) -> list[dict[str, Any]]:
  path = os.path.join(root, LOG_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
