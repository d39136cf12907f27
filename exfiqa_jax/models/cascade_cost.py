"""The cascade's measured cost model (docs/evaluation.md, "Early exits and thresholds"): seconds,
not GFLOPs.

Fewer GFLOPs need not mean less time: every segment is its own program call, survivors are
copied to the host, compacted and sent back, and a partial bucket costs a full one's launch. So
the cascade is calibrated on the wall time of the real programs on this device:

  segment i-j x b   one call of the program running blocks i+1..j and the exit head at j (the
                    first segment, i = 0, also embeds the uint8 images) on a bucket of b rows,
                    host transfer in and out included (exits.Cascade.segment_call);
  compaction x b    per row carried on: picking the survivors of a b-row stream and queueing
                    them for the next segment (exits.Cascade.compaction_call);
  full x b          one call of the full pass (QualityModel.run_batch: every exit) on b rows.

The model supplies one call of each program (`caller`, QualityModel.cascade_costs); the cost
model times it. `prepare(exits, rows)` measures every entry a calibration over those candidate
exits can ask for together, interleaved (`time_calls`: every call warmed up, then rounds that
take each call once in turn until each has run for MIN_SECONDS, the least per call), so that
load from other jobs on the machine falls on all entries alike instead of skewing the ones
measured while it lasted; an entry still missing later (a partial bucket's, for a prediction)
is measured alone. Kept in a JSON file beside the XLA compilation cache (compile_cache.py),
one per `cost_key`: the device (platform, kind, count, the CPU model on a CPU), JAX's version,
the architecture and the compute dtype — never the weights, which do not change the time.
Arithmetic:

  per_image(exits)   seconds per image of leaving at each exit of `exits` once buckets are
                     full (the streaming regime): the segment times at the largest bucket per
                     row, summed up to that exit, plus the compaction of every row carried on;
                     calibrate/cascade.py minimises its mean like any cost;
  predict_seconds    a run of known size exactly as the engine schedules it: per segment
                     floor(rows / B) full buckets and one bucket for the rest.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from exfiqa_jax import compile_cache, files, parallel

COST_DIR = "cascade_costs"        # beside the compilation cache folder
FORMAT = "exfiqa_cascade_costs"
ARCHITECTURE = ("mode", "width", "depth", "num_heads", "patch_size", "img_size", "mlp_dim",
                "embed_dim")

# (kind, start, stop, rows) -> one call of that program on a bucket of `rows` (its result unread)
Caller = Callable[[str, int, int, int], Callable[[], Any]]


MIN_SECONDS = 0.5       # time_calls: each call timed for at least this long in all
MAX_ROUNDS = 50


def time_calls(calls: Mapping[Any, Callable[[], Any]], repeats: int = 5, warmups: int = 2,
               min_seconds: float = MIN_SECONDS) -> dict[Any, float]:
  """Least seconds per call of each of `calls`: `warmups` calls each (compilation, first
  allocations), then rounds that call each once, in turn (the order rotating per round); a call
  takes part in at least `repeats` rounds, and in more (up to MAX_ROUNDS) until it has been
  timed for `min_seconds` in all. Other jobs on the machine only ever add time and, interleaved,
  add it to all alike, so the least is the program's own and the ratios between programs hold;
  a program of a few milliseconds needs many rounds for its least to settle (a tiny model's
  segment: about 15 % above it after 5 rounds)."""
  names = list(calls)
  for name in names:
    for _ in range(warmups):
      calls[name]()
  best = dict.fromkeys(names, math.inf)
  spent = dict.fromkeys(names, 0.0)
  rounds = max(1, int(repeats))
  for r in range(max(rounds, MAX_ROUNDS) if min_seconds > 0 else rounds):
    active = [n for n in names if r < rounds or spent[n] < min_seconds]
    if not active:
      break
    for name in active[r % len(active):] + active[:r % len(active)]:
      start = time.perf_counter()
      calls[name]()
      took = time.perf_counter() - start
      best[name], spent[name] = min(best[name], took), spent[name] + took
  return best


def time_call(fn: Callable[[], Any], repeats: int = 5) -> float:
  """Least seconds of at least `repeats` calls of `fn` after two warm-up calls (time_calls)."""
  return time_calls({0: fn}, repeats)[0]


def cost_key(model_config: Mapping[str, Any], dtype: str) -> dict[str, Any]:
  """The identity of a cost table: device_info, the architecture fields and the dtype."""
  return {"device": parallel.device_info(), "dtype": str(dtype),
          "model": {k: model_config[k] for k in ARCHITECTURE if k in model_config}}


def _name(kind: str, start: int, stop: int, rows: int) -> str:
  return f"{kind} {start}-{stop} x{rows}" if kind == "segment" else f"{kind} x{rows}"


def bucket_for(rows: int, sizes: Sequence[int]) -> int:
  """The smallest ladder size holding `rows` (the engine's choice for a partial bucket)."""
  return next(b for b in sizes if b >= rows)


class CostModel:
  """A table of measured seconds per call (module docstring), filled by timing the calls
  `caller` makes (measure, prepare; an entry still missing when first asked for)."""

  def __init__(self, key: Mapping[str, Any], table: Mapping[str, float] | None = None,
               caller: Caller | None = None, path: str | None = None, repeats: int = 5,
               min_seconds: float = MIN_SECONDS):
    self.key = dict(key)
    self.table: dict[str, float] = dict(table or {})
    self.caller, self.path = caller, path
    self.repeats, self.min_seconds = int(repeats), float(min_seconds)   # time_calls
    self.measured = 0                       # entries measured by this object

  # -- storage ------------------------------------------------------------------------------
  @classmethod
  def open(cls, key: Mapping[str, Any], caller: Caller | None, folder: str | None,
           repeats: int = 5, min_seconds: float = MIN_SECONDS) -> "CostModel":
    """The table of `key` kept in `folder` (None: in memory only), or a new one."""
    path = None
    if folder:
      digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
      path = os.path.join(folder, f"{digest}.json")
      try:
        stored = files.read_json(path)
        if stored.get("format") == FORMAT and stored.get("key") == json.loads(
            json.dumps(key)):
          return cls(key, stored["seconds"], caller, path, repeats, min_seconds)
      except (OSError, ValueError, KeyError, AttributeError):
        pass                                # none yet, or unreadable: measured again
    return cls(key, None, caller, path, repeats, min_seconds)

  @staticmethod
  def folder_for(compile_cache_path: str | None) -> str | None:
    """Where the tables live: beside the compilation cache folder `compile_cache_path` (None
    or "" when it is off: tables stay in memory). Jobs pass the one in use
    (jax.config.jax_compilation_cache_dir, which main.py sets from --config.compile_cache)."""
    folder = compile_cache.resolve(compile_cache_path)
    return os.path.join(os.path.dirname(folder), COST_DIR) if folder else None

  def save(self) -> None:
    """Writes the table (atomically) when it has a path and something new."""
    if self.path and self.measured:
      try:
        files.write_json(self.path, {"format": FORMAT, "key": self.key, "seconds": self.table})
      except OSError as e:
        logging.warning("cascade cost table %s not written (%s); it is measured again next "
                        "time", self.path, e)

  # -- entries ------------------------------------------------------------------------------
  def measure(self, entries: Sequence[tuple[str, int, int, int]]) -> None:
    """Times the (kind, start, stop, rows) entries the table lacks, together (time_calls); a
    compaction entry is kept per row carried on."""
    missing = {_name(*e): e for e in entries if _name(*e) not in self.table}
    if not missing:
      return
    if self.caller is None:
      raise KeyError(f"the cost table has no {sorted(missing)} and no caller to measure them")
    found = time_calls({name: self.caller(*e) for name, e in missing.items()}, self.repeats,
                       min_seconds=self.min_seconds)
    for name, (kind, _, _, rows) in missing.items():
      self.table[name] = found[name] / (rows if kind == "compaction" else 1)
    self.measured += len(missing)

  def prepare(self, exits: Sequence[int], rows: int) -> None:
    """Measures, interleaved, every entry a calibration over the candidate `exits` (ending at
    the depth) can ask for at buckets of `rows`: each segment between two of them (or from the
    start), the full pass, and the compaction between segments."""
    ends = tuple(int(e) for e in exits)
    pairs = itertools.combinations((0,) + ends, 2)
    self.measure([("segment", i, j, rows) for i, j in pairs] + [("full", 0, 0, rows)]
                 + ([("compaction", 0, 0, rows)] if len(ends) > 1 else []))

  def seconds(self, kind: str, start: int, stop: int, rows: int) -> float:
    """Seconds per call of one program on `rows` rows (measured now, alone, when missing)."""
    self.measure([(kind, start, stop, rows)])
    return self.table[_name(kind, start, stop, rows)]

  def segment(self, start: int, stop: int, rows: int) -> float:
    return self.seconds("segment", start, stop, rows)

  def full(self, rows: int) -> float:
    return self.seconds("full", 0, 0, rows)

  def compaction(self, rows: int) -> float:
    """Seconds per row carried on from a bucket of `rows`."""
    return self.seconds("compaction", 0, 0, rows)

  # -- arithmetic ---------------------------------------------------------------------------
  def per_image(self, exits: Sequence[int], big: int) -> np.ndarray:
    """[len(exits)] seconds per image of leaving at each exit, buckets of `big` rows."""
    starts = (0,) + tuple(exits[:-1])
    step = [self.segment(i, j, big) / big + (self.compaction(big) if i else 0.0)
            for i, j in zip(starts, exits)]
    return np.cumsum(np.asarray(step, np.float64))

  def full_per_image(self, big: int) -> float:
    return self.full(big) / big

  def predict_seconds(self, exits: Sequence[int], reached: Sequence[int],
                      sizes: Sequence[int]) -> float:
    """A run where reached[s] rows enter segment s, scheduled as the engine does (full
    buckets of sizes[-1], the rest in the smallest bucket that holds it)."""
    big, total = sizes[-1], 0.0
    for s, (i, j) in enumerate(zip((0,) + tuple(exits[:-1]), exits)):
      rows = int(reached[s])
      full, rest = divmod(rows, big)
      total += full * self.segment(i, j, big)
      if rest:
        total += self.segment(i, j, bucket_for(rest, sizes))
      if s and rows:
        total += rows * self.compaction(big)
    return total

  def predict_full_seconds(self, n: int, sizes: Sequence[int]) -> float:
    """The full pass over n images in chunks of sizes[-1], the last one padded."""
    full, rest = divmod(int(n), sizes[-1])
    return full * self.full(sizes[-1]) + (self.full(bucket_for(rest, sizes)) if rest else 0.0)

  def to_dict(self) -> dict[str, Any]:
    return {"key": self.key, "seconds": dict(self.table), "path": self.path}


def speedup(full_seconds: float, seconds: float) -> float:
  """How many times the full pass's images/s a run reaches (NaN when not measurable)."""
  return full_seconds / seconds if seconds > 0 and math.isfinite(seconds) else float("nan")
