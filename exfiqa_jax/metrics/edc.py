"""EDC (error-versus-discard characteristic) and pAUC on device: the exact engine and the public
API (docs/evaluation.md). The rule both conventions follow is stated once in edc_rule.py; the
bootstrap over the same rule is bootstrap.py.

Scale (IJB-C: 15.7M pairs, 26 quality sets). A sort per quality set and level is what makes the
published code slow; here the impostor scores are sorted ONCE per call (shared by every quality
set; on the host, one NumPy sort of packed 64-bit keys, ~10x a key-value sort under XLA on the
CPU), and per quality set only histogram passes run: a radix selection finds the quality cut of
every level (the kept sets are nested, so one int per pair, `level`, says up to which level it is
kept), one scatter builds per-level kept counts per block of the score order, and the few order
statistics the threshold rule needs are read from one block each. Genuine pairs are few and are
handled directly. Cost O(N log N) once + O(N) per quality set; memory O(N).

Concrete inputs are validated and the FIQA choice is made in float64 on the host (the published
rule bit for bit); under jit/vmap the same kernels run and decide on device (edc_rule.py,
"Exactness").
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from exfiqa_jax.metrics import edc_rule as rule
from exfiqa_jax.metrics.arrays import canonical, count_le, is_tracer, pad_rows, sortable
# Part of the public API (`from exfiqa_jax import edc`: edc.FIQA_DISCARD, edc.score_order, ...).
from exfiqa_jax.metrics.edc_rule import FIQA_DISCARD, MODES, PAUC_LIMIT, score_order  # noqa: F401

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


def _genuine_prep(scores, n_imp, gen_idx, n_gen, gen_overflow, p: int) -> _Prep:
  """The iso mode's preparation: genuine slots only (no impostor order)."""
  z = jnp.zeros((1,), jnp.int32)
  return _Prep(scores, z, z.astype(jnp.float32), z, z, z, n_imp, gen_idx, gen_idx < p, n_gen,
               gen_overflow)


@functools.partial(jax.jit, static_argnames=("g_size", "block", "with_order"))
def _prepare(scores, is_genuine, g_size: int, block: int = _BLOCK,
             with_order: bool = True, perm=None) -> _Prep:
  """with_order=False (iso mode) skips the impostor sort: only the genuine slots are built.
  perm: the order from score_order (host); None (traced inputs) sorts on device."""
  p = scores.shape[0]
  nb = -(-p // block)
  ppad = nb * block
  s = canonical(scores)
  gen = is_genuine.astype(bool)
  n_imp = jnp.sum(~gen, dtype=jnp.int32)
  gen_idx = jnp.nonzero(gen, size=g_size, fill_value=p)[0].astype(jnp.int32)
  n_gen = p - n_imp
  if not with_order:
    return _genuine_prep(s, n_imp, gen_idx, n_gen, n_gen > g_size, p)
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
  key = sortable(canonical(q))
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
  lo_k = count_le(c2, tgt)
  v = (b.astype(jnp.uint32) << 16) | lo_k.astype(jnp.uint32)              # quality key at the cut
  below = base1 + jnp.take_along_axis(c2 - h2k, lo_k[:, None], 1)[:, 0]
  t = cuts - below                                                         # rank inside the tie group
  i_cut = lax.cond(jnp.any(t > 0), lambda _: _split_index(key, v, t),
                   lambda _: jnp.zeros((r,), jnp.int32), None)
  ge = (key[:, None] > v[None, :]) | ((key[:, None] == v[None, :]) & (iota[:, None] >= i_cut[None, :]))
  return jnp.sum(ge, axis=1, dtype=jnp.int32)


def _split_index(key: jnp.ndarray, v: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """Pass 3 of _quality_levels (only if some cut splits a tie group): the pair index of the
  t-th member (0-based) of the tie group with key v, per level, by index-block histograms."""
  p, r = key.shape[0], v.shape[0]
  iota = lax.iota(jnp.int32, p)
  nbi = -(-p // _TIE_BLOCK)
  uv = jnp.unique(v, size=r, fill_value=jnp.uint32(0xFFFFFFFF))
  slot_v = jnp.sum(key[:, None] > uv[None, :], axis=1, dtype=jnp.int32)
  m = uv[jnp.minimum(slot_v, r - 1)] == key
  h3 = jnp.zeros((r * nbi,), jnp.int32).at[
      jnp.where(m, slot_v * nbi + iota // _TIE_BLOCK, r * nbi)].add(1, mode="drop").reshape(r, nbi)
  h3k = h3[jnp.searchsorted(uv, v)]
  c3 = jnp.cumsum(h3k, axis=1)
  blk = count_le(c3, t)                                                    # block holding member t
  base3 = jnp.take_along_axis(c3 - h3k, blk[:, None], 1)[:, 0]
  keypad = jnp.concatenate([key, jnp.zeros((nbi * _TIE_BLOCK - p,), jnp.uint32)])
  idx = blk[:, None] * _TIE_BLOCK + jnp.arange(_TIE_BLOCK)[None, :]
  seg = (keypad[idx] == v[:, None]) & (idx < p)
  within = count_le(jnp.cumsum(seg, axis=1), t - base3)
  return jnp.where(t > 0, blk * _TIE_BLOCK + within, 0)


# --------------------------------------------------------------------------------------------
# FIQA mode kernel (one quality set): the rule's counts by histogram passes
# --------------------------------------------------------------------------------------------
def _fiqa_set(prep: _Prep, q: jnp.ndarray, cuts: jnp.ndarray, fmrs: jnp.ndarray,
              block: int = _BLOCK) -> rule.FiqaStats:
  r = cuts.shape[0]
  nb = prep.perm.shape[0] // block
  level = _quality_levels(q, cuts)                                         # [P]
  level_pad = jnp.concatenate([level, jnp.full((1,), -1, jnp.int32)])      # index p = padding
  # Kept impostors per (score block, level).
  tab = jnp.zeros((nb * (r + 1),), jnp.int32).at[prep.block_of * (r + 1) + level].add(
      1, mode="drop").reshape(nb, r + 1)
  kept = jnp.cumsum(tab[:, ::-1], axis=1)[:, ::-1][:, 1:]                  # [nb, R]: level > k
  pref = jnp.concatenate([jnp.zeros((1, r), jnp.int32), jnp.cumsum(kept, axis=0)]).T  # [R, nb+1]
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
    bb = jnp.clip(count_le(pref[k], rank) - 1, 0, nb - 1)
    flags, _ = kept_in_block(bb, k)
    within = count_le(jnp.cumsum(flags, axis=1, dtype=jnp.int32), rank - pref[k, bb])
    return bb * block + jnp.minimum(within, block - 1)

  # Genuine side (few pairs): kept flags per level, read directly.
  s_gen = prep.scores.at[prep.gen_idx].get(mode="fill", fill_value=0.0)
  kept_gen = level_pad[prep.gen_idx][None, :] > jnp.arange(r)[:, None]    # [R, G]

  def per_level(x):                         # flat [R·F·6] (level-major) → [R, F·6, 1]
    return x.reshape(r, -1)[..., None]

  def genuine_min_above(c):
    above = kept_gen[:, None, :] & (s_gen > per_level(c.b))
    return jnp.min(jnp.where(above, s_gen, jnp.inf), axis=-1).reshape(-1), None

  def genuine_count_above(u, gmin, c, aux):
    above = kept_gen[:, None, :] & (s_gen > per_level(u))
    return jnp.sum(above, axis=-1, dtype=jnp.int32).reshape(-1)

  counts = rule.FiqaCounts(pref[:, -1], jnp.sum(kept_gen, axis=1, dtype=jnp.int32), prep.sorted_s,
                           prep.gstart, prep.gend, select, count_before, genuine_min_above,
                           genuine_count_above)
  return rule.fiqa_stats(counts, fmrs)


# --------------------------------------------------------------------------------------------
# ISO mode kernel (one quality set, genuine pairs only)
# --------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("k_max",))
def _iso_top(scores, is_genuine, kk, k_max: int):
  """v = the (K_f+1)-th largest impostor score, K_f = kk (device: top_k of the impostors)."""
  s = jnp.where(is_genuine, -jnp.inf, canonical(scores))
  top, _ = lax.top_k(s, k_max)
  return top[jnp.minimum(kk, k_max - 1)]


def _iso_set(prep: _Prep, q_gen: jnp.ndarray, thr: jnp.ndarray, dcount: jnp.ndarray) -> tuple:
  """One quality set, genuine pairs sorted by quality (stable): errors [F, R] and kept genuines
  [R] at the requested levels, and the full step curve for the exact pAUC: suffix errors
  [F, G+1] (errors among genuines at sorted position >= i) and step starts [G] (first member of
  each quality tie group)."""
  g = prep.gen_idx.shape[0]
  q_gen = jnp.where(prep.gen_valid, canonical(q_gen), jnp.inf)           # [G] genuine slots
  s_gen = prep.scores.at[prep.gen_idx].get(mode="fill", fill_value=0.0)
  qs, ss, vs = lax.sort((q_gen, s_gen, prep.gen_valid), num_keys=1, is_stable=True)
  err = vs[None, :] & (ss[None, :] < thr[:, None])                         # [F, G]
  suffix = rule.suffix_counts(jnp, err, jnp.int32)                         # [F, G+1]
  start = jnp.concatenate([jnp.ones((1,), bool), qs[1:] != qs[:-1]]) & vs
  errs, kept = rule.iso_levels(jnp, start, jnp.arange(g, dtype=jnp.int32), dcount, suffix,
                               prep.n_gen)
  return errs, kept, suffix, start


# Quality sets vmapped, one compile per shape.
_FIQA_KERNEL = jax.jit(jax.vmap(_fiqa_set, in_axes=(None, 0, None, None)))
_ISO_KERNEL = jax.jit(jax.vmap(_iso_set, in_axes=(None, 0, None, None)))


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
  rule.check_mode(mode)
  disc = rule.check_discard(discard)
  fm = rule.check_fmrs(fmrs)
  if is_tracer(scores, is_genuine, pair_quality):
    return _edc_traced(scores, is_genuine, pair_quality, fm, disc, mode, higher_is_better,
                       pauc_limit, subtract_best, g_size)
  s, gen, pq = rule.validate_pairs(scores, is_genuine, pair_quality)
  if not higher_is_better:
    pq = -pq
  set_batch = set_batch or max(1, min(pq.shape[0], (1 << 24) // pq.shape[1]))
  if mode == "fiqa":
    perm = rule.given_score_order(s, gen, score_perm)
    return _fiqa_host(s, gen, pq, fm, disc, pauc_limit, set_batch, perm)
  return _iso_host(s, gen, pq, fm, disc, pauc_limit, subtract_best, set_batch)


def _fiqa_host(s, gen, pq, fm, disc, pauc_limit, set_batch: int, perm) -> EdcCurves:
  """FIQA mode on concrete inputs: device counts per batch of quality sets, the float64
  choice on the host."""
  (n_sets, p), r = pq.shape, disc.size
  order = np.argsort(disc, kind="stable")
  prep = _prepare(jnp.asarray(s), jnp.asarray(gen), g_size=_bucket(int(gen.sum())),
                  perm=jnp.asarray(perm))
  fnmr, thr = np.empty((n_sets, fm.size, r)), np.empty((n_sets, fm.size, r))
  ng, ni = np.empty((n_sets, r), np.int64), np.empty((n_sets, r), np.int64)
  cuts = jnp.asarray(rule.cuts_for(disc[order], p), jnp.int32)
  for lo in range(0, n_sets, set_batch):
    rows = pq[lo:lo + set_batch]
    st = jax.device_get(_FIQA_KERNEL(prep, jnp.asarray(pad_rows(rows, set_batch)), cuts,
                                     jnp.asarray(fm, jnp.float32)))
    for i in range(rows.shape[0]):
      one = rule.FiqaStats(*(x[i] for x in st))
      f_, t_ = rule.fiqa_decide(np, one, fm)
      fnmr[lo + i][:, order] = f_
      thr[lo + i][:, order] = t_
      ng[lo + i, order] = one.n_gen
      ni[lo + i, order] = one.n_imp
    logging.log_every_n_seconds(logging.INFO, "EDC fiqa: %d/%d quality sets", 10,
                                min(lo + set_batch, n_sets), n_sets)
  done = np.empty((n_sets, r))
  done[:] = rule.cuts_for(disc, p) / p
  area = pauc(fnmr, disc, pauc_limit, mode="fiqa") if pauc_limit is not None else None
  return EdcCurves("fiqa", fm, disc, fnmr, thr, ng, ni, done, area)


def _iso_host(s, gen, pq, fm, disc, pauc_limit, subtract_best: bool, set_batch: int
              ) -> EdcCurves:
  """ISO mode on concrete inputs: the threshold from the impostors on the host, each quality
  set's genuine step curve on device."""
  (n_sets, p), r = pq.shape, disc.size
  order = np.argsort(disc, kind="stable")
  n_gen = int(gen.sum())
  n_imp = p - n_gen
  g_size = _bucket(n_gen)              # padded genuine slots: one compile for similar sizes
  gen_idx = np.flatnonzero(gen)
  gi = np.full(g_size, p, np.int32)    # genuine slots on the host (XLA's nonzero is slow here)
  gi[:n_gen] = gen_idx
  prep = _genuine_prep(jnp.asarray(s), jnp.int32(n_imp), jnp.asarray(gi), jnp.int32(n_gen),
                       jnp.bool_(False), p)
  kk = rule.iso_rank(fm, n_imp)
  imp = s[~gen]
  t = jnp.asarray(rule.iso_threshold(np.partition(imp, n_imp - 1 - kk)[n_imp - 1 - kk]))
  dcount = jnp.asarray(rule.cuts_for(disc[order], n_gen), jnp.int32)
  set_batch = n_sets if n_sets * g_size <= (1 << 24) else set_batch
  fnmr, ng = np.empty((n_sets, fm.size, r)), np.empty((n_sets, r), np.int64)
  done = np.empty((n_sets, r))
  area = np.empty((n_sets, fm.size)) if pauc_limit is not None else None
  for lo in range(0, n_sets, set_batch):
    rows = pq[lo:lo + set_batch]
    k = rows.shape[0]
    q_gen = np.zeros((set_batch, g_size), np.float32)
    q_gen[:k, :n_gen] = rows[:, gen_idx]              # only genuine pairs matter in iso mode
    errs, rem, suffix, start = jax.device_get(_ISO_KERNEL(prep, jnp.asarray(q_gen), t, dcount))
    fnmr[lo:lo + k][..., order] = errs[:k] / rem[:k, None, :].astype(np.float64)
    ng[lo:lo + k][:, order] = rem[:k]
    done[lo:lo + k][:, order] = (n_gen - rem[:k]) / n_gen
    if area is not None:
      area[lo:lo + k] = rule.step_pauc(np, suffix[:k], start[:k], np.arange(g_size),
                                       np.full(k, n_gen), pauc_limit)
  thr = np.broadcast_to(np.asarray(t, np.float64)[None, :, None], fnmr.shape).copy()
  ni = np.full((n_sets, r), n_imp, np.int64)
  if area is not None and subtract_best:
    area -= theoretical_best_area(fnmr_at_zero(fnmr, disc), pauc_limit)
  return EdcCurves("iso", fm, disc, fnmr, thr, ng, ni, done, area)


def _edc_traced(scores, is_genuine, pair_quality, fm, disc, mode, higher_is_better, pauc_limit,
                subtract_best, g_size) -> EdcCurves:
  """Same kernels under jit/vmap: no value checks, decisions on device (edc_rule.py)."""
  pq = jnp.asarray(pair_quality, jnp.float32)
  pq = pq[None] if pq.ndim == 1 else pq
  if not higher_is_better:
    pq = -pq
  gen = jnp.asarray(is_genuine).astype(bool)
  prep = _prepare(jnp.asarray(scores, jnp.float32), gen, g_size=g_size or pq.shape[1],
                  with_order=mode == "fiqa")
  if mode == "fiqa":
    return _fiqa_traced(prep, pq, fm, disc, pauc_limit)
  return _iso_traced(prep, jnp.asarray(scores, jnp.float32), gen, pq, fm, disc, pauc_limit,
                     subtract_best)


def _fiqa_traced(prep: _Prep, pq, fm, disc, pauc_limit) -> EdcCurves:
  p = pq.shape[1]
  order = np.argsort(disc, kind="stable")
  inv = np.argsort(order)
  cuts = jnp.asarray(rule.cuts_for(disc[order], p), jnp.int32)
  st = jax.vmap(_fiqa_set, in_axes=(None, 0, None, None))(prep, pq, cuts,
                                                          jnp.asarray(fm, jnp.float32))
  fnmr, thr = jax.vmap(lambda x: rule.fiqa_decide(jnp, x, fm))(st)
  fnmr = jnp.where(prep.gen_overflow, jnp.nan, fnmr)[..., inv]
  thr = thr[..., inv]
  ng, ni = st.n_gen[:, inv], st.n_imp[:, inv]
  done = jnp.broadcast_to(jnp.asarray(rule.cuts_for(disc, p) / p), ng.shape)
  area = pauc(fnmr, disc, pauc_limit, mode="fiqa") if pauc_limit is not None else None
  return EdcCurves("fiqa", fm, disc, fnmr, thr, ng, ni, done, area)


def _iso_traced(prep: _Prep, scores, gen, pq, fm, disc, pauc_limit, subtract_best
                ) -> EdcCurves:
  p = pq.shape[1]
  order = np.argsort(disc, kind="stable")
  inv = np.argsort(order)
  kk = rule.iso_rank(fm, prep.n_imp)
  t = rule.iso_threshold(_iso_top(scores, gen, kk, int(np.floor(fm.max() * p)) + 1))
  dcount = rule.cuts_for(disc[order], prep.n_gen)
  q_gen = pq.at[:, prep.gen_idx].get(mode="fill", fill_value=0.0)
  errs, rem, suffix, start = jax.vmap(_iso_set, in_axes=(None, 0, None, None))(prep, q_gen, t,
                                                                               dcount)
  dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  fnmr = errs.astype(dt) / jnp.maximum(rem, 1)[:, None, :].astype(dt)
  fnmr = jnp.where(prep.gen_overflow, jnp.nan, fnmr)[..., inv]
  thr = jnp.broadcast_to(t[None, :, None], fnmr.shape)
  ng = rem[:, inv]
  done = (prep.n_gen - ng) / jnp.maximum(prep.n_gen, 1)
  ni = jnp.broadcast_to(prep.n_imp, ng.shape)
  area = None
  if pauc_limit is not None:
    n = jnp.broadcast_to(prep.n_gen, (pq.shape[0],))
    area = rule.step_pauc(jnp, suffix, start, jnp.arange(start.shape[-1]), n, pauc_limit)
    area = jnp.where(prep.gen_overflow, jnp.nan, area)
    if subtract_best:
      area = area - theoretical_best_area(fnmr_at_zero(fnmr, disc), pauc_limit)
  return EdcCurves("iso", fm, disc, fnmr, thr, ng, ni, done, area)


def edc_fnmr(scores, is_genuine, pair_quality, fmrs: Sequence[float] = (1e-3, 1e-4),
             discard=FIQA_DISCARD, mode: str = "fiqa", higher_is_better: bool = True,
             **kwargs) -> np.ndarray:
  """FNMR [S, F, R] (see edc_curves for everything else it can return)."""
  return edc_curves(scores, is_genuine, pair_quality, fmrs, discard, mode, higher_is_better,
                    **kwargs).fnmr


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


def theoretical_best_area(e0, limit: float):
  """Area under max(0, e0 - x) on [0, limit] (Schlett's 'area under theoretical best')."""
  return e0 ** 2 / 2 - np.maximum(0.0, e0 - limit) ** 2 / 2 if not is_tracer(e0) else (
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
  rule.check_mode(mode)
  xp = jnp if is_tracer(fnmr) else np
  y = xp.asarray(fnmr, xp.float64 if xp is np else None)
  x = xp.broadcast_to(xp.asarray(discard, y.dtype), y.shape)
  if not 0 <= limit <= 1:
    raise ValueError(f"limit must be in [0, 1], got {limit}")
  if mode == "fiqa":
    return _trapezoid_pauc(xp, x, y, np.asarray(discard, np.float64), limit)
  # iso: stepwise, the curve ends with (1, 0).
  x_next = xp.concatenate([x[..., 1:], xp.ones_like(x[..., :1])], axis=-1)
  width = xp.where(x < limit, xp.maximum(xp.minimum(x_next, limit) - x, 0.0), 0.0)
  area = xp.sum(xp.where(width > 0, y, 0.0) * width, axis=-1)
  if subtract_best:
    area = area - theoretical_best_area(y[..., 0], limit)
  return area


def _trapezoid_pauc(xp: Any, x, y, grid: np.ndarray, limit: float):
  """The fiqa pAUC (see pauc): trapezoid over the grid points up to the limit."""
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
