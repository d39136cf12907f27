"""Bootstrap of the EDC: resampling units, resample multiplicities, pAUC and FNMR of every resample,
percentile intervals (docs/evaluation.md, "Bootstrap").

A resample with multiplicities w [P] (w_i copies of pair i) is evaluated as the plain EDC of
the resampled list (pairs repeated w_i times, kept in input order, so copies are adjacent
and the stable tie order holds), without building that list. N' = sum(w) pairs; in the stable
quality order pair i holds the copies [W_<i, W_<=i) (W = cumulative weight), so level k
(cut c_k = int(r_k N')) keeps it whole iff W_<i >= c_k, drops it iff W_<=i <= c_k, and keeps
W_<=i - c_k copies of the ONE pair straddling c_k. Every count of the threshold rule (kept
impostors, FM(u), kept genuines, accepted genuines) becomes a weighted count; the rule itself
is edc_rule.py's, unchanged (the exact EDC is the case "every weight 1"). The score order is
sorted once per call, each quality order once per set; a resample then costs two histogram
passes over the pairs per set and a few block reads, no sort.
"""
from __future__ import annotations

import collections
import functools
import math
import warnings
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from exfiqa_jax.metrics import edc
from exfiqa_jax.metrics import edc_rule as rule
from exfiqa_jax.metrics.arrays import count_le, pad_rows, sortable_keys, stable_order
from exfiqa_jax.metrics.edc_rule import FIQA_DISCARD, PAUC_LIMIT

UNITS = ("pair", "identity", "template")
_BOOT_QUEUE = 2                 # device calls in flight in the fiqa bootstrap (memory bound)


# --------------------------------------------------------------------------------------------
# Arguments, units and resamples
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
class Bootstrap(NamedTuple):
  """pauc [S, F]: point estimate on all pairs; samples [B, S, F]: pAUC of every resample;
  fnmr [B, S, F, R]: FNMR of every resample at every discard level (NaN where a level kept no
  genuine or no impostor pair); unit: "pair" or "units" (a cluster bootstrap)."""
  pauc: np.ndarray
  samples: np.ndarray
  fnmr: np.ndarray
  unit: str


def bootstrap(scores, is_genuine, pair_quality, fmrs: Sequence[float] = (1e-3, 1e-4),
              discard=FIQA_DISCARD, mode: str = "fiqa", limit: float = PAUC_LIMIT,
              num_resamples: int = 200, seed: int = 0, higher_is_better: bool = True,
              units=None, resample_batch: int | None = None, point=None,
              score_perm: np.ndarray | None = None) -> Bootstrap:
  """pAUC and per-level FNMR of `num_resamples` bootstrap resamples (docs/evaluation.md).

  units None resamples the P pairs; labels [P] or [P, 2] resample whole units (identities,
  templates) with the multiplicity rule of `multiplicities`. Resample b of a seed is the same
  for every quality set and call, so differences between columns are paired. Each resample
  equals the plain EDC (edc.edc_curves) of its resampled pair list (tests/test_bootstrap.py).
  resample_batch: resamples per host batch (default: by memory); point: the pAUC [S, F] of
  edc_curves(..., pauc_limit=limit) when the caller already has it; score_perm: as in
  edc_curves.
  """
  rule.check_mode(mode)
  s, gen, pq = rule.validate_pairs(scores, is_genuine, pair_quality)
  if not higher_is_better:
    pq = -pq
  disc = rule.check_discard(discard)
  fm = rule.check_fmrs(fmrs)
  n_boot = check_resamples(num_resamples)
  if n_boot or (point is None and mode == "fiqa"):      # one score sort for both
    score_perm = rule.given_score_order(s, gen, score_perm)
  if point is None:
    point = edc.edc_curves(s, gen, pq, fm, disc, mode, pauc_limit=limit,
                           score_perm=score_perm).pauc
  n_sets, p = pq.shape
  u = pair_units(units, p)
  fnmr = np.full((n_boot, n_sets, fm.size, disc.size), np.nan)
  area = np.full((n_boot, n_sets, fm.size), np.nan)
  unit = "pair" if u is None else "units"
  if n_boot:
    weights = _ResampleWeights(seed, u, p)
    rb = int(resample_batch or max(1, min(n_boot, (1 << 25) // p)))
    run = _bootstrap_iso if mode == "iso" else _bootstrap_fiqa
    so = _BootOrder.of(s, gen, disc, score_perm)
    run(so, pq, fm, disc, float(limit), weights, rb, fnmr, area)
  return Bootstrap(np.asarray(point), area, fnmr, unit)


def percentile_ci(samples: np.ndarray, alpha: float = 0.05, axis: int = 0):
  """(low, high) percentile interval over `axis`, NaN samples ignored (all NaN → NaN): the one
  percentile interval of the toolkit (pAUC, FNMR bands, paired differences, thresholds)."""
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


# --------------------------------------------------------------------------------------------
# ISO mode (host): weighted genuine step curves
# --------------------------------------------------------------------------------------------
def _iso_boot_set(q_gen: np.ndarray, s_gen: np.ndarray, wg: np.ndarray, thr: np.ndarray,
                  dsort: np.ndarray, limit: float):
  """ISO mode, one quality set, a batch of resamples (host, float64; genuine pairs only).
  q_gen/s_gen [G] genuine qualities and scores in pair-index order (the tie order), wg [b, G]
  multiplicities, thr [b, F] fixed thresholds → fnmr [b, F, R], exact step pAUC [b, F]."""
  key = sortable_keys(q_gen)
  og = stable_order(key)                                 # stable ascending quality order
  ks, ss, w = key[og], s_gen[og], wg[:, og]
  start = np.concatenate([[True], ks[1:] != ks[:-1]])
  before = np.cumsum(w, axis=1) - w                                          # copies before
  n = before[:, -1] + w[:, -1]                                               # [b]
  err = ss[None, None, :] < thr[:, :, None]                                  # [b, F, G]
  suffix = rule.suffix_counts(np, err * w[:, None, :], np.int64)            # [b, F, G+1]
  errs, kept = rule.iso_levels(np, start, before, rule.cuts_for(dsort[None, :], n[:, None]),
                               suffix, n)
  kept = kept.astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    fnmr = np.where(kept[:, None, :] > 0, errs / kept[:, None, :], np.nan)
  area = rule.step_pauc(np, suffix, start, before, n, limit)
  return fnmr, np.where(n[:, None] > 0, area, np.nan)


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
    kk = rule.iso_rank(fm, n_i)                                              # [b, F]
    idx = np.stack([np.searchsorted(cum[i], kk[i], side="right") for i in range(hi - lo)])
    thr = rule.iso_threshold(s_sorted[np.minimum(idx, n_imp - 1)])          # [b, F]
    wg = w[:, n_imp:]
    for si in range(n_sets):
      f_, a_ = _iso_boot_set(pq[si, gid], s_can[gid], wg, thr, dsort, limit)
      f_[n_i == 0], a_[n_i == 0] = np.nan, np.nan
      fnmr[lo:hi, si][..., order] = f_
      area[lo:hi, si] = a_


# --------------------------------------------------------------------------------------------
# FIQA mode (device): the rule's counts over weighted score-ordered sequences
# --------------------------------------------------------------------------------------------
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
  within = count_le(jnp.cumsum(w, axis=1, dtype=jnp.int32), rank - sq.pref[k, bb])
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
  within = jnp.minimum(count_le(cum, cuts), block - 1)                      # first cum > cut
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
                        bg: int, bq: int) -> rule.FiqaStats:
  """The FIQA rule for one (quality set, resample), counted over weighted sequences. Padded
  score positions: impostors [0, Ipad), genuines [Ipad, Ipad + Gpad); qpos_s, ws [L];
  spos_of_q [P]."""
  ipad = sh.sorted_imp.shape[0]
  g = sh.s_gen.shape[0]
  t, xs, extra = _cut_search(qpos_s, spos_of_q, ws, cuts, bq)
  take = extra > 0
  imp = _seq(ws[:ipad], qpos_s[:ipad], t, jnp.where(take & (xs < ipad), xs, -1), extra, bi)
  gen = _seq(ws[ipad:], qpos_s[ipad:], t, jnp.where(take & (xs >= ipad), xs - ipad, -1), extra,
             bg)
  n_g = gen.pref[:, -1]

  def genuine_min_above(c: rule.Candidates):    # the smallest kept genuine copy above b
    ng = n_g[c.k]
    c0 = _seq_count_before(gen, jnp.where(c.has_b, sh.gen_le_imp[c.b_pos], 0), c.k, bg)
    gi = _seq_select(gen, jnp.minimum(c0, jnp.maximum(ng - 1, 0)), c.k, bg)
    return jnp.where(c0 < ng, sh.s_gen[gi], jnp.inf), gi

  def genuine_count_above(u, gmin, c: rule.Candidates, gi):   # u = min(gmin, prev)
    i1 = jnp.where(gmin <= c.prev, sh.gen_next[gi],
                   jnp.where(c.has_prev, sh.gen_le_imp[c.prev_pos], g))
    return n_g[c.k] - _seq_count_before(gen, jnp.where(u == jnp.inf, g, i1), c.k, bg)

  counts = rule.FiqaCounts(imp.pref[:, -1], n_g, sh.sorted_imp, sh.gstart, sh.gend,
                           lambda rank, k: _seq_select(imp, rank, k, bi),
                           lambda x, k: _seq_count_before(imp, x, k, bi),
                           genuine_min_above, genuine_count_above)
  return rule.fiqa_stats(counts, fmrs)


@functools.lru_cache(maxsize=None)
def _boot_fiqa_kernel(bi: int, bg: int, bq: int):
  """(sets, resamples) vmapped, jitted, per block sizes (static)."""
  one = functools.partial(_boot_fiqa_instance, bi=bi, bg=bg, bq=bq)
  over_resamples = jax.vmap(one, in_axes=(None, None, None, 0, 0, None))
  return jax.jit(jax.vmap(over_resamples, in_axes=(None, 0, 0, None, None, None)))


def _quality_positions(q: np.ndarray, perm_pad: np.ndarray, rank_pad: np.ndarray):
  """One quality set (host): quality position of the pair at each padded score position (0 on
  padding) and the padded score position of the pair at each quality position (stable
  ascending quality order)."""
  perm_q = stable_order(sortable_keys(q))
  rank_q = np.zeros(perm_q.size + 1, np.int32)
  rank_q[perm_q] = np.arange(perm_q.size, dtype=np.int32)
  return rank_q[perm_pad], rank_pad[perm_q]


class _FiqaLayout(NamedTuple):
  """The padded score layout of the fiqa bootstrap: impostors [0, ipad), genuines [ipad,
  ipad + gpad) (pair index P on padding), the padded position of each pair, the shared device
  arrays and the kernel for these block sizes."""
  layout: np.ndarray
  rank_pad: np.ndarray
  shared: _BootShared
  kernel: object

  @classmethod
  def of(cls, so: _BootOrder) -> "_FiqaLayout":
    perm_s, n_imp, s_sorted = so.perm, so.n_imp, so.s_sorted
    p = perm_s.size
    g_n = p - n_imp
    bi, bg = _pow2_block(n_imp, 64, 8, 1024), _pow2_block(g_n, 64, 8, 1024)
    bq = _pow2_block(p, 16, 8, 4096)
    ipad, gpad = -(-n_imp // bi) * bi, -(-g_n // bg) * bg

    def pad(x, n, fill):
      return np.concatenate([x, np.full(n - x.size, fill, x.dtype)])

    layout = np.concatenate([pad(perm_s[:n_imp], ipad, p), pad(perm_s[n_imp:], gpad, p)])
    rank_pad = np.empty(p, np.int32)                     # padded score position of each pair
    real = layout < p
    rank_pad[layout[real]] = np.flatnonzero(real).astype(np.int32)
    st_s = s_sorted[:n_imp]
    pos = np.arange(n_imp, dtype=np.int32)
    new = np.concatenate([[True], st_s[1:] != st_s[:-1]])
    gstart = np.maximum.accumulate(np.where(new, pos, 0))                   # score tie groups
    gend = np.minimum.accumulate(np.append(np.where(new, pos, n_imp)[1:], n_imp)[::-1])[::-1]
    s_gen = s_sorted[n_imp:]
    shared = _BootShared(*(jnp.asarray(x) for x in (
        pad(st_s, ipad, -np.inf), pad(gstart, ipad, n_imp), pad(gend.astype(np.int32), ipad, n_imp),
        pad(np.searchsorted(s_gen, st_s, side="right").astype(np.int32), ipad, 0),
        pad(s_gen, gpad, np.inf),
        pad(np.searchsorted(s_gen, s_gen, side="right").astype(np.int32), gpad, g_n))))
    return cls(layout, rank_pad, shared, _boot_fiqa_kernel(bi, bg, bq))


class _Pending:
  """Dispatched device calls: host work overlaps them. At most `depth` wait at once, so their
  inputs and outputs do not pile up in memory (at IJB-C size one call's inputs are ~190 MB).
  Each result is decided on the host (float64) into fnmr [B, S, F, R]."""

  def __init__(self, fnmr: np.ndarray, fm: np.ndarray, order: np.ndarray):
    self.fnmr, self.fm, self.order = fnmr, fm, order
    self.queue: collections.deque = collections.deque()

  def push(self, stats, n_ok: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    self.queue.append((stats, n_ok, rows, cols))
    self.collect(_BOOT_QUEUE)

  def collect(self, depth: int = 0) -> None:
    while len(self.queue) > depth:
      st, n_ok, rows, cols = self.queue.popleft()
      st = jax.device_get(st)
      st = rule.FiqaStats(*(x[:len(cols), :len(rows)] for x in st))
      f_, _ = rule.fiqa_decide(np, st, self.fm)                            # [s, b, F, R]
      f_ = np.where(n_ok[None, :, None, None] > 0, f_, np.nan)
      out = np.empty_like(f_)
      out[..., self.order] = f_
      self.fnmr[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = np.swapaxes(out, 0, 1)


def _bootstrap_fiqa(so: _BootOrder, pq, fm, disc, limit: float, weights: _ResampleWeights,
                    rb: int, fnmr: np.ndarray, area: np.ndarray) -> None:
  """fiqa mode on the device: the weighted counting kernel over padded score positions, the
  decision on the host while the next calls run. Fills fnmr and area."""
  n_boot, n_sets = fnmr.shape[:2]
  lay = _FiqaLayout.of(so)
  p = so.perm.size
  length = lay.layout.size
  budget = 1 << 23                                 # pair-instances per device call
  kr = max(1, min(rb, budget // length))           # resamples per device call
  sg = max(1, min(n_sets, (1 << 27) // (2 * p)))   # quality sets held at once (host arrays)
  ks = max(1, min(sg, budget // (length * kr)))    # quality sets per device call
  fm32 = jnp.asarray(fm, jnp.float32)
  pending = _Pending(fnmr, fm, so.order)
  for s_lo in range(0, n_sets, sg):
    s_hi = min(n_sets, s_lo + sg)
    qp, sq = zip(*[_quality_positions(pq[i], lay.layout, lay.rank_pad) for i in range(s_lo, s_hi)])
    qp, sq = np.stack(qp), np.stack(sq)
    for lo in range(0, n_boot, rb):
      hi = min(n_boot, lo + rb)
      w = weights(lo, hi, lay.layout)
      n_all = w.sum(axis=1, dtype=np.int64)
      cuts = rule.cuts_for(so.dsort[None, :], n_all[:, None])              # int(r·N')
      pending.collect()
      groups = []                        # resample groups on the device, shared by every set
      for b0 in range(0, hi - lo, kr):
        rows = np.arange(b0, min(b0 + kr, hi - lo))
        rsel = pad_rows(rows, kr)
        groups.append((rows, jnp.asarray(w[rsel]), jnp.asarray(cuts[rsel], jnp.int32)))
      del w
      for a in range(0, s_hi - s_lo, ks):
        cols = np.arange(s_lo + a, min(s_lo + a + ks, s_hi))
        sel = pad_rows(cols - s_lo, ks)
        qa, sa = jnp.asarray(qp[sel]), jnp.asarray(sq[sel])
        for rows, w_dev, cuts_dev in groups:
          pending.push(lay.kernel(lay.shared, qa, sa, w_dev, cuts_dev, fm32), n_all[rows],
                       rows + lo, cols)
    logging.log_every_n_seconds(logging.INFO, "bootstrap fiqa: %d/%d quality sets", 10, s_hi,
                                n_sets)
  pending.collect()
  area[:] = edc.pauc(fnmr, disc, limit, mode="fiqa")
