"""EDC (error-versus-discard characteristic), pAUC and bootstrap CIs on device (docs/evaluation.md).

Two conventions (docs/evaluation.md):
  mode="fiqa"  CR-FIQA ERC code behind the published FIQA numbers (§5.1, §6, §7.1): genuine and
               impostor pairs pooled, the first int(r·N) pairs of a STABLE ascending sort of pair
               quality discarded, the threshold re-chosen at every level among the observed scores
               as the one whose FMR is closest to the target (first = lowest on ties), a genuine is
               accepted iff its score is strictly above it; pAUC = trapezoid, raw.
  mode="iso"   Schlett / ISO style (§5.2, §6, §7.2): genuine comparisons only, threshold fixed once
               from all impostors (smallest t with #{imp >= t}/N <= f), error iff s < t, whole tie
               groups discarded; pAUC stepwise, optionally minus the theoretical best.

Scale (IJB-C: 15.7M pairs, 26 quality sets). A sort per quality set and level is what makes the
published code slow; here the impostor scores are sorted ONCE per call (shared by every quality
set; on the host, one NumPy sort of packed 64-bit keys, ~10x a key-value sort under XLA on the
CPU), and per quality set only histogram passes run: a radix selection finds the quality cut of
every level (the kept sets are nested, so one int per pair, `level`, says up to which level it is
kept), one scatter builds per-level kept counts per block of the score order, and the few order
statistics the threshold rule needs are read from one block each. Genuine pairs are few and are
handled directly. Cost O(N log N) once + O(N) per quality set; memory O(N).

Bootstrap (`bootstrap`, `pauc_ci`; docs/evaluation.md, "Bootstrap"): a resample is an integer
multiplicity per pair, drawn by pair, identity or template (`multiplicities`), and evaluated
exactly as the plain EDC of the resampled pair list, but with weighted counts over the shared
score order and one quality order per set: no sort and no pair list per resample.

Exactness. Everything is integer counting, except the final choice between the two candidate
FMR counts nearest the target, |m/N - f|, which the published code makes in float64. The public
functions take concrete arrays, validate them and make that choice in float64 on the host, so the
result equals the published rule bit for bit. Under jit/vmap (tracers) the same device kernels run
and the choice is made on device (float64 if jax_enable_x64, else float32: only exact decimal ties
such as f·N_imp = x.5 may then resolve differently). Scores and qualities are used as float32.
"""
from __future__ import annotations

import collections
import functools
import math
import warnings
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

FIQA_DISCARD = np.arange(0, 0.98, 0.05)   # 0, 0.05, ..., 0.95: CR-FIQA's grid, values as np makes them
PAUC_LIMIT = 0.3                           # ViT-/EX-/ATTN-FIQA pAUC-EDC limit
MODES = ("fiqa", "iso")
_BLOCK = 1024          # block of the impostor score order for the per-level count tables
_TIE_BLOCK = 4096      # block of the pair index for splitting a quality tie group


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
class EdcCurves(NamedTuple):
  """All numbers of one EDC evaluation. Arrays are numpy (jax arrays under tracing).

  fnmr       [S, F, R]  FNMR at each (quality set, FMR, discard level)
  threshold  [S, F, R]  comparison-score threshold used (fiqa: u*, accept iff s > u*;
                        iso: t, accept iff s >= t, the same for every level)
  n_genuine  [S, R]     genuine pairs kept at the level
  n_impostor [S, R]     fiqa: impostor pairs kept; iso: impostors the fixed threshold came from
  discarded  [S, R]     fraction really discarded (fiqa: int(r·N)/N of all pairs; iso: of genuine
                        pairs, the largest whole-tie-group discard <= r·N_gen)
  pauc       [S, F] or None  when edc_curves(pauc_limit=...) was given (iso: exact step curve)
  """
  mode: str
  fmrs: Any
  discard: Any
  fnmr: Any
  threshold: Any
  n_genuine: Any
  n_impostor: Any
  discarded: Any
  pauc: Any = None

  def rows(self, benchmark: str, fr_model: str, quality_names: Sequence[str]) -> list[dict]:
    """Rows for edc.csv: benchmark, fr_model, quality, fmr, discard, fnmr, threshold, n_genuine,
    n_impostor (docs/evaluation.md, Output files)."""
    if len(quality_names) != self.fnmr.shape[0]:
      raise ValueError(f"{len(quality_names)} quality names for {self.fnmr.shape[0]} quality sets")
    out = []
    for s, name in enumerate(quality_names):
      for f, fmr in enumerate(np.asarray(self.fmrs)):
        for r, disc in enumerate(np.asarray(self.discard)):
          out.append(dict(benchmark=benchmark, fr_model=fr_model, quality=name, fmr=float(fmr),
                          discard=float(disc), fnmr=float(self.fnmr[s, f, r]),
                          threshold=float(self.threshold[s, f, r]),
                          n_genuine=int(self.n_genuine[s, r]),
                          n_impostor=int(self.n_impostor[s, r])))
    return out


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _is_tracer(*xs) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in xs)


def _canon(x: jnp.ndarray) -> jnp.ndarray:
  """float32 with -0.0 folded into +0.0 (np.sort/np.unique treat them as equal)."""
  x = jnp.asarray(x, jnp.float32)
  return jnp.where(x == 0, jnp.float32(0), x)


def _sortable(x: jnp.ndarray) -> jnp.ndarray:
  """float32 → uint32 whose unsigned order is the float order."""
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  neg = (bits >> 31) == 1
  return jnp.where(neg, ~bits, bits | jnp.uint32(0x80000000))


def _count_le(sorted_rows: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
  """Row-wise searchsorted(side='right'): #{row entries <= value}. rows [Q, n], values [Q]."""
  return jnp.sum(sorted_rows <= values[:, None], axis=1, dtype=jnp.int32)


def cuts_for(discard: np.ndarray, n: int) -> np.ndarray:
  """int(r·n) for every r, exactly as Python/NumPy float64 does it (docs/evaluation.md)."""
  return (np.asarray(discard, np.float64) * n).astype(np.int64)


def check_discard(discard) -> np.ndarray:
  d = np.asarray(discard, np.float64)
  if d.ndim != 1 or d.size == 0:
    raise ValueError(f"discard must be a non-empty 1-D grid of fractions, got shape {d.shape}")
  if not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(d >= 1):
    raise ValueError(f"discard fractions must lie in [0, 1) (1.0 would discard everything), got "
                     f"min {np.nanmin(d)}, max {np.nanmax(d)}; use e.g. edc.FIQA_DISCARD")
  return d


def check_fmrs(fmrs) -> np.ndarray:
  f = np.atleast_1d(np.asarray(fmrs, np.float64))
  if f.ndim != 1 or f.size == 0 or not np.all((f > 0) & (f < 1)):
    raise ValueError(f"fmrs must be target false-match rates in (0, 1), got {fmrs!r}")
  return f


def _validate(scores, is_genuine, pair_quality):
  """Concrete inputs → (scores [P] f32, is_genuine [P] bool, pair_quality [S, P] f32), or ValueError."""
  scores = np.asarray(scores)
  is_genuine = np.asarray(is_genuine)
  pq = np.asarray(pair_quality)
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


# --------------------------------------------------------------------------------------------
# Shared preparation: the impostor score order (one sort per call, shared by all quality sets)
# --------------------------------------------------------------------------------------------
class _Prep(NamedTuple):
  scores: jnp.ndarray      # [P] canonical f32
  perm: jnp.ndarray        # [Ppad] pair index at each position of the order (impostors by score desc, then genuines)
  sorted_s: jnp.ndarray    # [Ppad] scores in that order
  gstart: jnp.ndarray      # [Ppad] first position of the score tie group
  gend: jnp.ndarray        # [Ppad] one past the last position of the tie group
  block_of: jnp.ndarray    # [P] block of the pair in the order (impostors), nb for genuines
  n_imp: jnp.ndarray       # [] int32
  gen_idx: jnp.ndarray     # [G] genuine pair indices (P = padding)
  gen_valid: jnp.ndarray   # [G]
  n_gen: jnp.ndarray       # [] int32
  gen_overflow: jnp.ndarray  # [] bool: more genuines than G slots (traced path only)


def _np_sortable(x: np.ndarray) -> np.ndarray:
  """Host twin of _sortable(_canon(x)): float32 → uint32 in float order, -0.0 == +0.0."""
  x = np.asarray(x, np.float32)
  bits = np.where(x == 0, np.float32(0), x).view(np.uint32)
  return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))


def _np_order(key32: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
  """Stable ascending order of (group, key32) with ties by index: ONE np.sort of packed uint64
  keys (unique keys, so any sort is stable; NumPy's vectorised sort makes this ~10x faster than
  a key-value sort under XLA on the CPU: docs/evaluation.md, "Speed"). P < 2^31."""
  n = key32.shape[0]
  if n >= 1 << 31:
    raise ValueError(f"{n} pairs: at most 2^31 - 1 per EDC call")
  packed = (key32.astype(np.uint64) << np.uint64(31)) | np.arange(n, dtype=np.uint64)
  if group is not None:
    packed |= group.astype(np.uint64) << np.uint64(63)
  packed.sort()
  return (packed & np.uint64(0x7FFFFFFF)).astype(np.int32)


def _score_perm(s: np.ndarray, gen: np.ndarray, given: np.ndarray | None) -> np.ndarray:
  """`given` (a caller's score_order of these comparisons) or the order computed now."""
  if given is None:
    return score_order(s, gen)
  given = np.asarray(given, np.int32)
  if given.shape != s.shape:
    raise ValueError(f"score_perm has shape {given.shape}, expected {s.shape}: pass "
                     "score_order(scores, is_genuine) of the same comparisons")
  return given


def score_order(scores: np.ndarray, is_genuine: np.ndarray) -> np.ndarray:
  """Pair index at each position of the comparison-score order shared by every quality set:
  impostors by DESCENDING score, then genuines by ascending score (ties by index)."""
  key = _np_sortable(scores)
  return _np_order(np.where(is_genuine, key, ~key), np.asarray(is_genuine, bool))


@functools.partial(jax.jit, static_argnames=("g_size", "block", "with_order"))
def _prepare(scores, is_genuine, g_size: int, block: int = _BLOCK,
             with_order: bool = True, perm=None) -> _Prep:
  """with_order=False (iso mode) skips the impostor sort: only the genuine slots are built.
  perm: the order from score_order (host); None (traced inputs) sorts on device."""
  p = scores.shape[0]
  nb = -(-p // block)
  ppad = nb * block
  s = _canon(scores)
  gen = is_genuine.astype(bool)
  n_imp = jnp.sum(~gen, dtype=jnp.int32)
  gen_idx = jnp.nonzero(gen, size=g_size, fill_value=p)[0].astype(jnp.int32)
  n_gen = p - n_imp
  if not with_order:
    z = jnp.zeros((1,), jnp.int32)
    return _Prep(s, z, z.astype(jnp.float32), z, z, z, n_imp, gen_idx, gen_idx < p, n_gen,
                 n_gen > g_size)
  iota = lax.iota(jnp.int32, p)
  if perm is None:
    key = jnp.where(gen, jnp.inf, -s)
    _, perm = lax.sort((key, iota), num_keys=1, is_stable=False)  # ties in any order: only counts matter
  perm = jnp.asarray(perm, jnp.int32)
  sorted_s = s[perm]
  pos = iota
  new = jnp.concatenate([jnp.ones((1,), bool), sorted_s[1:] != sorted_s[:-1]]) | (pos == n_imp)
  gstart = lax.cummax(jnp.where(new, pos, 0))
  nxt = jnp.where(new, pos, p)
  gend = lax.cummin(jnp.concatenate([nxt[1:], jnp.array([p], jnp.int32)]), reverse=True)
  rank = jnp.zeros((p,), jnp.int32).at[perm].set(iota)
  block_of = jnp.where(gen, nb, rank // block)
  pad = ppad - p
  perm = jnp.concatenate([perm, jnp.full((pad,), p, jnp.int32)])
  sorted_s = jnp.concatenate([sorted_s, jnp.full((pad,), -jnp.inf, jnp.float32)])
  gstart = jnp.concatenate([gstart, jnp.full((pad,), p, jnp.int32)])
  gend = jnp.concatenate([gend, jnp.full((pad,), p, jnp.int32)])
  return _Prep(s, perm, sorted_s, gstart, gend, block_of, n_imp, gen_idx, gen_idx < p, n_gen,
               n_gen > g_size)


# --------------------------------------------------------------------------------------------
# Quality cut of every level: radix selection of the (quality, index) order statistics
# --------------------------------------------------------------------------------------------
def _quality_levels(q: jnp.ndarray, cuts: jnp.ndarray) -> jnp.ndarray:
  """level [P] int32: number of discard levels at which each pair is kept.

  Level k keeps the pairs at positions >= cuts[k] of the stable ascending quality sort, i.e. the
  pairs with (q, index) >= the cut key (v_k, i_k); cuts must be nondecreasing. Three histogram
  passes (high 16 bits, low 16 bits, index blocks inside a split tie group), no sort.
  """
  p = q.shape[0]
  r = cuts.shape[0]
  key = _sortable(_canon(q))
  iota = lax.iota(jnp.int32, p)
  # Pass 1: high 16 bits.
  hi = (key >> 16).astype(jnp.int32)
  h1 = jnp.zeros((65536,), jnp.int32).at[hi].add(1)
  c1 = jnp.cumsum(h1)
  b = jnp.searchsorted(c1, cuts, side="right").astype(jnp.int32)          # bin of rank cuts[k]
  base1 = c1[b] - h1[b]
  # Pass 2: low 16 bits inside the (at most R) bins hit.
  ub = jnp.unique(b, size=r, fill_value=65536)
  slot = jnp.sum(hi[:, None] > ub[None, :], axis=1, dtype=jnp.int32)
  match = ub[jnp.minimum(slot, r - 1)] == hi
  lo = (key & jnp.uint32(0xFFFF)).astype(jnp.int32)
  h2 = jnp.zeros((r * 65536,), jnp.int32).at[jnp.where(match, slot * 65536 + lo, r * 65536)].add(
      1, mode="drop").reshape(r, 65536)
  sk = jnp.searchsorted(ub, b).astype(jnp.int32)
  h2k = h2[sk]                                                             # [R, 65536]
  c2 = jnp.cumsum(h2k, axis=1)
  tgt = cuts - base1
  lo_k = _count_le(c2, tgt)
  v = (b.astype(jnp.uint32) << 16) | lo_k.astype(jnp.uint32)              # quality key at the cut
  below = base1 + jnp.take_along_axis(c2 - h2k, lo_k[:, None], 1)[:, 0]
  t = cuts - below                                                         # rank inside the tie group

  # Pass 3 (only if some cut splits a tie group): index of the t-th member of the group.
  def split_index(_):
    nbi = -(-p // _TIE_BLOCK)
    uv = jnp.unique(v, size=r, fill_value=jnp.uint32(0xFFFFFFFF))
    slot_v = jnp.sum(key[:, None] > uv[None, :], axis=1, dtype=jnp.int32)
    m = uv[jnp.minimum(slot_v, r - 1)] == key
    h3 = jnp.zeros((r * nbi,), jnp.int32).at[
        jnp.where(m, slot_v * nbi + iota // _TIE_BLOCK, r * nbi)].add(1, mode="drop").reshape(r, nbi)
    h3k = h3[jnp.searchsorted(uv, v)]
    c3 = jnp.cumsum(h3k, axis=1)
    blk = _count_le(c3, t)                                                 # block holding member t
    base3 = jnp.take_along_axis(c3 - h3k, blk[:, None], 1)[:, 0]
    keypad = jnp.concatenate([key, jnp.zeros((nbi * _TIE_BLOCK - p,), jnp.uint32)])
    idx = blk[:, None] * _TIE_BLOCK + jnp.arange(_TIE_BLOCK)[None, :]
    seg = (keypad[idx] == v[:, None]) & (idx < p)
    within = _count_le(jnp.cumsum(seg, axis=1), t - base3)
    return jnp.where(t > 0, blk * _TIE_BLOCK + within, 0)

  i_cut = lax.cond(jnp.any(t > 0), split_index, lambda _: jnp.zeros((r,), jnp.int32), None)
  ge = (key[:, None] > v[None, :]) | ((key[:, None] == v[None, :]) & (iota[:, None] >= i_cut[None, :]))
  return jnp.sum(ge, axis=1, dtype=jnp.int32)


# --------------------------------------------------------------------------------------------
# FIQA mode kernel (one quality set)
# --------------------------------------------------------------------------------------------
class _FiqaStats(NamedTuple):
  m: jnp.ndarray        # [R, F, C] candidate FM counts
  valid: jnp.ndarray    # [R, F, C]
  ustar: jnp.ndarray    # [R, F, C] threshold for that candidate
  accepted: jnp.ndarray  # [R, F, C] genuine pairs with s > u*
  n_imp: jnp.ndarray    # [R]
  n_gen: jnp.ndarray    # [R]


def _fiqa_set(prep: _Prep, q: jnp.ndarray, cuts: jnp.ndarray, fmrs: jnp.ndarray,
              block: int = _BLOCK) -> _FiqaStats:
  r = cuts.shape[0]
  nb = prep.perm.shape[0] // block
  level = _quality_levels(q, cuts)                                         # [P]
  level_pad = jnp.concatenate([level, jnp.full((1,), -1, jnp.int32)])      # index p = padding
  # Kept impostors per (score block, level).
  tab = jnp.zeros((nb * (r + 1),), jnp.int32).at[prep.block_of * (r + 1) + level].add(
      1, mode="drop").reshape(nb, r + 1)
  kept = jnp.cumsum(tab[:, ::-1], axis=1)[:, ::-1][:, 1:]                  # [nb, R]: level > k
  pref = jnp.concatenate([jnp.zeros((1, r), jnp.int32), jnp.cumsum(kept, axis=0)]).T  # [R, nb+1]
  n_imp = pref[:, -1]
  arange_b = jnp.arange(block, dtype=jnp.int32)

  def kept_in_block(bb, k):                 # [Q], [Q] → [Q, B] kept flags of block bb at level k
    pos = bb[:, None] * block + arange_b[None, :]
    lv = level_pad[prep.perm[pos]]
    return (pos < prep.n_imp) & (lv > k[:, None]), pos

  def count_before(x, k):                   # kept impostors at positions < x
    bb = jnp.minimum(x // block, nb - 1)
    flags, pos = kept_in_block(bb, k)
    return pref[k, bb] + jnp.sum(flags & (pos < x[:, None]), axis=1, dtype=jnp.int32)

  def select(rank, k):                      # position of the rank-th kept impostor (rank < n_imp[k])
    bb = jnp.clip(_count_le(pref[k], rank) - 1, 0, nb - 1)
    flags, _ = kept_in_block(bb, k)
    within = _count_le(jnp.cumsum(flags, axis=1, dtype=jnp.int32), rank - pref[k, bb])
    return bb * block + jnp.minimum(within, block - 1)

  f_n = fmrs.shape[0]
  kk = jnp.broadcast_to(jnp.arange(r)[:, None, None], (r, f_n, 3)).reshape(-1)
  n_k = n_imp[kk]
  t = (fmrs.astype(jnp.float32)[None, :, None] * n_imp.astype(jnp.float32)[:, None, None])
  j = jnp.floor(jnp.broadcast_to(t, (r, f_n, 3))).astype(jnp.int32).reshape(-1)
  rho = jnp.clip(j + jnp.tile(jnp.array([-1, 0, 1], jnp.int32), r * f_n), 0, jnp.maximum(n_k - 1, 0))
  pos = select(rho, kk)
  lo = count_before(prep.gstart[pos], kk)
  hi = count_before(prep.gend[pos], kk)
  m = jnp.stack([lo, hi], -1).reshape(r, f_n, 6)                           # candidates
  kc = jnp.broadcast_to(jnp.arange(r)[:, None, None], m.shape)
  nc = n_imp[kc]
  # a_m (b) and a_{m-1} (prev): the (m+1)-th and m-th largest kept impostor scores.
  mf, kf, nf = m.reshape(-1), kc.reshape(-1), nc.reshape(-1)
  b_val = jnp.where(mf < nf, prep.sorted_s[select(jnp.minimum(mf, nf - 1), kf)], -jnp.inf)
  prev = jnp.where(mf >= 1, prep.sorted_s[select(jnp.maximum(mf - 1, 0), kf)], jnp.inf)
  b_val, prev = b_val.reshape(m.shape), prev.reshape(m.shape)
  # Genuine side (few pairs): kept flags per level, smallest observed value above b, acceptances.
  s_gen = prep.scores.at[prep.gen_idx].get(mode="fill", fill_value=0.0)
  lv_gen = level_pad[prep.gen_idx]
  kept_gen = lv_gen[None, :] > jnp.arange(r)[:, None]                       # [R, G]
  n_gen = jnp.sum(kept_gen, axis=1, dtype=jnp.int32)
  kg = kept_gen[:, None, None, :]
  gmin = jnp.min(jnp.where(kg & (s_gen > b_val[..., None]), s_gen, jnp.inf), axis=-1)
  ustar = jnp.minimum(gmin, prev)
  accepted = jnp.sum(kg & (s_gen > ustar[..., None]), axis=-1, dtype=jnp.int32)
  valid = (nc > 0) & ((m >= 1) | (gmin < jnp.inf))
  return _FiqaStats(m, valid, ustar, accepted, n_imp, n_gen)


def _fiqa_decide(xp, st: _FiqaStats, fmrs):
  """Choose the FM count closest to the target (ties: larger count = lower threshold); FNMR."""
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
  return xp.swapaxes(fnmr, -1, -2), xp.swapaxes(xp.where(ok, thr, xp.nan), -1, -2)  # [..., F, R]


# --------------------------------------------------------------------------------------------
# ISO mode kernel
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("k_max",))
def _iso_thresholds(scores, is_genuine, kk, k_max: int):
  """t_f = nextafter(v, +inf), v = the (K_f+1)-th largest impostor score (K_f = floor(f·N_imp))."""
  s = jnp.where(is_genuine, -jnp.inf, _canon(scores))
  top, _ = lax.top_k(s, k_max)
  v = top[jnp.minimum(kk, k_max - 1)]
  return jnp.nextafter(v, jnp.float32(jnp.inf))


def _iso_set(prep: _Prep, q_gen: jnp.ndarray, thr: jnp.ndarray, dcount: jnp.ndarray) -> tuple:
  """One quality set, genuine pairs only, sorted by quality (whole tie groups).

  Returns errors [F, R] and kept genuines [R] at the requested levels, and the full step curve
  for the exact pAUC: suffix errors [F, G+1] (errors among genuines at sorted position >= i) and
  step starts [G] (first member of each quality tie group).
  """
  g = prep.gen_idx.shape[0]
  q_gen = jnp.where(prep.gen_valid, _canon(q_gen), jnp.inf)              # [G] genuine slots
  s_gen = prep.scores.at[prep.gen_idx].get(mode="fill", fill_value=0.0)
  qs, ss, vs = lax.sort((q_gen, s_gen, prep.gen_valid), num_keys=1, is_stable=True)
  err = vs[None, :] & (ss[None, :] < thr[:, None])                         # [F, G]
  suffix = jnp.cumsum(err[:, ::-1], axis=1, dtype=jnp.int32)[:, ::-1]
  suffix = jnp.concatenate([suffix, jnp.zeros((thr.shape[0], 1), jnp.int32)], 1)  # [F, G+1]
  idx = jnp.arange(g, dtype=jnp.int32)
  start = jnp.concatenate([jnp.ones((1,), bool), qs[1:] != qs[:-1]]) & vs
  last_start = lax.cummax(jnp.where(start, idx, 0))
  d = last_start[jnp.clip(dcount, 0, g - 1)]                               # [R] discarded
  return suffix[:, d], prep.n_gen - d, suffix, start


def _iso_step_pauc(xp, suffix, start, n_gen, limit: float):
  """Exact stepwise pAUC (Schlett compute_edc_pauc) of the full step curve, final point (1, 0).
  suffix [..., F, G+1], start [..., G], n_gen [...] → [..., F]."""
  dt = xp.float64 if xp is np or jax.config.jax_enable_x64 else xp.float32
  g = start.shape[-1]
  idx = xp.arange(g)
  n = xp.asarray(n_gen)[..., None].astype(dt)
  x = idx.astype(dt) / xp.maximum(n, 1)
  nxt_start = xp.flip(_cummin(xp, xp.flip(xp.where(start, idx, g), -1)), -1)
  nxt = xp.concatenate([nxt_start[..., 1:], xp.full(start.shape[:-1] + (1,), g)], axis=-1)
  x_next = xp.where(nxt < n, nxt.astype(dt) / xp.maximum(n, 1), 1.0)
  e = suffix[..., :g].astype(dt) / xp.maximum(n - idx, 1)[..., None, :]
  width = xp.where(start & (x < limit), xp.maximum(xp.minimum(x_next, limit) - x, 0.0), 0.0)
  return xp.sum(e * width[..., None, :], axis=-1)


def _cummin(xp, a):
  return np.minimum.accumulate(a, axis=-1) if xp is np else lax.cummin(a, axis=a.ndim - 1)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def edc_curves(scores, is_genuine, pair_quality, fmrs: Sequence[float] = (1e-3, 1e-4),
               discard=FIQA_DISCARD, mode: str = "fiqa", higher_is_better: bool = True,
               pauc_limit: float | None = None, subtract_best: bool = False,
               set_batch: int | None = None, g_size: int | None = None,
               score_perm: np.ndarray | None = None) -> EdcCurves:
  """EDC of S quality sets over one set of comparisons.

  scores [P] (higher = more similar), is_genuine [P] bool, pair_quality [S, P] (or [P]; higher =
  better unless higher_is_better=False, e.g. PFE uncertainty: then ranked descending, ties still
  broken by input order). fmrs [F] target FMRs; discard [R] fractions in [0, 1).
  set_batch: quality sets per device call (vmapped); default keeps each call near 2^24 pairs.
  g_size: genuine slots under tracing (default P). score_perm: score_order(scores, is_genuine)
  when the caller has it (one sort for many calls on the same comparisons). Returns EdcCurves
  (numpy; jax under tracing).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES} ('fiqa' reproduces the FIQA papers), got {mode!r}")
  disc = check_discard(discard)
  fm = check_fmrs(fmrs)
  if _is_tracer(scores, is_genuine, pair_quality):
    return _edc_traced(scores, is_genuine, pair_quality, fm, disc, mode, higher_is_better,
                       pauc_limit, subtract_best, g_size)
  s, gen, pq = _validate(scores, is_genuine, pair_quality)
  if not higher_is_better:
    pq = -pq
  n_sets, p = pq.shape
  n_gen = int(gen.sum())
  n_imp = p - n_gen
  order = np.argsort(disc, kind="stable")
  dsort = disc[order]
  set_batch = set_batch or max(1, min(n_sets, (1 << 24) // p))
  g_size = _bucket(n_gen)              # padded genuine slots: one compile for similar sizes
  if mode == "fiqa":
    prep = _prepare(jnp.asarray(s), jnp.asarray(gen), g_size=g_size,
                    perm=jnp.asarray(_score_perm(s, gen, score_perm)))
  else:                                # genuine slots on the host (XLA's nonzero is slow here)
    gi = np.full(g_size, p, np.int32)
    gi[:n_gen] = np.flatnonzero(gen)
    z = jnp.zeros((1,), jnp.int32)
    prep = _Prep(jnp.asarray(s), z, z.astype(jnp.float32), z, z, z, jnp.int32(n_imp),
                 jnp.asarray(gi), jnp.asarray(gi < p), jnp.int32(n_gen), jnp.bool_(False))
  F, R = fm.size, disc.size
  fnmr = np.empty((n_sets, F, R))
  thr = np.empty((n_sets, F, R))
  ng = np.empty((n_sets, R), np.int64)
  ni = np.empty((n_sets, R), np.int64)
  done = np.empty((n_sets, R))
  area = np.empty((n_sets, F)) if pauc_limit is not None else None
  if mode == "fiqa":
    cuts = jnp.asarray(cuts_for(dsort, p), jnp.int32)
    kernel = _fiqa_kernel(set_batch)
    for lo in range(0, n_sets, set_batch):
      rows = pq[lo:lo + set_batch]
      st = jax.device_get(kernel(prep, jnp.asarray(_pad_rows(rows, set_batch)), cuts,
                                 jnp.asarray(fm, jnp.float32)))
      for i in range(rows.shape[0]):
        one = _FiqaStats(*(x[i] for x in st))
        f_, t_ = _fiqa_decide(np, one, fm)
        fnmr[lo + i][:, order] = f_
        thr[lo + i][:, order] = t_
        ng[lo + i, order] = one.n_gen
        ni[lo + i, order] = one.n_imp
      logging.log_every_n_seconds(logging.INFO, "EDC fiqa: %d/%d quality sets", 10,
                                  min(lo + set_batch, n_sets), n_sets)
    done[:] = cuts_for(disc, p) / p
    if pauc_limit is not None:
      area[:] = pauc(fnmr, disc, pauc_limit, mode="fiqa")
  else:
    kk = np.floor(fm * n_imp).astype(np.int64)              # float64, as the rule is written
    imp = s[~gen]
    v = np.partition(imp, n_imp - 1 - kk)[n_imp - 1 - kk]   # the (K+1)-th largest impostor
    t = jnp.asarray(np.nextafter(v, np.float32(np.inf)))    # = _iso_thresholds, on the host
    dcount = jnp.asarray(cuts_for(dsort, n_gen), jnp.int32)
    set_batch = n_sets if n_sets * g_size <= (1 << 24) else set_batch
    kernel = _iso_kernel(set_batch)
    gen_idx = np.flatnonzero(gen)
    for lo in range(0, n_sets, set_batch):
      rows = pq[lo:lo + set_batch]
      k = rows.shape[0]
      q_gen = np.zeros((set_batch, g_size), np.float32)
      q_gen[:k, :n_gen] = rows[:, gen_idx]              # only genuine pairs matter in iso mode
      errs, rem, suffix, start = jax.device_get(kernel(prep, jnp.asarray(q_gen), t, dcount))
      fnmr[lo:lo + k][..., order] = errs[:k] / rem[:k, None, :].astype(np.float64)
      ng[lo:lo + k][:, order] = rem[:k]
      done[lo:lo + k][:, order] = (n_gen - rem[:k]) / n_gen
      if area is not None:
        area[lo:lo + k] = _iso_step_pauc(np, suffix[:k], start[:k], np.full(k, n_gen), pauc_limit)
    thr[:] = np.asarray(t, np.float64)[None, :, None]
    ni[:] = n_imp
    if area is not None and subtract_best:
      area -= theoretical_best_area(fnmr_at_zero(fnmr, disc), pauc_limit)
  return EdcCurves(mode, fm, disc, fnmr, thr, ng, ni, done, area)


def fnmr_at_zero(fnmr, disc):
  """FNMR at discard 0 (the grid must contain 0)."""
  i = np.flatnonzero(np.asarray(disc) == 0)
  if i.size == 0:
    raise ValueError("subtract_best needs discard 0 in the grid (the starting error e0)")
  return fnmr[..., int(i[0])]


def _bucket(n: int) -> int:
  """n rounded up to a multiple of 2^(bits(n)-4) (<= 1/8 padding), at least 16."""
  step = 1 << max(4, n.bit_length() - 4)
  return -(-n // step) * step


def _pad_rows(rows: np.ndarray, n: int) -> np.ndarray:
  if rows.shape[0] == n:
    return rows
  return np.concatenate([rows, np.repeat(rows[-1:], n - rows.shape[0], 0)])


@functools.lru_cache(maxsize=None)
def _fiqa_kernel(set_batch: int):
  return jax.jit(jax.vmap(_fiqa_set, in_axes=(None, 0, None, None)))


@functools.lru_cache(maxsize=None)
def _iso_kernel(set_batch: int):
  return jax.jit(jax.vmap(_iso_set, in_axes=(None, 0, None, None)))


def _edc_traced(scores, is_genuine, pair_quality, fm, disc, mode, higher_is_better, pauc_limit,
                subtract_best, g_size):
  """Same kernels under jit/vmap: no value checks, decisions on device (see module docstring)."""
  pq = jnp.asarray(pair_quality, jnp.float32)
  pq = pq[None] if pq.ndim == 1 else pq
  if not higher_is_better:
    pq = -pq
  p = pq.shape[1]
  gen = jnp.asarray(is_genuine).astype(bool)
  g_size = g_size or p
  prep = _prepare(jnp.asarray(scores, jnp.float32), gen, g_size=g_size, with_order=mode == "fiqa")
  order = np.argsort(disc, kind="stable")
  inv = np.argsort(order)
  dsort = disc[order]
  if mode == "fiqa":
    cuts = jnp.asarray(cuts_for(dsort, p), jnp.int32)
    st = jax.vmap(_fiqa_set, in_axes=(None, 0, None, None))(prep, pq, cuts, jnp.asarray(fm, jnp.float32))
    fnmr, thr = jax.vmap(lambda x: _fiqa_decide(jnp, x, fm))(st)
    bad = prep.gen_overflow
    fnmr = jnp.where(bad, jnp.nan, fnmr)[..., inv]
    thr = thr[..., inv]
    ng, ni = st.n_gen[:, inv], st.n_imp[:, inv]
    done = jnp.broadcast_to(jnp.asarray(cuts_for(disc, p) / p), ng.shape)
    area = pauc(fnmr, disc, pauc_limit, mode="fiqa") if pauc_limit is not None else None
  else:
    n_imp = prep.n_imp
    kk = jnp.floor(jnp.asarray(fm, jnp.float32) * n_imp.astype(jnp.float32)).astype(jnp.int32)
    t = _iso_thresholds(jnp.asarray(scores, jnp.float32), gen, kk, int(np.floor(fm.max() * p)) + 1)
    dcount = jnp.floor(jnp.asarray(dsort, jnp.float32) * prep.n_gen.astype(jnp.float32)).astype(jnp.int32)
    q_gen = pq.at[:, prep.gen_idx].get(mode="fill", fill_value=0.0)
    errs, rem, suffix, start = jax.vmap(_iso_set, in_axes=(None, 0, None, None))(prep, q_gen, t, dcount)
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    fnmr = errs.astype(dt) / jnp.maximum(rem, 1)[:, None, :].astype(dt)
    fnmr = jnp.where(prep.gen_overflow, jnp.nan, fnmr)[..., inv]
    thr = jnp.broadcast_to(t[None, :, None], fnmr.shape)
    ng = rem[:, inv]
    done = (prep.n_gen - ng) / jnp.maximum(prep.n_gen, 1)
    ni = jnp.broadcast_to(n_imp, ng.shape)
    area = None
    if pauc_limit is not None:
      area = _iso_step_pauc(jnp, suffix, start, jnp.broadcast_to(prep.n_gen, (pq.shape[0],)),
                            pauc_limit)
      area = jnp.where(prep.gen_overflow, jnp.nan, area)
      if subtract_best:
        area = area - theoretical_best_area(fnmr_at_zero(fnmr, disc), pauc_limit)
  return EdcCurves(mode, fm, disc, fnmr, thr, ng, ni, done, area)


def edc_fnmr(scores, is_genuine, pair_quality, fmrs: Sequence[float] = (1e-3, 1e-4),
             discard=FIQA_DISCARD, mode: str = "fiqa", higher_is_better: bool = True,
             **kwargs) -> np.ndarray:
  """FNMR [S, F, R] (see edc_curves for everything else it can return)."""
  return edc_curves(scores, is_genuine, pair_quality, fmrs, discard, mode, higher_is_better,
                    **kwargs).fnmr


def theoretical_best_area(e0, limit: float):
  """Area under max(0, e0 - x) on [0, limit] (Schlett's 'area under theoretical best')."""
  return e0 ** 2 / 2 - np.maximum(0.0, e0 - limit) ** 2 / 2 if not _is_tracer(e0) else (
      e0 ** 2 / 2 - jnp.maximum(0.0, e0 - limit) ** 2 / 2)


def pauc(fnmr, discard, limit: float = PAUC_LIMIT, mode: str = "fiqa",
         subtract_best: bool = False):
  """Area under EDC curves from 0 to `limit`: fnmr [..., R], discard [R] or broadcastable.

  fiqa: trapezoid over the grid points (sklearn.metrics.auc), raw (papers print x1e3). Grid points
  up to limit (+1e-9, so 0.30000000000000004 counts as 0.3) are used; if the last one is short of
  the limit, the curve is linearly interpolated to it. iso: stepwise (Schlett compute_edc_pauc) over
  the given points (pass EdcCurves.discarded as discard; exact when every step is a point, else use
  edc_curves(pauc_limit=...)); subtract_best removes the theoretical-best area (needs discard 0).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  xp = jnp if _is_tracer(fnmr) else np
  y = xp.asarray(fnmr, xp.float64 if xp is np else None)
  x = xp.broadcast_to(xp.asarray(discard, y.dtype), y.shape)
  if not 0 <= limit <= 1:
    raise ValueError(f"limit must be in [0, 1], got {limit}")
  if mode == "fiqa":
    grid = np.asarray(discard, np.float64)
    if grid.ndim != 1 or np.any(np.diff(grid) <= 0):
      raise ValueError("fiqa pAUC needs one increasing discard grid [R]")
    inside = grid <= limit + 1e-9
    if grid[0] > 1e-12 or not inside.any():
      raise ValueError("the discard grid must start at 0 for the pAUC")
    last = int(np.flatnonzero(inside)[-1])
    xs, ys = x[..., :last + 1], y[..., :last + 1]
    area = xp.sum((xs[..., 1:] - xs[..., :-1]) * (ys[..., 1:] + ys[..., :-1]) / 2, axis=-1)
    if grid[last] < limit - 1e-9:
      if last + 1 >= grid.size:
        raise ValueError(f"the grid ends at {grid[-1]} < limit {limit}")
      w = (limit - grid[last]) / (grid[last + 1] - grid[last])
      y_lim = y[..., last] + w * (y[..., last + 1] - y[..., last])
      area = area + (limit - grid[last]) * (y[..., last] + y_lim) / 2
    return area
  # iso: stepwise, the curve ends with (1, 0).
  x_next = xp.concatenate([x[..., 1:], xp.ones_like(x[..., :1])], axis=-1)
  width = xp.where(x < limit, xp.maximum(xp.minimum(x_next, limit) - x, 0.0), 0.0)
  area = xp.sum(xp.where(width > 0, y, 0.0) * width, axis=-1)
  if subtract_best:
    area = area - theoretical_best_area(y[..., 0], limit)
  return area


# --------------------------------------------------------------------------------------------
# Bootstrap: a resample is an integer multiplicity per pair (docs/evaluation.md, "Bootstrap")
# --------------------------------------------------------------------------------------------
# A resample with multiplicities w [P] (w_i copies of pair i) is evaluated as the plain EDC of
# the resampled list (pairs repeated w_i times, kept in input order, so copies are adjacent
# and the stable tie order holds), without building that list. N' = sum(w) pairs; in the stable
# quality order pair i holds the copies [W_<i, W_<=i) (W = cumulative weight), so level k
# (cut c_k = int(r_k N')) keeps it whole iff W_<i >= c_k, drops it iff W_<=i <= c_k, and keeps
# W_<=i - c_k copies of the ONE pair straddling c_k. Every count of the threshold rule (kept
# impostors, FM(u), kept genuines, accepted genuines) becomes a weighted count; the rule itself
# (candidates, |FM/N - f| in float64 on the host, strict acceptance) is unchanged. The score
# order is sorted once per call, each quality order once per set; a resample then costs two
# histogram passes over the pairs per set and a few block reads, no sort.
UNITS = ("pair", "identity", "template")


def check_alpha(alpha) -> float:
  """alpha of the (1 - alpha) percentile interval; must lie in (0, 1)."""
  try:
    a = float(alpha)
  except (TypeError, ValueError):
    raise ValueError(f"alpha must be a number in (0, 1) (0.05 = 95 % intervals), got {alpha!r}")
  if not 0 < a < 1:
    raise ValueError(f"alpha must be in (0, 1) (0.05 = 95 % intervals), got {alpha!r}")
  return a


def check_resamples(num_resamples) -> int:
  """Bootstrap resample count: a whole number >= 0 (0 = no interval)."""
  if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) and not (
      isinstance(num_resamples, float) and num_resamples.is_integer()):
    raise ValueError(f"num_resamples must be a whole number >= 0, got {num_resamples!r}")
  n = int(num_resamples)
  if n < 0:
    raise ValueError(f"num_resamples must be a whole number >= 0, got {num_resamples!r}")
  return n


class Units(NamedTuple):
  """Resampling units of the pairs: side a and side b of pair i belong to units a[i], b[i]
  (0..count-1; a == b when a pair has one unit)."""
  a: np.ndarray
  b: np.ndarray
  count: int


def pair_units(units, num_pairs: int) -> Units | None:
  """None (resample pairs) or labels [P] (one unit per pair) / [P, 2] (a unit per side, e.g.
  the identities or templates of the two images) → Units. Labels may be any hashable dtype."""
  if units is None:
    return None
  u = np.asarray(units)
  if u.ndim == 1:
    u = u[:, None]
  if u.ndim != 2 or u.shape[0] != num_pairs or u.shape[1] not in (1, 2):
    raise ValueError(f"units must be [P] or [P, 2] labels for the {num_pairs} pairs, got shape "
                     f"{u.shape}")
  _, inv = np.unique(u.reshape(-1), return_inverse=True)
  inv = inv.reshape(u.shape).astype(np.int32)
  return Units(inv[:, 0], inv[:, -1], int(inv.max()) + 1 if inv.size else 0)


def resample_draws(seed: int, resample: int, num_units: int) -> np.ndarray:
  """The units (0..num_units-1) drawn with replacement in resample `resample` (num_units
  draws): its own NumPy stream per (seed, resample), so resample b is the same whatever the
  number of resamples, quality columns or calls (paired comparisons rely on it)."""
  rng = np.random.default_rng([int(seed) % (1 << 63), int(resample)])
  return rng.integers(0, num_units, num_units, dtype=np.int64 if num_units >= 1 << 31 else np.int32)


def multiplicities(draws: np.ndarray, units: Units | None, num_pairs: int) -> np.ndarray:
  """Pair multiplicities [P] of a resample from its drawn units (cluster-bootstrap rule).

  Pairs (units None): w_i = how often pair i was drawn. Units: with m_u = how often unit u was
  drawn, a pair inside one unit (a == b) is kept m_u times, a pair across two units m_a·m_b
  times: every drawn copy of a meets every drawn copy of b (the vertex bootstrap of dyadic
  data, Snijders & Borgatti 1999; the pigeonhole bootstrap, Owen 2007), while a unit's own
  pairs come once per copy of it."""
  if units is None:
    return np.bincount(draws, minlength=num_pairs).astype(np.int32)
  m = np.bincount(draws, minlength=units.count).astype(np.int32)
  ma = m[units.a]
  return np.where(units.a == units.b, ma, ma * m[units.b])


def resample_weights(seed: int, resample: int, num_pairs: int, units=None) -> np.ndarray:
  """Pair multiplicities [P] of resample `resample` exactly as bootstrap() uses them."""
  u = units if isinstance(units, Units) or units is None else pair_units(units, num_pairs)
  return multiplicities(resample_draws(seed, resample, num_pairs if u is None else u.count), u,
                        num_pairs)


class Bootstrap(NamedTuple):
  """pauc [S, F]: point estimate on all pairs; samples [B, S, F]: pAUC of every resample;
  fnmr [B, S, F, R]: FNMR of every resample at every discard level (NaN where a level kept no
  genuine or no impostor pair); unit: "pair" or "units" (a cluster bootstrap)."""
  pauc: np.ndarray
  samples: np.ndarray
  fnmr: np.ndarray
  unit: str


def _pow2_block(n: int, div: int, lo: int, hi: int) -> int:
  """Power-of-two block near sqrt(n/div): balances the per-block tables against the block reads."""
  b = 1 << max(0, int(math.ceil(math.log2(max(1.0, math.sqrt(max(n, 1) / div))))))
  return int(min(hi, max(lo, b)))


class _Seq(NamedTuple):
  """A score-ordered run of pairs (impostors or genuines) under one (set, resample)."""
  w: jnp.ndarray        # [npad] multiplicity by position (0 on padding)
  qpos: jnp.ndarray     # [npad] position in the quality order
  t: jnp.ndarray        # [R] kept whole at level k iff qpos >= t[k]
  xpos: jnp.ndarray     # [R] position of the pair straddling cut k in this run, -1 if elsewhere
  extra: jnp.ndarray    # [R] its kept copies at level k
  pref: jnp.ndarray     # [R, nb+1] kept copies before each block


def _seq(w, qpos, t, xpos, extra, block: int) -> _Seq:
  npad, r = w.shape[0], t.shape[0]
  nb = npad // block
  level = jnp.sum(qpos[:, None] >= t[None, :], axis=1, dtype=jnp.int32)   # levels kept whole
  blk = lax.iota(jnp.int32, npad) // block
  tab = jnp.zeros((nb * (r + 1),), jnp.int32).at[blk * (r + 1) + level].add(w).reshape(nb, r + 1)
  kept = jnp.cumsum(tab[:, ::-1], axis=1)[:, ::-1][:, 1:]                     # [nb, R]
  kept = kept.at[jnp.clip(xpos // block, 0, nb - 1), jnp.arange(r)].add(
      jnp.where(xpos >= 0, extra, 0))
  pref = jnp.concatenate([jnp.zeros((1, r), jnp.int32), jnp.cumsum(kept, axis=0)]).T
  return _Seq(w, qpos, t, xpos, extra, pref)


def _seq_block(sq: _Seq, bb, k, block: int):
  """Kept copies [Q, block] of block bb at level k, and their positions."""
  pos = bb[:, None] * block + jnp.arange(block, dtype=jnp.int32)[None, :]
  w = jnp.where(sq.qpos[pos] >= sq.t[k][:, None], sq.w[pos], 0)
  return w + jnp.where(pos == sq.xpos[k][:, None], sq.extra[k][:, None], 0), pos


def _seq_count_before(sq: _Seq, x, k, block: int):
  """Kept copies at positions < x (level k)."""
  nb = sq.pref.shape[1] - 1
  bb = jnp.minimum(x // block, nb - 1)
  w, pos = _seq_block(sq, bb, k, block)
  return sq.pref[k, bb] + jnp.sum(jnp.where(pos < x[:, None], w, 0), axis=1, dtype=jnp.int32)


def _count_le_rows(table, k, v):
  """#{j: table[k, j] <= v} for sorted rows, by binary search (Q·log n reads, not Q·n)."""
  n = table.shape[1]
  def step(_, c):
    lo, hi = c
    mid = (lo + hi) // 2
    go = (mid < n) & (table[k, jnp.minimum(mid, n - 1)] <= v)
    return jnp.where(go, mid + 1, lo), jnp.where(go, hi, mid)

  lo, _ = lax.fori_loop(0, max(1, int(n).bit_length()), step,
                        (jnp.zeros(v.shape, jnp.int32), jnp.full(v.shape, n, jnp.int32)))
  return lo


def _seq_select(sq: _Seq, rank, k, block: int):
  """Position holding kept copy number `rank` (0-based, rank < kept total) at level k."""
  nb = sq.pref.shape[1] - 1
  bb = jnp.clip(_count_le_rows(sq.pref, k, rank) - 1, 0, nb - 1)
  w, _ = _seq_block(sq, bb, k, block)
  within = _count_le(jnp.cumsum(w, axis=1, dtype=jnp.int32), rank - sq.pref[k, bb])
  return bb * block + jnp.minimum(within, block - 1)


def _cut_search(qpos_s, spos_of_q, ws, cuts, block: int):
  """Per level: t (kept whole iff quality position >= t), the straddling pair's (padded) score
  position and its kept copies. One histogram of the weights over quality blocks + one block
  read. qpos_s/ws [L] by padded score position (padding: weight 0), spos_of_q [P]."""
  p = spos_of_q.shape[0]
  nqb = -(-p // block)
  qb = jnp.zeros((nqb,), jnp.int32).at[qpos_s // block].add(ws)
  cq = jnp.cumsum(qb)                                                       # inclusive
  b = jnp.minimum(jnp.searchsorted(cq, cuts, side="right").astype(jnp.int32), nqb - 1)
  base = cq[b] - qb[b]
  qp = b[:, None] * block + jnp.arange(block, dtype=jnp.int32)[None, :]
  wq = jnp.where(qp < p, ws[spos_of_q[jnp.minimum(qp, p - 1)]], 0)
  cum = base[:, None] + jnp.cumsum(wq, axis=1, dtype=jnp.int32)
  within = jnp.minimum(_count_le(cum, cuts), block - 1)                     # first cum > cut
  j = b * block + within
  wi = jnp.take_along_axis(cum, within[:, None], 1)[:, 0]
  we = wi - jnp.take_along_axis(wq, within[:, None], 1)[:, 0]
  full = we >= cuts
  return jnp.where(full, j, j + 1), spos_of_q[jnp.minimum(j, p - 1)], jnp.where(full, 0, wi - cuts)


class _BootShared(NamedTuple):
  sorted_imp: jnp.ndarray   # [Ipad] impostor scores, descending (-inf padding)
  gstart: jnp.ndarray       # [Ipad] first position of the score tie group
  gend: jnp.ndarray         # [Ipad] one past its last position
  gen_le_imp: jnp.ndarray   # [Ipad] genuines with score <= the impostor's score
  s_gen: jnp.ndarray        # [Gpad] genuine scores, ascending (+inf padding)
  gen_next: jnp.ndarray     # [Gpad] first genuine index with a larger score


def _boot_fiqa_instance(sh: _BootShared, qpos_s, spos_of_q, ws, cuts, fmrs, *, bi: int,
                        bg: int, bq: int) -> _FiqaStats:
  """Weighted twin of _fiqa_set for one (quality set, resample). Padded score positions:
  impostors [0, Ipad), genuines [Ipad, Ipad + Gpad); qpos_s, ws [L]; spos_of_q [P]."""
  ipad = sh.sorted_imp.shape[0]
  g = sh.s_gen.shape[0]
  t, xs, extra = _cut_search(qpos_s, spos_of_q, ws, cuts, bq)
  take = extra > 0
  imp = _seq(ws[:ipad], qpos_s[:ipad], t, jnp.where(take & (xs < ipad), xs, -1), extra, bi)
  gen = _seq(ws[ipad:], qpos_s[ipad:], t, jnp.where(take & (xs >= ipad), xs - ipad, -1), extra,
             bg)
  n_i, n_g = imp.pref[:, -1], gen.pref[:, -1]
  r, f_n = cuts.shape[0], fmrs.shape[0]
  # FM-count candidates next to f·N_imp (kept impostor copies), as _fiqa_set.
  kk = jnp.broadcast_to(jnp.arange(r)[:, None, None], (r, f_n, 3)).reshape(-1)
  n_k = n_i[kk]
  tgt = fmrs.astype(jnp.float32)[None, :, None] * n_i.astype(jnp.float32)[:, None, None]
  j = jnp.floor(jnp.broadcast_to(tgt, (r, f_n, 3))).astype(jnp.int32).reshape(-1)
  rho = jnp.clip(j + jnp.tile(jnp.array([-1, 0, 1], jnp.int32), r * f_n), 0,
                 jnp.maximum(n_k - 1, 0))
  pos = _seq_select(imp, rho, kk, bi)
  q1 = rho.shape[0]
  lohi = _seq_count_before(imp, jnp.concatenate([sh.gstart[pos], sh.gend[pos]]),
                           jnp.concatenate([kk, kk]), bi)
  m = jnp.stack([lohi[:q1], lohi[q1:]], -1).reshape(r, f_n, 6)
  kc = jnp.broadcast_to(jnp.arange(r)[:, None, None], m.shape)
  nc = n_i[kc]
  mf, kf, nf = m.reshape(-1), kc.reshape(-1), nc.reshape(-1)
  q2 = mf.shape[0]
  # Positions of the (m+1)-th (b) and m-th (prev) largest kept impostor copies.
  both = _seq_select(imp, jnp.concatenate([jnp.minimum(mf, nf - 1), jnp.maximum(mf - 1, 0)]),
                     jnp.concatenate([kf, kf]), bi)
  has_b, has_prev = mf < nf, mf >= 1
  prev = jnp.where(has_prev, sh.sorted_imp[both[q2:]], jnp.inf)
  # Smallest kept genuine above b, u* = min(it, prev), kept genuines strictly above u*.
  ng = n_g[kf]
  c0 = _seq_count_before(gen, jnp.where(has_b, sh.gen_le_imp[both[:q2]], 0), kf, bg)
  gi = _seq_select(gen, jnp.minimum(c0, jnp.maximum(ng - 1, 0)), kf, bg)
  gmin = jnp.where(c0 < ng, sh.s_gen[gi], jnp.inf)
  ustar = jnp.minimum(gmin, prev)
  i1 = jnp.where(gmin <= prev, sh.gen_next[gi],
                 jnp.where(has_prev, sh.gen_le_imp[both[q2:]], g))
  above = _seq_count_before(gen, jnp.where(ustar == jnp.inf, g, i1), kf, bg)
  accepted = (ng - above).reshape(m.shape)
  gmin, ustar = gmin.reshape(m.shape), ustar.reshape(m.shape)
  valid = (nc > 0) & ((m >= 1) | (gmin < jnp.inf))
  return _FiqaStats(m, valid, ustar, accepted, n_i, n_g)


@functools.lru_cache(maxsize=None)
def _boot_fiqa_kernel(bi: int, bg: int, bq: int):
  one = functools.partial(_boot_fiqa_instance, bi=bi, bg=bg, bq=bq)
  over_resamples = jax.vmap(one, in_axes=(None, None, None, 0, 0, None))
  return jax.jit(jax.vmap(over_resamples, in_axes=(None, 0, 0, None, None, None)))


def _quality_positions(q: np.ndarray, perm_pad: np.ndarray, rank_pad: np.ndarray):
  """One quality set (host): quality position of the pair at each padded score position (0 on
  padding) and the padded score position of the pair at each quality position (stable
  ascending quality order)."""
  perm_q = _np_order(_np_sortable(q))
  rank_q = np.zeros(perm_q.size + 1, np.int32)
  rank_q[perm_q] = np.arange(perm_q.size, dtype=np.int32)
  return rank_q[perm_pad], rank_pad[perm_q]


def _iso_boot_set(q_gen: np.ndarray, s_gen: np.ndarray, wg: np.ndarray, thr: np.ndarray,
                  dsort: np.ndarray, limit: float):
  """ISO mode, one quality set, a batch of resamples (host, float64; genuine pairs only).
  q_gen/s_gen [G] genuine qualities and scores in pair-index order (the tie order), wg [b, G]
  multiplicities, thr [b, F] fixed thresholds → fnmr [b, F, R], exact step pAUC [b, F]."""
  og = _np_order(_np_sortable(q_gen))                    # stable ascending quality order
  qs, ss, w = q_gen[og], s_gen[og], wg[:, og]
  g = qs.size
  start = np.concatenate([[True], _np_sortable(qs[1:]) != _np_sortable(qs[:-1])])
  wex = np.cumsum(w, axis=1) - w                                             # copies before
  n = wex[:, -1] + w[:, -1]                                                  # [b]
  err = ss[None, None, :] < thr[:, :, None]                                  # [b, F, G]
  suffix = np.concatenate([np.cumsum((err * w[:, None, :])[..., ::-1], axis=-1)[..., ::-1],
                           np.zeros(err.shape[:2] + (1,), np.int64)], axis=-1)  # [b, F, G+1]
  dcount = (dsort[None, :] * n[:, None]).astype(np.int64)                    # int(r·N'_gen)
  last_start = np.maximum.accumulate(np.where(start[None], wex, 0), axis=1)
  # Row-wise searchsorted on the nondecreasing rows of wex: one search over rows offset apart.
  off = (np.arange(w.shape[0], dtype=np.int64) * (int(n.max()) + 1))[:, None]
  flat = (wex + off).ravel()
  base = (np.arange(w.shape[0]) * g)[:, None]
  gstar = np.searchsorted(flat, dcount + off, side="right") - base - 1       # last wex <= dcount
  d = np.take_along_axis(last_start, np.maximum(gstar, 0), axis=1)           # copies discarded
  first = np.searchsorted(flat, d + off, side="left") - base                 # first wex >= d
  errs = np.take_along_axis(suffix, np.broadcast_to(first[:, None, :], suffix.shape[:2] +
                                                    first.shape[1:]), axis=-1)
  kept = (n[:, None] - d).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    fnmr = np.where(kept[:, None, :] > 0, errs / kept[:, None, :], np.nan)
    nf = n.astype(np.float64)[:, None]
    x = wex / np.maximum(nf, 1)
    nxt = np.where(start[None], wex, n[:, None])
    nxt = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]
    x_next = np.concatenate([nxt[:, 1:], n[:, None]], axis=1) / np.maximum(nf, 1)
    e = suffix[..., :g] / np.maximum(n[:, None] - wex, 1)[:, None, :]
    width = np.where(start[None] & (x < limit), np.maximum(np.minimum(x_next, limit) - x, 0.0), 0.0)
    area = np.sum(e * width[:, None, :], axis=-1)
  area = np.where(n[:, None] > 0, area, np.nan)
  return fnmr, area


_BOOT_QUEUE = 2                 # device calls in flight in the fiqa bootstrap (memory bound)


def bootstrap(scores, is_genuine, pair_quality, fmrs: Sequence[float] = (1e-3, 1e-4),
              discard=FIQA_DISCARD, mode: str = "fiqa", limit: float = PAUC_LIMIT,
              num_resamples: int = 200, seed: int = 0, higher_is_better: bool = True,
              units=None, resample_batch: int | None = None, point=None,
              score_perm: np.ndarray | None = None) -> Bootstrap:
  """pAUC and per-level FNMR of `num_resamples` bootstrap resamples (docs/evaluation.md).

  units None resamples the P pairs; labels [P] or [P, 2] resample whole units (identities,
  templates) with the multiplicity rule of `multiplicities`. Resample b of a seed is the same
  for every quality set and call, so differences between columns are paired. Each resample
  equals the plain EDC (edc_curves) of its resampled pair list (tests/test_edc.py).
  resample_batch: resamples per host batch (default: by memory); point: the pAUC [S, F] of
  edc_curves(..., pauc_limit=limit) when the caller already has it; score_perm: as in
  edc_curves.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  s, gen, pq = _validate(scores, is_genuine, pair_quality)
  if not higher_is_better:
    pq = -pq
  disc = check_discard(discard)
  fm = check_fmrs(fmrs)
  n_boot = check_resamples(num_resamples)
  if point is None:
    point = edc_curves(s, gen, pq, fm, disc, mode, pauc_limit=limit, score_perm=score_perm).pauc
  n_sets, p = pq.shape
  u = pair_units(units, p)
  fnmr = np.full((n_boot, n_sets, fm.size, disc.size), np.nan)
  area = np.full((n_boot, n_sets, fm.size), np.nan)
  unit = "pair" if u is None else "units"
  if n_boot:
    weights = _ResampleWeights(seed, u, p)
    rb = int(resample_batch or max(1, min(n_boot, (1 << 25) // p)))
    run = _bootstrap_iso if mode == "iso" else _bootstrap_fiqa
    so = _BootOrder.of(s, gen, disc, _score_perm(s, gen, score_perm))
    run(so, pq, fm, disc, float(limit), weights, rb, fnmr, area)
  return Bootstrap(np.asarray(point), area, fnmr, unit)


class _BootOrder(NamedTuple):
  """What both bootstrap modes share: the discard levels ascending (`order` maps them back),
  the shared score order, and the canonical scores (-0.0 → 0.0) in pair and in score order."""
  order: np.ndarray
  dsort: np.ndarray
  perm: np.ndarray
  n_imp: int
  canon: np.ndarray
  s_sorted: np.ndarray

  @classmethod
  def of(cls, s: np.ndarray, gen: np.ndarray, disc: np.ndarray, perm: np.ndarray
         ) -> "_BootOrder":
    order = np.argsort(disc, kind="stable")
    canon = np.where(s == 0, np.float32(0), s)
    return cls(order, disc[order], perm, int((~gen).sum()), canon, canon[perm])


class _ResampleWeights:
  """Multiplicities of resamples [lo, hi) at given pair indices (index P = padding, weight 0):
  `multiplicities` evaluated directly in the caller's pair layout (no pair-order copy)."""

  def __init__(self, seed: int, units: Units | None, num_pairs: int):
    self.seed, self.units, self.num_pairs = seed, units, num_pairs
    self.num_units = num_pairs if units is None else units.count

  def __call__(self, lo: int, hi: int, layout: np.ndarray) -> np.ndarray:
    u, p = self.units, self.num_pairs
    w = np.empty((hi - lo, layout.size), np.int32)
    if u is not None:
      ua = np.append(u.a, u.count)[layout]               # padding → unit `count`, drawn 0 times
      ub = np.append(u.b, u.count)[layout]
      same = ua == ub
    for i, b in enumerate(range(lo, hi)):
      draws = resample_draws(self.seed, b, self.num_units)
      if u is None:
        np.take(np.bincount(draws, minlength=p + 1).astype(np.int32), layout, out=w[i])
      else:
        m = np.bincount(draws, minlength=u.count + 1).astype(np.int32)
        ma = m[ua]
        w[i] = np.where(same, ma, ma * m[ub])
    return w


def _bootstrap_iso(so: _BootOrder, pq, fm, disc, limit: float, weights: _ResampleWeights,
                   rb: int, fnmr: np.ndarray, area: np.ndarray) -> None:
  """iso mode on the host: per resample the impostor threshold from weighted cumulative counts,
  then each quality set's weighted genuine FNMR per discard level. Fills fnmr and area."""
  n_boot, n_sets = fnmr.shape[:2]
  order, dsort, perm_s, n_imp, s_can, s_sorted = so
  gid = np.sort(perm_s[n_imp:])                           # genuines in pair-index order
  layout = np.concatenate([perm_s[:n_imp], gid])
  for lo in range(0, n_boot, rb):
    hi = min(n_boot, lo + rb)
    w = weights(lo, hi, layout)
    cum = np.cumsum(w[:, :n_imp], axis=1, dtype=np.int64)
    n_i = cum[:, -1]
    kk = np.floor(fm[None, :] * n_i[:, None]).astype(np.int64)              # as edc_curves
    idx = np.stack([np.searchsorted(cum[i], kk[i], side="right") for i in range(hi - lo)])
    v = s_sorted[np.minimum(idx, n_imp - 1)]
    thr = np.nextafter(v.astype(np.float32), np.float32(np.inf))            # [b, F]
    wg = w[:, n_imp:]
    for si in range(n_sets):
      f_, a_ = _iso_boot_set(pq[si, gid], s_can[gid], wg, thr, dsort, limit)
      f_[n_i == 0], a_[n_i == 0] = np.nan, np.nan
      fnmr[lo:hi, si][..., order] = f_
      area[lo:hi, si] = a_


def _bootstrap_fiqa(so: _BootOrder, pq, fm, disc, limit: float, weights: _ResampleWeights,
                    rb: int, fnmr: np.ndarray, area: np.ndarray) -> None:
  """fiqa mode on the device: the weighted counting kernel over padded score positions
  (impostors [0, ipad), then genuines [ipad, ipad + gpad)), the decision on the host while the
  next calls run. Fills fnmr and area."""
  n_boot, n_sets = fnmr.shape[:2]
  order, dsort, perm_s, n_imp, _, s_sorted = so
  p = perm_s.size
  g_n = p - n_imp
  bi, bg = _pow2_block(n_imp, 64, 8, 1024), _pow2_block(g_n, 64, 8, 1024)
  bq = _pow2_block(p, 16, 8, 4096)
  ipad, gpad = -(-n_imp // bi) * bi, -(-g_n // bg) * bg

  def pad(x, n, fill):
    return np.concatenate([x, np.full(n - x.size, fill, x.dtype)])

  layout = np.concatenate([pad(perm_s[:n_imp], ipad, p), pad(perm_s[n_imp:], gpad, p)])
  rank_pad = np.empty(p, np.int32)                       # padded score position of each pair
  real = layout < p
  rank_pad[layout[real]] = np.flatnonzero(real).astype(np.int32)
  st_s = s_sorted[:n_imp]
  pos = np.arange(n_imp, dtype=np.int32)
  new = np.concatenate([[True], st_s[1:] != st_s[:-1]])
  gstart = np.maximum.accumulate(np.where(new, pos, 0))                     # score tie groups
  gend = np.minimum.accumulate(np.append(np.where(new, pos, n_imp)[1:], n_imp)[::-1])[::-1]
  s_gen = s_sorted[n_imp:]
  shared = _BootShared(*(jnp.asarray(x) for x in (
      pad(st_s, ipad, -np.inf), pad(gstart, ipad, n_imp), pad(gend.astype(np.int32), ipad, n_imp),
      pad(np.searchsorted(s_gen, st_s, side="right").astype(np.int32), ipad, 0),
      pad(s_gen, gpad, np.inf),
      pad(np.searchsorted(s_gen, s_gen, side="right").astype(np.int32), gpad, g_n))))
  kernel = _boot_fiqa_kernel(bi, bg, bq)
  length = ipad + gpad
  budget = 1 << 23                                 # pair-instances per device call
  kr = max(1, min(rb, budget // length))           # resamples per device call
  sg = max(1, min(n_sets, (1 << 27) // (2 * p)))   # quality sets held at once (host arrays)
  ks = max(1, min(sg, budget // (length * kr)))    # quality sets per device call
  fm32 = jnp.asarray(fm, jnp.float32)
  # Dispatched device calls: host work overlaps them. At most _BOOT_QUEUE wait at once, so
  # their inputs and outputs do not pile up in memory (at IJB-C size one call's inputs are
  # ~190 MB).
  pending: collections.deque = collections.deque()

  def collect(depth: int = 0):
    while len(pending) > depth:
      st, n_ok, rows, cols = pending.popleft()
      st = jax.device_get(st)
      st = _FiqaStats(*(x[:len(cols), :len(rows)] for x in st))
      f_, _ = _fiqa_decide(np, st, fm)                                     # [s, b, F, R]
      f_ = np.where(n_ok[None, :, None, None] > 0, f_, np.nan)
      out = np.empty_like(f_)
      out[..., order] = f_
      fnmr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = np.swapaxes(out, 0, 1)

  for s_lo in range(0, n_sets, sg):
    s_hi = min(n_sets, s_lo + sg)
    qp, sq = zip(*[_quality_positions(pq[i], layout, rank_pad) for i in range(s_lo, s_hi)])
    qp, sq = np.stack(qp), np.stack(sq)
    for lo in range(0, n_boot, rb):
      hi = min(n_boot, lo + rb)
      w = weights(lo, hi, layout)
      n_all = w.sum(axis=1, dtype=np.int64)
      cuts = (dsort[None, :] * n_all[:, None]).astype(np.int64)           # int(r·N'), float64
      collect()
      groups = []                        # resample groups on the device, shared by every set
      for b0 in range(0, hi - lo, kr):
        rows = np.arange(b0, min(b0 + kr, hi - lo))
        rsel = _pad_rows(rows, kr)
        groups.append((rows, jnp.asarray(w[rsel]), jnp.asarray(cuts[rsel], jnp.int32)))
      del w
      for a in range(0, s_hi - s_lo, ks):
        cols = np.arange(s_lo + a, min(s_lo + a + ks, s_hi))
        sel = _pad_rows(cols - s_lo, ks)
        qa, sa = jnp.asarray(qp[sel]), jnp.asarray(sq[sel])
        for rows, w_dev, cuts_dev in groups:
          pending.append((kernel(shared, qa, sa, w_dev, cuts_dev, fm32),
                          n_all[rows], rows + lo, cols))
          collect(_BOOT_QUEUE)
    logging.log_every_n_seconds(logging.INFO, "bootstrap fiqa: %d/%d quality sets", 10, s_hi,
                                n_sets)
  collect()
  area[:] = pauc(fnmr, disc, limit, mode="fiqa")


def percentile_ci(samples: np.ndarray, alpha: float = 0.05, axis: int = 0):
  """(low, high) percentile interval over `axis`, NaN samples ignored (all NaN → NaN)."""
  a = check_alpha(alpha)
  x = np.asarray(samples, np.float64)
  if x.shape[axis] == 0 or not np.any(np.isfinite(x)):
    shape = np.delete(np.array(x.shape), axis)
    return np.full(shape, np.nan), np.full(shape, np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)        # all-NaN slices → NaN
    return (np.nanpercentile(x, 100 * a / 2, axis=axis),
            np.nanpercentile(x, 100 * (1 - a / 2), axis=axis))


def pauc_ci(scores, is_genuine, pair_quality, fmrs: Sequence[float] = (1e-3, 1e-4),
            discard=FIQA_DISCARD, mode: str = "fiqa", limit: float = PAUC_LIMIT,
            num_resamples: int = 200, seed: int = 0, alpha: float = 0.05,
            higher_is_better: bool = True, resample_batch: int | None = None, units=None):
  """Bootstrap percentile CI of pAUC (see `bootstrap`): (pauc [S, F], low [S, F], high [S, F]),
  the point value on all pairs. Resamples with no genuine or impostor left at a level are
  ignored. alpha in (0, 1); num_resamples = 0 gives NaN bounds."""
  check_alpha(alpha)
  res = bootstrap(scores, is_genuine, pair_quality, fmrs, discard, mode, limit, num_resamples,
                  seed, higher_is_better, units, resample_batch)
  low, high = percentile_ci(res.samples, alpha)
  return res.pauc, low, high
