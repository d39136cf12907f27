"""The EDC rule, stated once (docs/evaluation.md): checks, discard cuts, both threshold rules and
the exact stepwise pAUC.

Two conventions:
  mode="fiqa"  CR-FIQA ERC code behind the published FIQA numbers (§5.1, §6, §7.1): genuine and
               impostor pairs pooled, the first int(r·N) pairs of a STABLE ascending sort of pair
               quality discarded, the threshold re-chosen at every level among the observed scores
               as the one whose FMR is closest to the target (first = lowest on ties), a genuine is
               accepted iff its score is strictly above it; pAUC = trapezoid, raw.
  mode="iso"   Schlett / ISO style (§5.2, §6, §7.2): genuine comparisons only, threshold fixed once
               from all impostors (smallest t with #{imp >= t}/N <= f), error iff s < t, whole tie
               groups discarded; pAUC stepwise, optionally minus the theoretical best.

Two engines evaluate it: the exact EDC (edc.py: every pair counted once, by histogram passes)
and the bootstrap (bootstrap.py: a resample is an integer multiplicity per pair, counted as
weighted sequences). Their counting differs for speed; the rule does not. Everything here takes
copy counts, so the unweighted EDC is the case "every weight 1": `fiqa_stats` takes the
engine's kept-copy counts, `iso_levels` and `step_pauc` the copies before each genuine
position (0, 1, 2, ... unweighted).

Exactness. Everything is integer counting, except the final choice between the two candidate
FMR counts nearest the target, |m/N - f|, which the published code makes in float64: on concrete
inputs `fiqa_decide` makes it in float64 on the host, so the result equals the published rule bit
for bit. Under jit/vmap (tracers) it is made on device (float64 if jax_enable_x64, else float32:
only exact decimal ties such as f·N_imp = x.5 may then resolve differently), and the iso rank and
the discard counts of device counts are computed in float32. Scores and qualities are float32.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax.metrics.arrays import (cummax_last, cummin_last, row_searchsorted,
                                       sortable_keys, stable_order)

FIQA_DISCARD = np.arange(0, 0.98, 0.05)   # 0, 0.05, ..., 0.95: CR-FIQA's grid, values as np makes them
PAUC_LIMIT = 0.3                           # ViT-/EX-/ATTN-FIQA pAUC-EDC limit
MODES = ("fiqa", "iso")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES} ('fiqa' reproduces the FIQA papers), got {mode!r}")
  return mode


def check_discard(discard) -> np.ndarray:
  """The discard grid [R] as float64 fractions in [0, 1) (any order)."""
  d = np.asarray(discard, np.float64)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"discard must be a non-empty 1-D grid of fractions, got shape {d.shape}")
  if not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(d >= 1):
    raise ValueError(f"discard fractions must lie in [0, 1) (1.0 would discard everything), got "
                     f"min {np.nanmin(d)}, max {np.nanmax(d)}; use e.g. edc.FIQA_DISCARD")
  return d


def check_fmrs(fmrs) -> np.ndarray:
  """Target FMRs [F] as float64 in (0, 1)."""
  f = np.atleast_1d(np.asarray(fmrs, np.float64))
  if f.ndim != 1 or f.size == 0 or not np.all((f > 0) & (f < 1)):
    raise ValueError(f"fmrs must be target false-match rates in (0, 1), got {fmrs!r}")
  return f


def validate_pairs(scores, is_genuine, pair_quality
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Concrete inputs → (scores [P] f32, is_genuine [P] bool, pair_quality [S, P] f32), or
  ValueError naming what is wrong."""
  scores, is_genuine, pq = np.asarray(scores), np.asarray(is_genuine), np.asarray(pair_quality)
  if scores.ndim != 1:
    raise ValueError(f"scores must be 1-D [P], got shape {scores.shape}")
  if pq.ndim == 1:
    pq = pq[None]
  if pq.ndim != 2:
    raise ValueError(f"pair_quality must be [S, P] (or [P]), got shape {pq.shape}")
  if is_genuine.shape != scores.shape or pq.shape[1] != scores.shape[0]:
    raise ValueError(f"mismatched lengths: scores {scores.shape}, is_genuine {is_genuine.shape}, "
                     f"pair_quality {pq.shape} (all must describe the same P pairs)")
  if is_genuine.dtype != bool:
    if not np.all((is_genuine == 0) | (is_genuine == 1)):
      raise ValueError("is_genuine must be boolean (or 0/1 labels)")
    is_genuine = is_genuine.astype(bool)
  scores = scores.astype(np.float32, copy=False)
  if not np.all(np.isfinite(scores)):
    bad = int(np.sum(~np.isfinite(scores)))
    raise ValueError(f"scores contain {bad} NaN/inf values; drop or fix those pairs first")
  pq = pq.astype(np.float32, copy=False)
  # x·0 is 0 for finite x and NaN for NaN/inf: one fast BLAS pass per set instead of isfinite.
  with np.errstate(invalid="ignore"):
    probe = pq @ np.zeros(pq.shape[1], np.float32)
  if not np.all(np.isfinite(probe)):
    rows = np.flatnonzero(~np.isfinite(probe)).tolist()
    raise ValueError(f"pair_quality contains NaN/inf (quality sets {rows[:10]}); every pair needs a "
                     f"finite quality")
  n_gen = int(is_genuine.sum())
  if n_gen == 0:
    raise ValueError("no genuine (mated) pairs: is_genuine is all False")
  if n_gen == scores.shape[0]:
    raise ValueError("no impostor (non-mated) pairs: is_genuine is all True")
  return scores, is_genuine, pq


def score_order(scores: np.ndarray, is_genuine: np.ndarray) -> np.ndarray:
  """Pair index at each position of the comparison-score order shared by every quality set:
  impostors by DESCENDING score, then genuines by ascending score (ties by index)."""
  key = sortable_keys(scores)
  return stable_order(np.where(is_genuine, key, ~key), np.asarray(is_genuine, bool))


def given_score_order(scores: np.ndarray, is_genuine: np.ndarray,
                      given: np.ndarray | None) -> np.ndarray:
  """`given` (a caller's score_order of these comparisons, checked) or the order computed now."""
  if given is None:
    return score_order(scores, is_genuine)
  given = np.asarray(given, np.int32)
  if given.shape != scores.shape:
    raise ValueError(f"score_perm has shape {given.shape}, expected {scores.shape}: pass "
                     "score_order(scores, is_genuine) of the same comparisons")
  return given


def cuts_for(discard, n):
  """Copies discarded at each level: int(r·n) for every r, exactly as Python/NumPy float64 does
  it (docs/evaluation.md); discard and n broadcast. A device count n (the traced path): float32,
  on device."""
  if isinstance(n, jax.Array):
    return jnp.floor(jnp.asarray(discard, jnp.float32) * n.astype(jnp.float32)).astype(jnp.int32)
  return (np.asarray(discard, np.float64) * n).astype(np.int64)


# --------------------------------------------------------------------------------------------
# FIQA: the threshold re-chosen at every level (docs/evaluation.md §6)
# --------------------------------------------------------------------------------------------
class FiqaStats(NamedTuple):
  """The candidates of the FIQA rule at every level, before the choice (`fiqa_decide`)."""
  m: jnp.ndarray         # [R, F, C] candidate FM counts (kept impostor copies with s >= u*)
  valid: jnp.ndarray     # [R, F, C]
  ustar: jnp.ndarray     # [R, F, C] threshold for that candidate
  accepted: jnp.ndarray  # [R, F, C] kept genuine copies with s > u*
  n_imp: jnp.ndarray     # [R] kept impostor copies
  n_gen: jnp.ndarray     # [R] kept genuine copies


class Candidates(NamedTuple):
  """Flat candidates q = (level k, FMR f, candidate c), row-major over [R, F, 6]."""
  m: jnp.ndarray         # [Q] FM count: kept impostor copies with score >= u*
  k: jnp.ndarray         # [Q] discard level
  n_imp: jnp.ndarray     # [Q] kept impostor copies at level k
  has_b: jnp.ndarray     # [Q] m < n_imp: an (m+1)-th largest kept impostor copy exists
  b_pos: jnp.ndarray     # [Q] its position in the impostor order
  b: jnp.ndarray         # [Q] its score (-inf when none): u* must lie above it
  has_prev: jnp.ndarray  # [Q] m >= 1
  prev_pos: jnp.ndarray  # [Q] position of the m-th largest kept impostor copy
  prev: jnp.ndarray      # [Q] its score (+inf when none): u* <= prev keeps all m


class FiqaCounts(NamedTuple):
  """What the FIQA rule reads from a counting engine (weighted or not), over the impostors in
  descending score order (positions 0..I-1), at discard level k.

  select(rank [Q], k [Q]) → position of kept impostor copy number `rank` (0-based)
  count_before(x [Q], k [Q]) → kept impostor copies at positions < x
  genuine_min_above(c: Candidates) → (smallest kept genuine score > c.b or +inf, aux)
  genuine_count_above(u [Q], gmin [Q], c, aux) → kept genuine copies with score > u
  """
  n_imp: jnp.ndarray          # [R] kept impostor copies per level
  n_gen: jnp.ndarray          # [R] kept genuine copies per level
  imp_scores: jnp.ndarray     # [I] impostor scores, descending
  gstart: jnp.ndarray         # [I] first position of the score tie group
  gend: jnp.ndarray           # [I] one past its last position
  select: Callable
  count_before: Callable
  genuine_min_above: Callable
  genuine_count_above: Callable


def fiqa_candidates(counts: FiqaCounts, fmrs: jnp.ndarray) -> Candidates:
  """The FM counts the nearest-FMR choice can pick: the ends of the score tie groups of the
  kept impostor copies ranked floor(f·N) - 1, floor(f·N), floor(f·N) + 1 (a threshold is an
  observed score, so FM(u) jumps at tie-group ends), with the scores bracketing each count."""
  n_imp = counts.n_imp
  r, f_n = n_imp.shape[0], fmrs.shape[0]
  kk = jnp.broadcast_to(jnp.arange(r)[:, None, None], (r, f_n, 3)).reshape(-1)
  n_k = n_imp[kk]
  tgt = fmrs.astype(jnp.float32)[None, :, None] * n_imp.astype(jnp.float32)[:, None, None]
  j = jnp.floor(jnp.broadcast_to(tgt, (r, f_n, 3))).astype(jnp.int32).reshape(-1)
  rho = jnp.clip(j + jnp.tile(jnp.array([-1, 0, 1], jnp.int32), r * f_n), 0,
                 jnp.maximum(n_k - 1, 0))
  pos = counts.select(rho, kk)
  q1 = rho.shape[0]
  lohi = counts.count_before(jnp.concatenate([counts.gstart[pos], counts.gend[pos]]),
                             jnp.concatenate([kk, kk]))
  m = jnp.stack([lohi[:q1], lohi[q1:]], -1).reshape(-1)                  # [R·F·6]
  k = jnp.broadcast_to(jnp.arange(r)[:, None, None], (r, f_n, 6)).reshape(-1)
  nc = n_imp[k]
  q = m.shape[0]
  both = counts.select(jnp.concatenate([jnp.minimum(m, nc - 1), jnp.maximum(m - 1, 0)]),
                       jnp.concatenate([k, k]))
  has_b, has_prev = m < nc, m >= 1
  b = jnp.where(has_b, counts.imp_scores[both[:q]], -jnp.inf)
  prev = jnp.where(has_prev, counts.imp_scores[both[q:]], jnp.inf)
  return Candidates(m, k, nc, has_b, both[:q], b, has_prev, both[q:], prev)


def fiqa_stats(counts: FiqaCounts, fmrs: jnp.ndarray) -> FiqaStats:
  """Every candidate's threshold and counts: u* = min(smallest kept genuine score above b,
  prev), the lowest observed score that keeps exactly m impostor copies at or above it."""
  c = fiqa_candidates(counts, fmrs)
  gmin, aux = counts.genuine_min_above(c)
  ustar = jnp.minimum(gmin, c.prev)
  accepted = counts.genuine_count_above(ustar, gmin, c, aux)
  valid = (c.n_imp > 0) & ((c.m >= 1) | (gmin < jnp.inf))
  shape = (counts.n_imp.shape[0], fmrs.shape[0], 6)
  return FiqaStats(*(x.reshape(shape) for x in (c.m, valid, ustar, accepted)), counts.n_imp,
                   counts.n_gen)


def fiqa_decide(xp: Any, st: FiqaStats, fmrs) -> tuple[Any, Any]:
  """Choose the FM count closest to the target (ties: larger count = lower threshold) → fnmr,
  threshold [..., F, R]; float64 on the host (numpy), see the module docstring under jit."""
  dt = xp.float64 if xp is np or jax.config.jax_enable_x64 else xp.float32
  m = st.m.astype(dt)
  n = st.n_imp.astype(dt)[..., :, None, None]
  f = xp.asarray(fmrs, dt)[:, None]
  ratio = xp.where(n > 0, m / xp.where(n > 0, n, 1), xp.nan)   # no impostor left: NaN, silently
  dist = xp.where(st.valid, xp.abs(ratio - f), xp.inf)
  best = dist == xp.min(dist, axis=-1, keepdims=True)
  choice = xp.argmax(xp.where(best & st.valid, st.m, -1), axis=-1)[..., None]
  acc = xp.take_along_axis(st.accepted, choice, -1)[..., 0].astype(dt)
  thr = xp.take_along_axis(st.ustar, choice, -1)[..., 0]
  ng = st.n_gen.astype(dt)[..., :, None]
  ok = (st.n_gen[..., :, None] > 0) & xp.any(st.valid, axis=-1)
  fnmr = xp.where(ok, 1.0 - acc / xp.where(ng > 0, ng, 1), xp.nan)
  return xp.swapaxes(fnmr, -1, -2), xp.swapaxes(xp.where(ok, thr, xp.nan), -1, -2)


# --------------------------------------------------------------------------------------------
# ISO: one fixed threshold, genuine pairs only, whole quality tie groups (docs/evaluation.md §5.2)
# --------------------------------------------------------------------------------------------
def iso_rank(fmrs, n_imp):
  """K_f = floor(f·N_imp) [..., F]: the threshold is set just above the (K_f+1)-th largest
  impostor copy. n_imp [...] (float64 on the host; a device count: float32, on device)."""
  if isinstance(n_imp, jax.Array):
    return jnp.floor(jnp.asarray(fmrs, jnp.float32) * n_imp.astype(jnp.float32)).astype(jnp.int32)
  return np.floor(np.asarray(fmrs, np.float64) * np.asarray(n_imp)[..., None]).astype(np.int64)


def iso_threshold(v):
  """t = the next float32 above v, the (K+1)-th largest impostor copy: the smallest t with
  #{impostors >= t} <= K, so an error iff s < t."""
  xp = jnp if isinstance(v, jax.Array) else np
  return xp.nextafter(xp.asarray(v, xp.float32), xp.float32(xp.inf))


def suffix_counts(xp: Any, x, dtype) -> Any:
  """[..., G] → [..., G+1]: sum of x over positions >= i (0 past the end)."""
  s = xp.flip(xp.cumsum(xp.flip(x, -1), axis=-1, dtype=dtype), -1)
  return xp.concatenate([s, xp.zeros(s.shape[:-1] + (1,), s.dtype)], axis=-1)


def iso_levels(xp: Any, start, before, dcount, suffix, n):
  """Whole-tie-group discard of genuine copies in stable ascending quality order.

  start [..., G] first position of each quality tie group; before [..., G] copies before each
  position (unweighted: 0, 1, 2, ...); dcount [..., R] = int(r·N_gen) (cuts_for); suffix
  [..., F, G+1] errors at positions >= i (suffix_counts); n [...] all genuine copies. The
  largest whole-group discard <= dcount → errors [..., F, R] and kept copies [..., R]."""
  last_start = cummax_last(xp, xp.where(start, before, 0))
  gstar = row_searchsorted(xp, before, dcount, "right") - 1              # last before <= dcount
  d = xp.take_along_axis(last_start, xp.maximum(gstar, 0), axis=-1)      # copies discarded
  first = row_searchsorted(xp, before, d, "left")                          # first before >= d
  idx = xp.broadcast_to(first[..., None, :], suffix.shape[:-1] + first.shape[-1:])
  return xp.take_along_axis(suffix, idx, axis=-1), xp.asarray(n)[..., None] - d


def step_pauc(xp: Any, suffix, start, before, n, limit: float):
  """Exact stepwise pAUC (Schlett compute_edc_pauc) of the full ISO step curve, final point
  (1, 0): a step at every quality tie group, at x = copies discarded / N, height = errors
  among the kept copies / kept copies. suffix [..., F, G+1], start [..., G], before [..., G]
  (or [G]), n [...] → [..., F]. n = 0 gives a meaningless value: the caller masks it."""
  dt = xp.float64 if xp is np or jax.config.jax_enable_x64 else xp.float32
  g = start.shape[-1]
  n = xp.asarray(n)[..., None]
  nf = n.astype(dt)
  denom = xp.maximum(nf, 1)
  x = before.astype(dt) / denom
  end = xp.maximum(n, g)                                                   # past every position
  nxt = xp.flip(cummin_last(xp, xp.flip(xp.where(start, before, end), -1)), -1)
  nxt = xp.concatenate([nxt[..., 1:], xp.broadcast_to(end, nxt.shape[:-1] + (1,))], axis=-1)
  x_next = xp.where(nxt < nf, nxt.astype(dt) / denom, 1.0)
  e = suffix[..., :g].astype(dt) / xp.maximum(nf - before, 1)[..., None, :]
  width = xp.where(start & (x < limit), xp.maximum(xp.minimum(x_next, limit) - x, 0.0), 0.0)
  return xp.sum(e * width[..., None, :], axis=-1)
