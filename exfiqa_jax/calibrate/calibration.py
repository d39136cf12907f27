"""Deployment calibration: quality thresholds, the 0–100 quality scale, early-exit cascades.

What a user of a FIQA model asks first is "which threshold do I use?" (docs/evaluation.md,
"Early exits and thresholds"). Everything here is fitted on a reference / calibration set and is
plain NumPy on host arrays (the pair-based picker calls the EDC engine, exfiqa_jax.metrics.edc).

1. Threshold pickers (each with a seeded percentile-bootstrap interval):
   * `discard_threshold(quality, fraction)`: the quality value t such that discarding the images
     with quality < t removes `fraction` of the reference set — the FIQA rule of the EDC
     (first int(fraction·N) of the ascending sort; docs/evaluation.md). t is an observed value, so
     a decision "accept iff q >= t" is exact in float32. With ties at the cut the whole tie group
     is kept (a threshold cannot split it), so the fraction removed is <= int(fraction·N)/N.
   * `fnmr_thresholds(scores, is_genuine, pair_quality, targets, fmr)` (`fnmr_threshold` for
     one): the smallest discard level of a fine grid at which the EDC (exfiqa_jax.metrics.edc,
     `fiqa` or `iso` mode) reaches FNMR <= target at the FMR, and the pair-quality value of that
     cut (pair quality = min of the two image qualities, so the same t applies to single images);
     the interval from a stratified bootstrap of the pairs.
2. `QualityMapping`: raw scores → 0–100, the scale ISO/IEC 29794-5 uses for quality values (the
   integer value is round(q100); OFIQ maps its native scores with a sigmoid and rounds).
   One mapping per column (exit_1..exit_L, ex_fiqa_f, ex_fiqa_fw), so exits become comparable.
   * "quantile" (default): the empirical CDF of the reference scores at K quantile knots,
     piecewise linear, strictly increasing between the lowest and highest knot, clipped to 0 / 100
     outside, invertible there. q100 ≈ 100·(fraction of reference images scoring lower).
   * "logistic": q100 = 100 / (1 + exp(-(x - loc) / scale)), (loc, scale) a least-squares fit of
     the reference quantiles x_p = loc + scale·logit(p), p = 1 % .. 99 %; strictly increasing on
     the whole line, never clipped, inverse x = loc + scale·logit(q100 / 100).
   Stored with a model as `quality_mapping.json` in its converted directory (`save_mapping`,
   `load_mapping`); the score task then adds the columns q100_<column> to scores.csv.
3. Cascade calibration (`calibrate_cascade`) for the early-exit engine
   (exfiqa_jax/models/exits.py, docs/methods.md). The cascade rule, which `simulate_cascade`
   reproduces exactly on a full-pass exit matrix [N, L]: at each exit e_i but the last, an image
   still running leaves rejected if s_{e_i} < reject_i and accepted if s_{e_i} > accept_i
   (reject_i <= accept_i, so never both); the images reaching the last exit are accepted iff
   s_L >= tau. Thresholds are compared as float32, as on device. Calibration maximises the
   compute saved subject to agreement(cascade decision, full-depth decision s_L >= tau) >=
   target on the calibration set:
   * the error budget E = floor((1 - target)·N) disagreements is split across the early exits;
   * given its share (plus whatever earlier exits left unused), each exit in turn picks the
     reject/accept pair that lets the most of the images reaching it leave, with at most that
     many disagreements — an exact search over every cut of the sorted scores (prefix errors from
     below, suffix errors from above); thresholds sit midway between neighbouring observed scores;
   * a coordinate search over the split (all budget at one exit, an even split, then moving
     chunks of E/2, E/4, .., 1 between exits while the mean GFLOPs fall) picks the cheapest;
   * with a cost function (the engine's cascade_gflops) every subset of the early exits is tried
     too (greedy elimination beyond 6): an exit that decides too few images to pay for its head
     is dropped, so the cascade never costs more than it must.
   Thresholds at the calibration data's very edges are optimistic on new images (images cluster
   by identity), so `robust_cascade` (the early_exit task's default) chooses how conservative to
   be — a stricter internal target, then regions trimmed by a margin — by grouped K-fold
   cross-validation: the least conservative setting whose out-of-fold agreement reaches the
   target, refitted on the whole calibration set.
   The agreement on the calibration set is >= target by construction; report the held-out one.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

MARGINS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75)   # robust_cascade's region trimming ladder
MAPPING_FILE = "quality_mapping.json"
MAPPING_FORMAT = "exfiqa_quality_mapping"
MAPPING_KINDS = ("quantile", "logistic")
Q100_PREFIX = "q100_"          # scores.csv column of a mapped score: q100_exit_3, q100_ex_fiqa_f
DEFAULT_KNOTS = 101            # quantile mapping: knots at 0, 1, .., 100 %


# ------------------------------------------------------------------------------------------
# 1. Threshold pickers
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ThresholdPick:
  """A quality threshold (accept iff quality >= threshold) and its bootstrap interval.

  target    the requested discard fraction, or the requested FNMR
  discard   fraction discarded at the threshold on the reference set (images for
            discard_threshold; pairs (fiqa) or genuine pairs (iso) for fnmr_threshold)
  achieved  discard fraction (discard_threshold) or FNMR reached (fnmr_threshold)
  reached   False when no level of the grid reached the FNMR target (threshold NaN)
  """
  threshold: float
  ci_low: float
  ci_high: float
  target: float
  discard: float
  achieved: float
  reached: bool = True
  resamples: int = 0
  alpha: float = 0.05
  rule: str = "discard"

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _cut(fraction: float, n: int) -> int:
  """int(fraction·n) in float64, as the EDC's discard levels (docs/evaluation.md)."""
  return int(np.float64(fraction) * n)


def _check_fraction(fraction: float) -> float:
  f = float(fraction)
  if not 0.0 <= f < 1.0:
    raise ValueError(f"discard fraction must be in [0, 1), got {fraction}")
  return f


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
  samples = np.asarray(samples, np.float64)
  samples = samples[np.isfinite(samples)]
  if samples.size == 0:
    return float("nan"), float("nan")
  return (float(np.percentile(samples, 100 * alpha / 2)),
          float(np.percentile(samples, 100 * (1 - alpha / 2))))


def discard_threshold(quality: np.ndarray, fraction: float, resamples: int = 200, seed: int = 0,
                      alpha: float = 0.05) -> ThresholdPick:
  """The quality threshold whose "discard quality < t" removes `fraction` of `quality`.

  t = the (int(fraction·N)+1)-th smallest value (an observed one). Interval: percentile
  bootstrap over `resamples` resamples of the images with replacement (seeded).
  """
  q = np.asarray(quality)
  if q.ndim != 1 or q.size == 0:
    raise ValueError(f"quality must be a non-empty 1-D array, got shape {q.shape}")
  if not np.all(np.isfinite(q)):
    raise ValueError("quality contains NaN/inf")
  f = _check_fraction(fraction)
  n = q.size
  k = _cut(f, n)
  t = np.partition(q, k)[k]
  achieved = float(np.mean(q < t))
  boot = np.empty(0)
  if resamples > 0:
    rng = np.random.default_rng([int(seed), 0xD15C])
    rows = max(1, (1 << 22) // n)
    parts = []
    for lo in range(0, resamples, rows):
      b = min(rows, resamples - lo)
      sample = q[rng.integers(0, n, (b, n))]
      parts.append(np.partition(sample, k, axis=1)[:, k])
    boot = np.concatenate(parts)
  low, high = _interval(boot, alpha)
  return ThresholdPick(float(t), low, high, f, achieved, achieved, True, int(resamples),
                       float(alpha), "discard")


def fnmr_grid(step: float = 0.01, max_discard: float = 0.95) -> np.ndarray:
  """The fine discard grid of fnmr_threshold: 0, step, .., <= max_discard (< 1)."""
  if not 0 < step < 1 or not 0 <= max_discard < 1:
    raise ValueError(f"need 0 < step < 1 and 0 <= max_discard < 1, got {step}, {max_discard}")
  return np.round(np.arange(0.0, max_discard + step / 2, step), 10)


def _fnmr_picks(scores, is_genuine, pair_q, targets, fmr, grid, mode):
  """[(threshold, discard, fnmr, reached)] per target, from one EDC of these pairs."""
  from exfiqa_jax.metrics import edc
  curves = edc.edc_curves(scores, is_genuine, pair_q[None], (fmr,), grid, mode)
  fnmr = np.asarray(curves.fnmr)[0, 0]
  order = np.argsort(pair_q, kind="stable") if mode == "fiqa" else None
  gq = np.sort(pair_q[is_genuine], kind="stable") if mode != "fiqa" else None
  out = []
  for target in targets:
    ok = np.flatnonzero(np.isfinite(fnmr) & (fnmr <= target))
    if ok.size == 0:
      out.append((float("nan"), float("nan"), float(np.nanmin(fnmr)), False))
      continue
    r = int(ok[0])
    if mode == "fiqa":
      cut = _cut(grid[r], len(pair_q))
      t, discard = pair_q[order[cut]], cut / len(pair_q)
    else:                               # iso: genuine comparisons, whole tie groups
      d = int(round(float(curves.discarded[0, r]) * gq.size))
      t, discard = gq[min(d, gq.size - 1)], d / gq.size
    out.append((float(t), float(discard), float(fnmr[r]), True))
  return out


def fnmr_thresholds(scores: np.ndarray, is_genuine: np.ndarray, pair_quality: np.ndarray,
                    targets: Sequence[float], fmr: float = 1e-3, mode: str = "fiqa",
                    grid: np.ndarray | None = None, resamples: int = 50, seed: int = 0,
                    alpha: float = 0.05) -> list[ThresholdPick]:
  """Per target FNMR, the smallest discard threshold at which FNMR @ `fmr` <= target.

  scores [P] comparison scores, is_genuine [P], pair_quality [P] (min of the two images'
  qualities). The EDC is evaluated on `grid` (default fnmr_grid(): 0 .. 0.95 in steps of 0.01)
  with exfiqa_jax.metrics.edc; the first level whose FNMR <= target gives the cut, and the
  threshold is the pair quality at that cut (fiqa: position int(r·P) of the stable ascending
  sort; iso: the first kept genuine pair). Interval: stratified bootstrap over the pairs
  (genuine and impostor pairs resampled with replacement separately, so the class counts and
  with them the EDC program's shapes stay fixed: one compilation; kept in input order as
  edc.pauc_ci does; one EDC per resample serves every target); resamples that never reach a
  target are left out of its interval. A target not
  reached at all: threshold NaN, reached=False, achieved = the lowest FNMR on the grid.
  """
  s = np.asarray(scores, np.float32)
  gen = np.asarray(is_genuine, bool)
  pq = np.asarray(pair_quality, np.float32)
  if pq.ndim != 1 or pq.shape != s.shape or gen.shape != s.shape:
    raise ValueError(f"scores {s.shape}, is_genuine {gen.shape}, pair_quality {pq.shape} must be "
                     "1-D of one length (one entry per pair)")
  targets = [float(t) for t in targets]
  grid = fnmr_grid() if grid is None else np.asarray(grid, np.float64)
  point = _fnmr_picks(s, gen, pq, targets, float(fmr), grid, mode)
  boot = np.full((max(int(resamples), 0), len(targets)), np.nan)
  if resamples > 0:
    rng = np.random.default_rng([int(seed), 0xF1A])
    g_idx, i_idx = np.flatnonzero(gen), np.flatnonzero(~gen)
    for b in range(int(resamples)):
      idx = np.sort(np.concatenate([g_idx[rng.integers(0, g_idx.size, g_idx.size)],
                                    i_idx[rng.integers(0, i_idx.size, i_idx.size)]]))
      boot[b] = [x[0] for x in _fnmr_picks(s[idx], gen[idx], pq[idx], targets, float(fmr),
                                           grid, mode)]
  picks = []
  for i, (target, (t, discard, achieved, reached)) in enumerate(zip(targets, point)):
    low, high = _interval(boot[:, i], alpha)
    picks.append(ThresholdPick(t, low, high, target, discard, achieved, reached,
                               int(resamples), float(alpha), f"fnmr@fmr={float(fmr):g},{mode}"))
  return picks


def fnmr_threshold(scores: np.ndarray, is_genuine: np.ndarray, pair_quality: np.ndarray,
                   target_fnmr: float, fmr: float = 1e-3, mode: str = "fiqa",
                   grid: np.ndarray | None = None, resamples: int = 50, seed: int = 0,
                   alpha: float = 0.05) -> ThresholdPick:
  """fnmr_thresholds for one target."""
  return fnmr_thresholds(scores, is_genuine, pair_quality, [target_fnmr], fmr, mode, grid,
                         resamples, seed, alpha)[0]


# ------------------------------------------------------------------------------------------
# 2. The 0–100 quality scale
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ColumnMapping:
  """One column's monotone map raw → [0, 100] (see the module docstring)."""
  kind: str
  x: tuple[float, ...] = ()          # quantile: knots (raw), strictly increasing
  y: tuple[float, ...] = ()          # quantile: values at the knots, strictly increasing
  loc: float = float("nan")          # logistic
  scale: float = float("nan")

  def __call__(self, raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, np.float64)
    if self.kind == "quantile":
      if len(self.x) == 1:
        return np.full(raw.shape, self.y[0])
      return np.interp(raw, self.x, self.y)
    with np.errstate(over="ignore"):
      return 100.0 / (1.0 + np.exp(-(raw - self.loc) / self.scale))

  def inverse(self, q100: np.ndarray) -> np.ndarray:
    """The raw score of a 0–100 value (quantile: inside the knots' range; logistic: 0 / 100
    give -inf / +inf)."""
    q = np.asarray(q100, np.float64)
    if self.kind == "quantile":
      if len(self.x) == 1:
        return np.full(q.shape, self.x[0])
      return np.interp(q, self.y, self.x)
    with np.errstate(divide="ignore"):
      return self.loc + self.scale * (np.log(q) - np.log(100.0 - q))

  def to_dict(self) -> dict[str, Any]:
    if self.kind == "quantile":
      return {"kind": self.kind, "x": list(self.x), "y": list(self.y)}
    return {"kind": self.kind, "loc": self.loc, "scale": self.scale}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ColumnMapping":
    kind = d["kind"]
    if kind == "quantile":
      x, y = tuple(float(v) for v in d["x"]), tuple(float(v) for v in d["y"])
      if not x or len(x) != len(y) or np.any(np.diff(x) <= 0) or np.any(np.diff(y) <= 0):
        raise ValueError("a quantile mapping needs strictly increasing knots x and values y")
      return cls(kind, x, y)
    if kind == "logistic":
      if not float(d["scale"]) > 0:
        raise ValueError(f"logistic scale must be > 0, got {d['scale']}")
      return cls(kind, loc=float(d["loc"]), scale=float(d["scale"]))
    raise ValueError(f"unknown mapping kind {kind!r}; use one of {MAPPING_KINDS}")


def fit_column(raw: np.ndarray, kind: str = "quantile", knots: int = DEFAULT_KNOTS
               ) -> ColumnMapping:
  """Fits one column's mapping on reference scores (module docstring)."""
  raw = np.asarray(raw, np.float64).ravel()
  if raw.size == 0 or not np.all(np.isfinite(raw)):
    raise ValueError("reference scores must be a non-empty array of finite values")
  if kind == "quantile":
    p = np.linspace(0.0, 1.0, max(2, int(knots)))
    xq = np.quantile(raw, p)
    x, inverse = np.unique(xq, return_inverse=True)
    if x.size == 1:
      return ColumnMapping(kind, (float(x[0]),), (50.0,))
    y = 100.0 * np.bincount(inverse, weights=p) / np.bincount(inverse)   # ties → mean level
    y[0], y[-1] = 0.0, 100.0
    return ColumnMapping(kind, tuple(float(v) for v in x), tuple(float(v) for v in y))
  if kind == "logistic":
    p = np.linspace(0.01, 0.99, 99)
    xq = np.quantile(raw, p)
    z = np.log(p / (1 - p))
    scale, loc = np.polyfit(z, xq, 1)
    if not scale > 0:                     # (near-)constant scores: a unit-free fallback
      scale = max(float(np.std(raw)), abs(float(np.mean(raw))) * 1e-6, 1e-12)
      loc = float(np.median(raw))
    return ColumnMapping(kind, loc=float(loc), scale=float(scale))
  raise ValueError(f"unknown mapping kind {kind!r}; use one of {MAPPING_KINDS}")


@dataclasses.dataclass(frozen=True)
class QualityMapping:
  """Per-column 0–100 mappings of one model, plus what they were fitted on (`meta`)."""
  kind: str
  columns: dict[str, ColumnMapping]
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def apply(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{column: raw [N]} (or a score dict, see score_columns) → {q100_<column>: [N]} for every
    mapped column present, in the mapping's order. A score dict of a truncated program
    (exit=k < the depth fitted on) maps exit_1..exit_k only: its fusions fuse other exits."""
    flat = score_columns(scores) if "exit_scores" in scores else dict(scores)
    depth = self.meta.get("num_exits")
    if "exit_scores" in scores and depth and np.shape(scores["exit_scores"])[1] != depth:
      flat = {k: v for k, v in flat.items() if k.startswith("exit_")}
    return {Q100_PREFIX + name: m(flat[name]) for name, m in self.columns.items() if name in flat}

  def to_dict(self) -> dict[str, Any]:
    return {"format": MAPPING_FORMAT, "version": 1, "kind": self.kind, "scale": [0, 100],
            "columns": {k: v.to_dict() for k, v in self.columns.items()}, "meta": self.meta}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "QualityMapping":
    if d.get("format") != MAPPING_FORMAT:
      raise ValueError(f"not a quality mapping (format {d.get('format')!r}, expected "
                       f"{MAPPING_FORMAT!r})")
    return cls(str(d["kind"]), {k: ColumnMapping.from_dict(v) for k, v in d["columns"].items()},
               dict(d.get("meta", {})))


def score_columns(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A model's score dict (exit_scores [N, L], ex_fiqa_f, ex_fiqa_fw) → {exit_1..exit_L,
  ex_fiqa_f, ex_fiqa_fw: [N]}: the columns a mapping is fitted on."""
  ex = np.asarray(scores["exit_scores"])
  out = {f"exit_{l + 1}": ex[:, l] for l in range(ex.shape[1])}
  for k in ("ex_fiqa_f", "ex_fiqa_fw"):
    if k in scores:
      out[k] = np.asarray(scores[k])
  return out


def fit_mapping(reference: Mapping[str, np.ndarray], kind: str = "quantile",
                knots: int = DEFAULT_KNOTS, meta: Mapping[str, Any] | None = None
                ) -> QualityMapping:
  """One mapping per column of `reference` ({name: [N]}, or a score dict with exit_scores)."""
  if kind not in MAPPING_KINDS:
    raise ValueError(f"mapping kind must be one of {MAPPING_KINDS}, got {kind!r}")
  flat = score_columns(reference) if "exit_scores" in reference else dict(reference)
  cols = {name: fit_column(v, kind, knots) for name, v in flat.items()}
  n = len(next(iter(flat.values()))) if flat else 0
  info: dict[str, Any] = {"reference_images": int(n)}
  if "exit_scores" in reference:
    info["num_exits"] = int(np.shape(reference["exit_scores"])[1])
  return QualityMapping(kind, cols, {**info, **dict(meta or {})})


def save_mapping(path: str | os.PathLike, mapping: QualityMapping) -> str:
  """Writes `mapping` to <path>/quality_mapping.json (path = a converted model directory) or to
  `path` itself when it names a .json file. Atomic."""
  from exfiqa_jax import files
  path = os.fspath(path)
  target = path if path.endswith(".json") else os.path.join(path, MAPPING_FILE)
  files.write_json(target, mapping.to_dict())
  return target


def load_mapping(path: str | os.PathLike | None) -> QualityMapping | None:
  """The mapping stored with a model (<dir>/quality_mapping.json, or a .json file), or None
  when there is none (a .pt checkpoint, a directory without the file)."""
  if not path:
    return None
  path = os.path.expanduser(os.fspath(path))
  target = os.path.join(path, MAPPING_FILE) if os.path.isdir(path) else path
  if not target.endswith(".json") or not os.path.isfile(target):
    return None
  with open(target, encoding="utf-8") as f:
    return QualityMapping.from_dict(json.load(f))


def mapping_for(model_path: str | os.PathLike | None, override: str = "") -> QualityMapping | None:
  """The mapping the score task uses: `override` = "" → the one stored with the model (if any),
  "none" → no mapping, else a quality_mapping.json (or a directory holding one), which must
  exist."""
  override = str(override or "").strip()
  if override.lower() == "none":
    return None
  if override:
    mapping = load_mapping(override)
    if mapping is None:
      raise FileNotFoundError(f"no quality mapping at {override} (pass a quality_mapping.json, "
                              "a model directory holding one, or 'none')")
    return mapping
  return load_mapping(model_path)


# ------------------------------------------------------------------------------------------
# 3. Early-exit cascade: exact simulation and calibration
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CascadeOutcome:
  """What the cascade does to every image of a score matrix (the engine's CascadeResult) and the
  run statistics. stage [N] is the 0-based index into `exits` of the exit left at."""
  score: np.ndarray          # [N] f32 score at the exit left at
  exit: np.ndarray           # [N] int32, 1-based exit left at
  accept: np.ndarray         # [N] bool decision
  stage: np.ndarray          # [N] int
  full_accept: np.ndarray    # [N] bool: the full-depth decision s_L >= tau
  exits: tuple[int, ...]

  @property
  def agreement(self) -> float:
    return float(np.mean(self.accept == self.full_accept)) if self.accept.size else float("nan")

  @property
  def disagreements(self) -> int:
    return int(np.sum(self.accept != self.full_accept))

  def fraction_per_exit(self) -> np.ndarray:
    """[len(exits)] fraction of the images decided at each cascade exit."""
    n = max(self.stage.size, 1)
    return np.bincount(self.stage, minlength=len(self.exits)) / n

  def mean_cost(self, costs: Sequence[float]) -> float:
    """Mean per-image cost, costs [len(exits)] = GFLOPs of leaving at each cascade exit."""
    return float(np.mean(np.asarray(costs, np.float64)[self.stage])) if self.stage.size else 0.0


def _check_exits(exits: Sequence[int], depth: int) -> tuple[int, ...]:
  e = tuple(int(x) for x in exits)
  if not e or any(b <= a for a, b in zip(e, e[1:])) or e[0] < 1 or e[-1] != depth:
    raise ValueError(f"cascade exits must be 1-based, strictly increasing and end at the depth "
                     f"{depth}, got {list(exits)}")
  return e


def _f32(x) -> np.ndarray:
  return np.asarray(x, np.float64).astype(np.float32)


def simulate_cascade(exit_scores: np.ndarray, exits: Sequence[int], reject: Sequence[float],
                     accept: Sequence[float], tau: float) -> CascadeOutcome:
  """The cascade's per-image outcome on a full-pass exit matrix [N, L] (module docstring rule;
  thresholds compared as float32, as the engine does)."""
  s = np.asarray(exit_scores, np.float32)
  n, depth = s.shape
  e = _check_exits(exits, depth)
  rej_t, acc_t = _f32(reject), _f32(accept)
  if rej_t.shape != (len(e) - 1,) or acc_t.shape != (len(e) - 1,):
    raise ValueError(f"need {len(e) - 1} reject and accept thresholds for exits {list(e)}, got "
                     f"{rej_t.size} and {acc_t.size}")
  tau32 = _f32(tau)
  stage = np.full(n, len(e) - 1, np.int64)
  decided = np.zeros(n, bool)
  acc = np.zeros(n, bool)
  for i, ex in enumerate(e[:-1]):
    v = s[:, ex - 1]
    ok = ~decided & (v > acc_t[i])            # as the engine: accept wins if both held
    rej = ~decided & ~ok & (v < rej_t[i])     # (impossible with reject <= accept)
    stage[rej | ok] = i
    acc |= ok
    decided |= rej | ok
  full = s[:, -1] >= tau32
  acc = np.where(decided, acc, full)
  exit_left = np.asarray(e, np.int32)[stage]
  score = s[np.arange(n), exit_left - 1]
  return CascadeOutcome(score, exit_left, acc, stage, full, e)


@dataclasses.dataclass(frozen=True)
class CascadeCalibration:
  """Calibrated cascade thresholds and what they do on the calibration set."""
  exits: tuple[int, ...]
  reject: tuple[float, ...]
  accept: tuple[float, ...]
  tau: float
  target: float
  agreement: float                   # on the calibration set (>= target)
  disagreements: int
  budget: int                        # allowed disagreements, floor((1 - target)·N)
  allocation: tuple[int, ...]        # the budget split across the early exits
  mean_gflops: float                 # calibration set
  full_gflops: float                 # the full-depth program (exit L alone)
  fraction_per_exit: tuple[float, ...]
  num_images: int
  evaluations: int                   # budget splits tried

  @property
  def saved(self) -> float:
    """Fraction of the full-depth compute saved on the calibration set."""
    return 1.0 - self.mean_gflops / self.full_gflops if self.full_gflops > 0 else float("nan")

  def thresholds(self) -> dict[str, Any]:
    """exits / reject / accept / tau: the fields of exfiqa_jax.models.exits.CascadeThresholds."""
    return {"exits": self.exits, "reject": self.reject, "accept": self.accept, "tau": self.tau}

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["saved"] = self.saved
    return d


def _gap_threshold(u: np.ndarray, j: int, side: str) -> float:
  """A float32 threshold in the gap below group j (reject: exits groups < j via s < t;
  accept: exits groups >= j via s > t), midway between the neighbouring observed values."""
  n = u.size
  if side == "reject":
    if j == 0:
      return -math.inf
    if j == n:
      return math.inf
  else:
    if j == n:
      return math.inf
    if j == 0:
      return -math.inf
  lo, hi = np.float32(u[j - 1]), np.float32(u[j])
  mid = np.float32((np.float64(lo) + np.float64(hi)) / 2)
  if side == "reject":                     # need lo < t <= hi
    return float(mid if lo < mid <= hi else hi)
  return float(mid if lo <= mid < hi else lo)   # need lo <= t < hi


def _best_stage(v: np.ndarray, d: np.ndarray, allowed: int, margin: float = 0.0
                ) -> tuple[int, int, int, np.ndarray]:
  """(j_reject, k_accept, errors, distinct values): the cuts of one exit that let the most
  images leave with at most `allowed` disagreements. Groups of equal value are indivisible;
  reject takes groups [0, j), accept groups [k, n), j <= k. margin > 0 then keeps only the
  outer (1 - margin) of each region (the part farthest from the undecided middle)."""
  u, inv, cnt = np.unique(v, return_inverse=True, return_counts=True)
  pos = np.bincount(inv, weights=d.astype(np.float64), minlength=u.size).astype(np.int64)
  neg = cnt - pos
  err_r = np.concatenate([[0], np.cumsum(pos)])           # rejecting groups < j: accepted ones
  num_r = np.concatenate([[0], np.cumsum(cnt)])
  err_a = np.concatenate([np.cumsum(neg[::-1])[::-1], [0]])   # accepting groups >= k
  num_a = np.concatenate([np.cumsum(cnt[::-1])[::-1], [0]])
  j = np.flatnonzero(err_r <= allowed)
  left = allowed - err_r[j]
  k = np.maximum(np.searchsorted(-err_a, -left, side="left"), j)
  count = num_r[j] + num_a[k]
  errs = err_r[j] + err_a[k]
  best = np.lexsort((errs, -count))[0]            # most images out, then fewest errors
  jb, kb = int(j[best]), int(k[best])
  if margin > 0:
    n = u.size
    jb = int(math.floor(jb * (1.0 - margin)))
    kb = n - int(math.floor((n - kb) * (1.0 - margin)))
  return jb, kb, int(err_r[jb] + err_a[kb]), u


def _run_allocation(s: np.ndarray, full: np.ndarray, exits: tuple[int, ...], alloc: Sequence[int],
                    costs: np.ndarray, margin: float = 0.0
                    ) -> tuple[float, list[float], list[float]]:
  """Sequential per-exit search for one budget split: (mean cost, reject, accept)."""
  n = s.shape[0]
  alive = np.arange(n)
  carry = 0
  total = 0.0
  rej, acc = [], []
  for i, ex in enumerate(exits[:-1]):
    allowed = int(alloc[i]) + carry
    if alive.size == 0:
      rej.append(-math.inf)
      acc.append(math.inf)
      continue
    v = s[alive, ex - 1]
    j, k, errs, u = _best_stage(v, full[alive], allowed, margin)
    r_t, a_t = _gap_threshold(u, j, "reject"), _gap_threshold(u, k, "accept")
    if a_t < r_t:          # j == k in a gap of adjacent floats: keep reject <= accept (the
      a_t = r_t            # engine's rule); the group above the gap then runs on (safe side)
    rej.append(r_t)
    acc.append(a_t)
    leave = (v < np.float32(r_t)) | (v > np.float32(a_t))
    total += costs[i] * int(leave.sum())
    alive = alive[~leave]
    carry = allowed - errs
  total += costs[-1] * alive.size
  return total / max(n, 1), rej, acc


def _search_split(s: np.ndarray, full: np.ndarray, e: tuple[int, ...], budget: int,
                  c: np.ndarray, max_evaluations: int, margin: float = 0.0
                  ) -> tuple[float, tuple[int, ...], list[float], list[float], int]:
  """Coordinate search over the budget split of one exit set: (mean cost, split, reject,
  accept, splits tried)."""
  k = len(e) - 1
  if k == 0:
    return float(c[-1]), (), [], [], 1
  cache: dict[tuple[int, ...], tuple[float, list[float], list[float]]] = {}

  def cost(alloc: tuple[int, ...]) -> float:
    if alloc not in cache:
      cache[alloc] = _run_allocation(s, full, e, alloc, c, margin)
    return cache[alloc][0]

  starts = [tuple(budget if i == j else 0 for i in range(k)) for j in range(k)]
  starts.append(tuple(budget // k + (1 if i < budget % k else 0) for i in range(k)))
  best = min(starts, key=lambda a: (cost(a), a))
  step = max(budget // 2, 1)
  while budget > 0 and len(cache) < max_evaluations:
    improved = False
    for src in range(k):
      for dst in range(k):
        if src == dst or best[src] < step or len(cache) >= max_evaluations:
          continue
        cand = list(best)
        cand[src] -= step
        cand[dst] += step
        cand = tuple(cand)
        if cost(cand) < cost(best) - 1e-12:
          best, improved = cand, True
    if not improved:
      if step == 1:
        break
      step //= 2
  mean, rej, acc = cache[best]
  return mean, best, rej, acc, len(cache)


def _exit_subsets(e: tuple[int, ...], exhaustive_upto: int = 6):
  """Every subset of the early exits (the last one always kept) for up to `exhaustive_upto`
  early exits; else None (the caller eliminates greedily)."""
  early = e[:-1]
  if len(early) > exhaustive_upto:
    return None
  out = []
  for mask in range(1 << len(early)):
    out.append(tuple(x for i, x in enumerate(early) if mask >> i & 1) + (e[-1],))
  return out


def calibrate_cascade(exit_scores: np.ndarray, exits: Sequence[int], tau: float,
                      target: float = 0.99,
                      costs: Sequence[float] | Callable[[tuple[int, ...]], Sequence[float]]
                      | None = None, full_cost: float | None = None, prune_exits: bool = True,
                      max_evaluations: int = 4000, margin: float = 0.0) -> CascadeCalibration:
  """Per-exit reject/accept thresholds that minimise the mean cost subject to agreement with the
  full-depth decision (s_L >= tau) >= target on this calibration matrix [N, L].

  costs: GFLOPs per image of leaving at each cascade exit — a sequence for `exits`, or a function
  exits -> that sequence (e.g. the engine's cascade_gflops), which also lets the calibration drop
  early exits that do not pay for their head (prune_exits: every subset of up to 6 early exits,
  else greedy elimination; the returned `exits` are the ones kept). Default: the exit's block
  count. full_cost: the full-depth program's GFLOPs (default the cost of leaving at the last
  exit with no early exit), the reference for the compute saved. margin in [0, 1]: keep only
  the outer (1 - margin) of every early-decision region (more conservative; 1 = no early exit;
  robust_cascade chooses it). Algorithm: module docstring.
  """
  s = np.asarray(exit_scores, np.float32)
  if s.ndim != 2 or s.shape[0] == 0:
    raise ValueError(f"exit_scores must be [N, L] with N > 0, got shape {s.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError("exit_scores contain NaN/inf")
  n, depth = s.shape
  e = _check_exits(exits, depth)
  if not 0.0 < float(target) <= 1.0:
    raise ValueError(f"target agreement must be in (0, 1], got {target}")

  def cost_of(ex: tuple[int, ...]) -> np.ndarray:
    if costs is None:
      c = np.asarray(ex, np.float64)
    elif callable(costs):
      c = np.asarray(costs(ex), np.float64)
    else:
      if ex != e:
        raise ValueError("fixed costs describe only the given exits")
      c = np.asarray(costs, np.float64)
    if c.shape != (len(ex),):
      raise ValueError(f"costs must have one entry per cascade exit ({len(ex)}), got {c.shape}")
    return c

  fixed_costs = costs is not None and not callable(costs)
  if full_cost is None:
    full_cost = cost_of(e)[-1] if fixed_costs else cost_of((depth,))[-1]
  full_cost = float(full_cost)
  full = s[:, -1] >= _f32(tau)
  budget = int(math.floor((1.0 - float(target)) * n + 1e-9))
  per_eval = max(1, max_evaluations // max(1, 2 ** min(len(e) - 1, 6)))
  tried: dict[tuple[int, ...], tuple] = {}

  def solve(ex: tuple[int, ...]):
    if ex not in tried:
      c = cost_of(ex)
      tried[ex] = (*_search_split(s, full, ex, budget, c, per_eval, margin), c)
    return tried[ex]

  subsets = _exit_subsets(e) if prune_exits and not fixed_costs else [e]
  if subsets is None:                       # many exits: greedy backward elimination
    current = e
    while True:
      options = [current] + [tuple(x for x in current if x != drop) for drop in current[:-1]]
      nxt = min(options, key=lambda ex: (solve(ex)[0], -len(ex)))
      if nxt == current:
        break
      current = nxt
    subsets = [current]
  best = min(subsets, key=lambda ex: (solve(ex)[0], -len(ex)))
  _, alloc, rej, acc, evals, c = solve(best)
  out = simulate_cascade(s, best, rej, acc, tau)
  if out.disagreements > budget:             # cannot happen: the search counts exactly
    raise AssertionError(f"cascade calibration exceeded its budget ({out.disagreements} > "
                         f"{budget}); please report this")
  return CascadeCalibration(
      best, tuple(rej), tuple(acc), float(tau), float(target), out.agreement,
      out.disagreements, budget, tuple(int(x) for x in alloc), out.mean_cost(c), full_cost,
      tuple(float(x) for x in out.fraction_per_exit()), n,
      sum(t[4] for t in tried.values()))


@dataclasses.dataclass(frozen=True)
class RobustCalibration:
  """calibrate_cascade with its conservativeness chosen by grouped cross-validation."""
  calibration: CascadeCalibration    # fitted on the whole calibration set with the choice
  target: float
  internal_target: float             # the agreement target the final fit used (>= target)
  margin: float
  cv_agreement: float                # out-of-fold agreement of the choice (estimate for new data)
  cv_saved: float                    # out-of-fold compute saved
  folds: int
  tried: tuple[tuple[float, float, float, float], ...]   # (internal target, margin, cv agreement,
                                                         #  cv saved) in the order tried

  def to_dict(self) -> dict[str, Any]:
    return {**self.calibration.to_dict(), "internal_target": self.internal_target,
            "margin": self.margin, "cv_agreement": self.cv_agreement, "cv_saved": self.cv_saved,
            "folds": self.folds, "tried": [list(t) for t in self.tried]}


def robust_cascade(exit_scores: np.ndarray, exits: Sequence[int], tau: float,
                   target: float = 0.99, costs: Sequence[float] | Callable | None = None,
                   full_cost: float | None = None, groups: np.ndarray | None = None,
                   folds: int = 5, seed: int = 0, prune_exits: bool = True,
                   memo: dict | None = None) -> RobustCalibration:
  """calibrate_cascade made to generalise: thresholds set exactly at the calibration data's
  edges are optimistic on new images (more so when images cluster by identity), so the
  conservativeness is chosen by K-fold cross-validation over `groups` (identities; default each
  image its own group). Settings are tried from the most to the least aggressive — the internal
  target t, 1 - (1 - t)/2, /4, /8, 1 (no disagreement allowed), then at 1 the margins
  MARGINS (each region trimmed to its outer part) — and the first whose out-of-fold agreement reaches `target` is refitted on all of
  `exit_scores` (whose agreement is then >= target too). None reaching it: no early exit.
  `memo` (a dict) shares the out-of-fold runs between calls on the same data (several targets).
  """
  s = np.asarray(exit_scores, np.float32)
  n = s.shape[0]
  groups = np.arange(n) if groups is None else np.asarray(groups)
  uniq, inverse = np.unique(groups, return_inverse=True)
  k = max(2, min(int(folds), uniq.size))
  fold = np.random.default_rng([int(seed), 0xC5F]).permutation(uniq.size)[inverse] % k
  memo = {} if memo is None else memo
  t = float(target)
  ladder = [(1.0 - (1.0 - t) / 2 ** i, 0.0) for i in range(4)] + [(1.0, m) for m in MARGINS]
  full_depth = (s.shape[1],)

  def cost_of(ex):
    if costs is None:
      return np.asarray(ex, np.float64)
    return np.asarray(costs(ex) if callable(costs) else costs, np.float64)

  ref = float(cost_of(full_depth)[-1] if full_cost is None else full_cost)
  tried = []
  for internal, margin in ladder:
    key = (round(internal, 12), margin)
    if key not in memo:
      agree, spent = 0, 0.0
      for f in range(k):
        train, test = fold != f, fold == f
        c = calibrate_cascade(s[train], exits, tau, internal, costs, full_cost, prune_exits,
                              margin=margin)
        out = simulate_cascade(s[test], c.exits, c.reject, c.accept, tau)
        agree += int(np.sum(out.accept == out.full_accept))
        spent += out.mean_cost(cost_of(c.exits)) * int(test.sum())
      memo[key] = (agree / n, 1.0 - spent / n / ref)
    cv_agree, cv_saved = memo[key]
    tried.append((internal, margin, cv_agree, cv_saved))
    if cv_agree >= t:
      final = calibrate_cascade(s, exits, tau, internal, costs, full_cost, prune_exits,
                                margin=margin)
      return RobustCalibration(final, t, internal, margin, cv_agree, cv_saved, k, tuple(tried))
  final = calibrate_cascade(s, exits, tau, 1.0, costs, full_cost, prune_exits, margin=1.0)
  return RobustCalibration(final, t, 1.0, 1.0, 1.0, final.saved, k, tuple(tried))
