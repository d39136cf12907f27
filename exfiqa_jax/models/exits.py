"""EX-FIQA early exits as deployable compute: truncated programs and the adaptive cascade.

Fixed exit k (docs/methods.md, "Fixed exits"): `truncate_variables(variables, k)` with a
`VisionTransformer(cfg, depth=k)` runs blocks 1..k only, so the cost of scoring at exit k really
falls with k (QualityModel.score(images, exit=k) builds it).

Adaptive cascade (docs/methods.md, "Adaptive cascade"): the block stack runs in segments ending at
the exits E = (e_1 < … < e_S = L), (3, 6, 9, 12) for ViT-S by default. The programs, jitted once
per (segment, bucket size):
  embed        uint8 images → patch embedding [+ quality token] + position → residual stream
  segment s    blocks e_{s-1}+1..e_s on the residual stream (the stacked block parameters sliced
               [e_{s-1}:e_s], run by the model's own `Block` scan, so numbers equal the full pass)
               and the exit head at e_s (shared final LayerNorm + the unchanged heads, exactly as
               the model scores exit e_s)
After segment s (< S) an image with score < reject[s] leaves rejected, one with score > accept[s]
leaves accepted, the rest carry their residual stream on. At e_S the decision is
accept iff score >= tau (the full-depth rule). Survivors are pooled across batches on the host
and regrouped into full buckets of the largest ladder size; the remainders go into the smallest
ladder bucket that holds them (padded rows are computed but never read), so the programs stay
few and the compute per image really falls with the exit it leaves at.

    thresholds = CascadeThresholds(exits=(3, 6, 9, 12), reject=(-1.0, -0.8, -0.5),
                                   accept=(2.0, 1.8, 1.6), tau=0.9)
    result = fx.load(path).cascade(images, thresholds)  # (score, exit, accept, gflops) per image
    result = fx.load(model_dir).cascade(images)   # the early_exit job's cascade.json, 0.99
    stream = model.cascade_stream()               # chunk by chunk: push(chunk)..., flush()

A stream (`CascadeStream`) carries survivors across the chunks pushed into it, so a folder read
chunk by chunk runs full buckets too; results come back in input order, each image once.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax import files, models, parallel
from exfiqa_jax.data import preprocess
from exfiqa_jax.models import vit

DEFAULT_SEGMENTS = 4        # ViT-S: exits (3, 6, 9, 12)


# ------------------------------------------------------------------------------------------
# Parameters of truncated programs and segments
# ------------------------------------------------------------------------------------------
def truncate_variables(variables: Mapping, depth: int) -> dict:
  """The first `depth` blocks of the stacked block parameters, for `VisionTransformer(depth=k)`
  (a fixed early exit whose cost really falls with k)."""
  return slice_blocks(variables, 0, depth)


def slice_blocks(variables: Mapping, start: int, stop: int) -> dict:
  """`variables` with the stacked block parameters cut to blocks start+1..stop ([start:stop])."""
  params = dict(variables["params"])
  params["blocks"] = jax.tree.map(lambda x: x[start:stop], params["blocks"])
  return {**variables, "params": params}


def check_exit(exit: int | None, depth: int) -> int:
  """The number of blocks a fixed-exit program runs: `exit` in 1..depth, 0 or None = depth."""
  if exit is None or (isinstance(exit, (int, np.integer)) and not isinstance(exit, bool)
                      and int(exit) == 0):
    return depth
  if isinstance(exit, bool) or not isinstance(exit, (int, np.integer)) or not 1 <= exit <= depth:
    raise ValueError(f"exit must be an integer in 1..{depth} (the block after which the program "
                     f"stops; 0 or None = all {depth} exits), got {exit!r}")
  return int(exit)


def default_exits(depth: int, segments: int = DEFAULT_SEGMENTS) -> tuple[int, ...]:
  """Evenly spaced exits ending at `depth`: (3, 6, 9, 12) for depth 12, (1, 2, 3) for 3."""
  points = np.round(np.linspace(depth / segments, depth, segments)).astype(int)
  return tuple(int(e) for e in np.unique(np.clip(points, 1, depth)))


def check_exits(exits: Sequence[int], depth: int) -> tuple[int, ...]:
  """1-based, strictly increasing, the last one the full depth (every image can be decided)."""
  out = tuple(int(e) for e in exits)
  if (not out or any(e != x for e, x in zip(out, exits)) or out[0] < 1
      or any(b <= a for a, b in zip(out, out[1:])) or out[-1] != depth):
    raise ValueError(f"cascade exits must be strictly increasing 1-based block numbers ending "
                     f"at the depth {depth}, e.g. {default_exits(depth)}; got {tuple(exits)}")
  return out


# ------------------------------------------------------------------------------------------
# Thresholds and results
# ------------------------------------------------------------------------------------------
def _json_float(v: float) -> float | str:
  """Strict JSON has no infinities: ±inf are written as the strings "inf" / "-inf"."""
  return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


@dataclasses.dataclass(frozen=True)
class CascadeThresholds:
  """Per-exit early decisions of the cascade (docs/methods.md, "Thresholds").

  At exits[i] (i < S-1): score < reject[i] → leaves rejected, score > accept[i] → leaves
  accepted (-inf / +inf: never). At exits[-1] (= the depth): accept iff score >= tau.
  """
  exits: tuple[int, ...]
  reject: tuple[float, ...]
  accept: tuple[float, ...]
  tau: float

  def __post_init__(self):
    exits = tuple(int(e) for e in self.exits)
    reject = tuple(float(v) for v in self.reject)
    accept = tuple(float(v) for v in self.accept)
    object.__setattr__(self, "exits", exits)
    object.__setattr__(self, "reject", reject)
    object.__setattr__(self, "accept", accept)
    object.__setattr__(self, "tau", float(self.tau))
    if not exits or exits[0] < 1 or any(b <= a for a, b in zip(exits, exits[1:])):
      raise ValueError(f"exits must be strictly increasing 1-based block numbers, got {exits}")
    if len(reject) != len(exits) - 1 or len(accept) != len(exits) - 1:
      raise ValueError(f"need one reject and one accept threshold per exit except the last "
                       f"({len(exits) - 1} for exits {exits}); got {len(reject)} reject, "
                       f"{len(accept)} accept")
    if any(math.isnan(v) for v in reject + accept + (self.tau,)):
      raise ValueError("cascade thresholds must not be NaN (use -inf / +inf for 'never')")
    bad = [i for i, (r, a) in enumerate(zip(reject, accept)) if r > a]
    if bad:
      raise ValueError(f"reject > accept at exit {exits[bad[0]]} ({reject[bad[0]]} > "
                       f"{accept[bad[0]]}): an image would both leave rejected and accepted")

  @classmethod
  def full_depth(cls, exits: Sequence[int], tau: float) -> "CascadeThresholds":
    """No early decision: every image runs to the last exit (the full-depth decision)."""
    n = len(exits) - 1
    return cls(tuple(exits), (-math.inf,) * n, (math.inf,) * n, tau)

  def check(self, depth: int) -> None:
    check_exits(self.exits, depth)

  def to_dict(self) -> dict[str, Any]:
    """Strict-JSON-safe: infinite thresholds become "inf" / "-inf" (from_dict reads both)."""
    return {"exits": list(self.exits), "reject": [_json_float(v) for v in self.reject],
            "accept": [_json_float(v) for v in self.accept], "tau": _json_float(self.tau)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "CascadeThresholds":
    unknown = set(d) - {"exits", "reject", "accept", "tau"}
    if unknown:
      raise ValueError(f"unknown cascade threshold fields {sorted(unknown)}")
    return cls(tuple(d["exits"]), tuple(float(v) for v in d["reject"]),
               tuple(float(v) for v in d["accept"]), float(d["tau"]))


CASCADE_FILE = "cascade.json"     # calibrated cascades stored with a model (early_exit job)
CASCADE_FORMAT = "exfiqa_cascade"


def store_with_model(model_dir: str | os.PathLike, record: Mapping[str, Any]) -> str:
  """Writes the early_exit job's calibrated cascades into a model directory (atomically), so
  that `fx.load(model_dir).cascade(images)` runs them. `record`: {"headline": target,
  "cascades": [{"target", "thresholds": CascadeThresholds.to_dict(), ...}], ...}."""
  target = os.path.join(os.fspath(model_dir), CASCADE_FILE)
  files.write_json(target, {"format": CASCADE_FORMAT, "version": 1, **record})
  return target


def stored_thresholds(model_dir: str | os.PathLike, target: float | None = None
                      ) -> tuple[CascadeThresholds, dict[str, Any]]:
  """(thresholds, its record) of the cascade stored with a model at agreement `target` (None:
  the headline one, 0.99 by default). Errors say how to create or choose one."""
  path = os.path.join(os.fspath(model_dir), CASCADE_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{model_dir} holds no calibrated cascade ({CASCADE_FILE}); run the "
                            "early_exit job on it (configs/early_exit.py, --config.quality_model."
                            "path=<this directory>) or pass CascadeThresholds")
  try:
    stored = files.read_json(path)
    if stored.get("format") != CASCADE_FORMAT:
      raise ValueError(f"format {stored.get('format')!r} is not {CASCADE_FORMAT!r}")
    want = float(stored["headline"] if target is None else target)
    found = [c for c in stored["cascades"] if math.isclose(float(c["target"]), want)]
    if not found:
      raise LookupError(f"no cascade at agreement target {want:g}; stored: "
                        f"{[float(c['target']) for c in stored['cascades']]}")
    return CascadeThresholds.from_dict(found[0]["thresholds"]), dict(found[0])
  except LookupError as e:
    raise ValueError(f"{path}: {e}") from None
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path}: not a calibrated cascade ({e}); run the early_exit job again "
                     "to rewrite it") from None


class CascadeResult(NamedTuple):
  score: np.ndarray      # [N] float32, the score at the exit where the image left
  exit: np.ndarray       # [N] int32, that exit (1-based)
  accept: np.ndarray     # [N] bool decision
  gflops: np.ndarray     # [N] float64, GFLOPs spent on the image


def cascade_gflops(model_config: Mapping[str, Any] | vit.ViTConfig, exits: Sequence[int],
                   exit_left: np.ndarray) -> np.ndarray:
  """GFLOPs per image of the cascade: patch embedding + the blocks run (= the exit it left at)
  + one exit head per exit evaluated (models.program_gflops, the one cost formula)."""
  exits = np.asarray(tuple(exits), np.int64)
  exit_left = np.asarray(exit_left, np.int64)
  heads = np.searchsorted(exits, exit_left) + 1
  if exit_left.size and (np.any(heads > exits.size)
                         or np.any(exits[np.minimum(heads, exits.size) - 1] != exit_left)):
    raise ValueError(f"exit_left holds exits that are not cascade exits {tuple(exits)}")
  return models.program_gflops(model_config, exit_left, heads).astype(np.float64)


# ------------------------------------------------------------------------------------------
# Bucket ladder
# ------------------------------------------------------------------------------------------
def bucket_ladder(batch_size: int, ladder: Sequence[int] | None = None,
                  num_devices: int | None = None) -> tuple[int, ...]:
  """Bucket sizes, sorted, each a multiple of the device count (sharded batch axis).

  Default: powers of two up to `batch_size` (and `batch_size` itself); a given ladder is used as
  is (rounded up to device multiples), its largest size being the cascade's batch.
  """
  n_dev = int(num_devices or jax.device_count())
  if ladder is None:
    top = max(1, int(batch_size))
    sizes = [1 << i for i in range(top.bit_length()) if (1 << i) < top] + [top]
  else:
    sizes = [int(b) for b in ladder]
    if not sizes or any(b < 1 or b != x for b, x in zip(sizes, ladder)):
      raise ValueError(f"a bucket ladder is a list of positive integers, got {list(ladder)}")
  return tuple(sorted({-(-b // n_dev) * n_dev for b in sizes}))


# ------------------------------------------------------------------------------------------
# The programs (the model's own layers: subclasses that call its pieces)
# ------------------------------------------------------------------------------------------
class _Embed(vit.VisionTransformer):
  """Images in [-1, 1] → residual stream [B, T, D] (VisionTransformer._embed)."""

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:   # pytype: disable=signature-mismatch
    return self._embed(images)


class _Segment(vit.VisionTransformer):
  """Residual stream → after `depth` more blocks (the model's `Block` scan; params sliced)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:        # pytype: disable=signature-mismatch
    self._check_block_params()
    x, _ = self._blocks(x, False, False, False)
    return x


class _ExitHead(vit.VisionTransformer):
  """Raw residual stream after block l → exit-l score: final LayerNorm (f32), then head_qs on
  the quality token (token) or on the feature head's embedding (crfiqa / full)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:        # pytype: disable=signature-mismatch
    cfg = self.config
    xn = vit.layer_norm("norm", jnp.float32)(x.astype(jnp.float32))
    quality = vit.QualityHead(cfg.quality_head_in, name="head_qs")
    if cfg.mode == "token":
      return quality(xn[:, 0])
    feature = vit.FeatureHead(cfg.embed_dim, self.dtype, name="feature")
    return quality(feature(self._flatten_for_feature(xn)))


def _subset(variables: Mapping, names: Sequence[str]) -> dict:
  return {col: {k: v for k, v in tree.items() if k in names}
          for col, tree in variables.items() if any(k in names for k in tree)}


class _Queue:
  """Rows waiting for a segment, pooled across batches on the host: (image ids, streams)."""

  def __init__(self):
    self.ids: list[np.ndarray] = []
    self.rows: list[np.ndarray] = []
    self.size = 0

  def push(self, ids: np.ndarray, rows: np.ndarray) -> None:
    if len(ids):
      self.ids.append(ids)
      self.rows.append(rows)
      self.size += len(ids)

  def pop(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    ids, rows = np.concatenate(self.ids), np.concatenate(self.rows)
    self.ids, self.rows = ([ids[n:]], [rows[n:]]) if len(ids) > n else ([], [])
    self.size = len(ids) - min(n, len(ids))
    return ids[:n], rows[:n]


class Cascade:
  """The compiled segment programs of one ViT quality model for one exit set E.

  `variables` should already be on the devices (replicated); the per-segment slices are
  cached there once. `run` is single-host (QualityModel.cascade checks).
  """

  def __init__(self, module: vit.VisionTransformer, variables: Mapping, exits: Sequence[int],
               batch_size: int, programs: dict | None = None):
    cfg = module.config
    if cfg.mode not in vit.QUALITY_MODES:
      raise ValueError(f"the cascade needs exit scores; mode {cfg.mode!r} has no quality head")
    self.config = cfg
    self.exits = check_exits(exits, cfg.depth)
    self.batch_size = int(batch_size)
    dtype = module.dtype
    starts = (0,) + self.exits[:-1]
    replicated = parallel.replicated()
    # `programs` (one dict per model, QualityModel's) shares the segment programs and their
    # variables between exit sets: segment (i, j) is the same program in every set holding it;
    # looked up at every call, so a program replaced there (a test's slowed one) is the one run
    self.programs = {} if programs is None else programs
    self._keys = tuple(zip(starts, self.exits))
    if "vars" not in self.programs:
      self.programs["vars"] = (
          jax.device_put(_subset(variables, ("patch_embed", "qs_token", "pos_embed")),
                         replicated),
          jax.device_put(_subset(variables, ("norm", "feature", "head_qs")), replicated))
    self._embed_vars, self._head_vars = self.programs["vars"]
    embed = _Embed(cfg, dtype=dtype)
    head = _ExitHead(cfg, dtype=dtype)
    for i, j in self._keys:
      if (i, j) not in self.programs:
        self.programs[(i, j)] = (
            jax.jit(self._program(embed if i == 0 else None,
                                  _Segment(cfg, depth=j - i, dtype=dtype), head)),
            jax.device_put({"params": {"blocks": slice_blocks(
                variables, i, j)["params"]["blocks"]}}, replicated))
    self.last_stats: dict[str, Any] = {}

  @property
  def _fns(self) -> list[Callable]:
    return [self.programs[k][0] for k in self._keys]

  @property
  def _block_vars(self) -> list[Any]:
    return [self.programs[k][1] for k in self._keys]

  def _inputs(self, s: int, rows: int) -> np.ndarray:
    """Zero inputs of segment s for a bucket of `rows`: uint8 images, or a residual stream."""
    size = self.config.img_size
    images = np.zeros((rows, size, size, 3), np.uint8)
    if s == 0:
      return images
    shape = jax.eval_shape(self._fns[0], self._embed_vars, self._block_vars[0],
                           self._head_vars, images)[0]
    return np.zeros(shape.shape, shape.dtype)

  def segment_call(self, s: int, rows: int) -> Callable[[], None]:
    """One call of segment s on a bucket of `rows` (a multiple of the device count) as `run`
    makes it: inputs sent, the program, scores (and the stream, but after the last segment)
    fetched (timed by models/cascade_cost.py)."""
    inputs, sharding = self._inputs(s, rows), parallel.batch_sharding()
    last = s == len(self.exits) - 1

    def call():
      x, sc = self._fns[s](self._embed_vars, self._block_vars[s], self._head_vars,
                           jax.device_put(inputs, sharding))
      np.asarray(jax.device_get(sc))
      if not last:
        np.asarray(jax.device_get(x))
    return call

  def compaction_call(self, rows: int) -> Callable[[], None]:
    """The host's work on a `rows`-row stream of which half survives a segment, for `rows` rows
    carried on: picked out, queued, popped into the next bucket (nothing with one segment)."""
    stream = self._inputs(1 if len(self.exits) > 1 else 0, rows)
    if stream.ndim != 3:            # one segment: nothing is ever carried on
      return lambda: None
    ids, keep = np.arange(rows), np.arange(rows) % 2 == 0

    def call():
      queue = _Queue()
      queue.push(ids[keep], stream[keep])
      queue.push(ids[keep], stream[keep])
      queue.pop(rows)
    return call

  @staticmethod
  def _program(embed: _Embed | None, segment: _Segment, head: _ExitHead) -> Callable:
    """One segment (the first one embeds uint8 images first) and the exit head at its end."""
    def program(embed_vars, block_vars, head_vars, inputs):
      x = inputs if embed is None else embed.apply(embed_vars, preprocess.normalize(inputs))
      x = segment.apply(block_vars, x)
      return x, head.apply(head_vars, x)
    return program

  def stream(self, thresholds: CascadeThresholds, ladder: Sequence[int] | None = None
             ) -> "CascadeStream":
    """A stream over any number of `push`ed chunks: survivors carried across them (module doc)."""
    return CascadeStream(self, thresholds, ladder)

  def run(self, images: np.ndarray, thresholds: CascadeThresholds,
          ladder: Sequence[int] | None = None) -> CascadeResult:
    """uint8 [N, S, S, 3] (already at the model's size) → CascadeResult, in input order."""
    stream = self.stream(thresholds, ladder)
    head, tail = stream.push(images), stream.flush()
    self.last_stats = stream.stats
    return CascadeResult(*(np.concatenate([a, b]) for a, b in zip(head, tail)))


class CascadeStream:
  """The cascade over a stream of image chunks (a folder decoded chunk by chunk, a long array).

  `push(images)` queues the chunk's images for segment 1 and runs every segment that has a full
  bucket (the ladder's largest size) waiting, so survivors of one chunk share buckets with the
  next chunk's; it returns the results of the images decided so far that follow every earlier
  one (input order: an image still running holds back the ones after it). `flush()` runs what
  is left in the smallest buckets that hold it and returns the rest. Every image pushed comes
  back exactly once, in the order pushed.
  """

  def __init__(self, engine: Cascade, thresholds: CascadeThresholds,
               ladder: Sequence[int] | None = None):
    if tuple(thresholds.exits) != engine.exits:
      raise ValueError(f"thresholds are for exits {thresholds.exits}, this cascade runs "
                       f"{engine.exits}")
    self._engine, self._thresholds = engine, thresholds
    self.sizes = bucket_ladder(engine.batch_size, ladder)
    num_seg = len(engine.exits)
    self._queues = [_Queue() for _ in range(num_seg)]
    self._sharding = parallel.batch_sharding()
    self.returned = 0                    # images already handed back (ids < returned)
    self.pushed = 0
    self._score = np.zeros(0, np.float32)   # results of ids returned..pushed-1
    self._exit = np.zeros(0, np.int32)
    self._accept = np.zeros(0, bool)
    self._count = np.zeros(0, np.int64)     # times decided: exactly once when returned
    self.stats: dict[str, Any] = {"rows": [0] * num_seg, "padded_rows": [0] * num_seg,
                                  "calls": [0] * num_seg, "buckets": self.sizes}

  def push(self, images: np.ndarray) -> CascadeResult:
    """uint8 [n, S, S, 3] at the model's size → the results now complete, in input order."""
    images = np.asarray(images)
    size = self._engine.config.img_size
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
      raise ValueError(f"a cascade stream takes uint8 [n, {size}, {size}, 3] images, got "
                       f"{images.dtype} {list(images.shape)} (exfiqa_jax.inference."
                       "resize_images brings RGB images to the model's size)")
    n = len(images)
    ids = np.arange(self.pushed, self.pushed + n)
    self.pushed += n
    self._score = np.concatenate([self._score, np.full(n, np.nan, np.float32)])
    self._exit = np.concatenate([self._exit, np.zeros(n, np.int32)])
    self._accept = np.concatenate([self._accept, np.zeros(n, bool)])
    self._count = np.concatenate([self._count, np.zeros(n, np.int64)])
    self._queues[0].push(ids, images)
    self._drain(full_only=True)
    return self._take()

  def flush(self) -> CascadeResult:
    """Runs every waiting image to its decision; the remaining results, in input order."""
    self._drain(full_only=False)
    out = self._take()
    if self.returned != self.pushed:    # an invariant, never expected: fail loudly
      raise RuntimeError(f"cascade bookkeeping error: {self.pushed - self.returned} images "
                         "undecided after the flush")
    return out

  def _drain(self, full_only: bool) -> None:
    big = self.sizes[-1]
    for s, queue in enumerate(self._queues):    # survivors only move to later segments
      while queue.size >= big or (queue.size and not full_only):
        self._run_segment(s, *queue.pop(big))

  def _run_segment(self, s: int, ids: np.ndarray, inputs: np.ndarray) -> None:
    engine, t = self._engine, self._thresholds
    m, last = len(ids), s == len(engine.exits) - 1
    b = next(size for size in self.sizes if size >= m)
    if b > m:
      inputs = np.concatenate([inputs, np.zeros((b - m,) + inputs.shape[1:], inputs.dtype)])
    x, sc = engine._fns[s](engine._embed_vars, engine._block_vars[s], engine._head_vars,
                           jax.device_put(inputs, self._sharding))
    sc = np.asarray(jax.device_get(sc))[:m].astype(np.float32)
    self.stats["rows"][s] += m
    self.stats["padded_rows"][s] += b
    self.stats["calls"][s] += 1
    if last:
      done, acc = np.ones(m, bool), sc >= t.tau
    else:
      acc = sc > t.accept[s]
      done = (sc < t.reject[s]) | acc
    at = ids[done] - self.returned
    self._score[at], self._exit[at], self._accept[at] = sc[done], engine.exits[s], acc[done]
    self._count[at] += 1
    if not done.all():
      stream = np.asarray(jax.device_get(x))[:m]
      self._queues[s + 1].push(ids[~done], stream[~done])

  def _take(self) -> CascadeResult:
    """Hands back the longest run of decided images at the front (input order)."""
    if np.any(self._count > 1):         # an invariant, never expected: fail loudly
      raise RuntimeError(f"cascade bookkeeping error: {int(np.sum(self._count > 1))} images "
                         "decided twice")
    waiting = np.flatnonzero(self._count == 0)
    k = int(waiting[0]) if waiting.size else len(self._count)
    out = CascadeResult(self._score[:k].copy(), self._exit[:k].copy(), self._accept[:k].copy(),
                        cascade_gflops(self._engine.config, self._engine.exits, self._exit[:k]))
    self._score, self._exit = self._score[k:], self._exit[k:]
    self._accept, self._count = self._accept[k:], self._count[k:]
    self.returned += k
    return out
