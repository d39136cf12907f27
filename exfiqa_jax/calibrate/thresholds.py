"""Quality thresholds picked on a reference set, each with a seeded percentile-bootstrap interval.

What a user of a FIQA model asks first is "which threshold do I use?" (docs/evaluation.md,
"Early exits and thresholds"). Plain NumPy on host arrays; the pair-based picker calls the EDC
engine (exfiqa_jax.metrics.edc).
  * `discard_threshold(quality, fraction)`: the quality value t such that discarding the images
    with quality < t removes `fraction` of the reference set — the FIQA rule of the EDC
    (first int(fraction·N) of the ascending sort; docs/evaluation.md). t is an observed value, so
    a decision "accept iff q >= t" is exact in float32. With ties at the cut the whole tie group
    is kept (a threshold cannot split it), so the fraction removed is <= int(fraction·N)/N.
  * `fnmr_thresholds(scores, is_genuine, pair_quality, targets, fmr)` (`fnmr_threshold` for
    one): the smallest discard level of a fine grid at which the EDC (`fiqa` or `iso` mode)
    reaches FNMR <= target at the FMR, and the pair-quality value of that cut (pair quality = min
    of the two image qualities, so the same t applies to single images); the interval from a
    stratified bootstrap of the pairs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from exfiqa_jax.metrics import bootstrap, edc, edc_rule


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
  """int(fraction·n) in float64: the EDC's discard cut (edc_rule.cuts_for)."""
  return int(edc_rule.cuts_for(fraction, n))


def _check_fraction(fraction: float) -> float:
  f = float(fraction)
  if not 0.0 <= f < 1.0:
    raise ValueError(f"discard fraction must be in [0, 1), got {fraction}")
  return f


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
  """The percentile interval (bootstrap.percentile_ci) of the finite bootstrap values, as floats:
  a resample that never reached its target gives NaN, left out like any ±inf."""
  x = np.asarray(samples, np.float64)
  low, high = bootstrap.percentile_ci(x[np.isfinite(x)], alpha)
  return float(low), float(high)


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
