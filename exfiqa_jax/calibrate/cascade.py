"""Cascade calibration for the early-exit engine (exfiqa_jax/models/exits.py, docs/methods.md).

The cascade rule, which `simulate_cascade` reproduces exactly on a full-pass exit matrix [N, L]:
at each exit e_i but the last, an image still running leaves rejected if s_{e_i} < reject_i and
accepted if s_{e_i} > accept_i (reject_i <= accept_i, so never both); the images reaching the
last exit are accepted iff s_L >= tau. Thresholds are compared as float32, as on device.
`calibrate_cascade` minimises the mean cost per image — GFLOPs, or the seconds the measured cost
model predicts (exfiqa_jax/models/cascade_cost.py; fewer GFLOPs need not mean less time) —
subject to agreement(cascade decision, full-depth decision s_L >= tau) >= target on the
calibration set:
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
by identity), so `robust_cascade` (the early_exit job's default) chooses how conservative to
be — a stricter internal target, then regions trimmed by a margin — by grouped K-fold
cross-validation: the least conservative setting whose out-of-fold agreement reaches the
target, refitted on the whole calibration set.
The agreement on the calibration set is >= target by construction; report the held-out one.
Plain NumPy on host arrays.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Callable, Sequence

import numpy as np

from exfiqa_jax.calibrate import splits
from exfiqa_jax.models import exits as exits_lib

MARGINS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75)   # robust_cascade's region trimming ladder


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


def _f32(x) -> np.ndarray:
  return np.asarray(x, np.float64).astype(np.float32)


def simulate_cascade(exit_scores: np.ndarray, exits: Sequence[int], reject: Sequence[float],
                     accept: Sequence[float], tau: float) -> CascadeOutcome:
  """The cascade's per-image outcome on a full-pass exit matrix [N, L] (module docstring rule;
  thresholds compared as float32, as the engine does)."""
  s = np.asarray(exit_scores, np.float32)
  n, depth = s.shape
  e = exits_lib.check_exits(exits, depth)
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


def _cost_function(costs, e: tuple[int, ...]) -> Callable[[tuple[int, ...]], np.ndarray]:
  """exits -> GFLOPs of leaving at each of them, from calibrate_cascade's `costs` argument."""
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
  return cost_of


def _cheapest_exits(e: tuple[int, ...], mean_cost: Callable[[tuple[int, ...]], float],
                    prune: bool, early: bool = False) -> tuple[int, ...]:
  """The exit set of least mean cost (ties: more exits): `e` itself unless `prune`, then every
  subset of its early exits (up to 6) or greedy backward elimination (more); `early`: only
  sets with at least one early exit (when `e` has one)."""
  subsets = _exit_subsets(e) if prune else [e]
  if subsets is not None and early and len(e) > 1:
    subsets = [ex for ex in subsets if len(ex) > 1]
  if subsets is None:                       # many exits: greedy backward elimination
    current = e
    while True:
      options = [current] + [tuple(x for x in current if x != drop) for drop in current[:-1]
                             if not early or len(current) > 2]
      nxt = min(options, key=lambda ex: (mean_cost(ex), -len(ex)))
      if nxt == current:
        break
      current = nxt
    subsets = [current]
  return min(subsets, key=lambda ex: (mean_cost(ex), -len(ex)))


def calibrate_cascade(exit_scores: np.ndarray, exits: Sequence[int], tau: float,
                      target: float = 0.99,
                      costs: Sequence[float] | Callable[[tuple[int, ...]], Sequence[float]]
                      | None = None, full_cost: float | None = None, prune_exits: bool = True,
                      max_evaluations: int = 4000, margin: float = 0.0,
                      early_exit_required: bool = False) -> CascadeCalibration:
  """Per-exit reject/accept thresholds that minimise the mean cost subject to agreement with the
  full-depth decision (s_L >= tau) >= target on this calibration matrix [N, L].

  costs: GFLOPs per image of leaving at each cascade exit — a sequence for `exits`, or a function
  exits -> that sequence (e.g. the engine's cascade_gflops), which also lets the calibration drop
  early exits that do not pay for their head (prune_exits: every subset of up to 6 early exits,
  else greedy elimination; the returned `exits` are the ones kept). Default: the exit's block
  count. full_cost: the full-depth program's GFLOPs (default the cost of leaving at the last
  exit with no early exit), the reference for the compute saved. margin in [0, 1]: keep only
  the outer (1 - margin) of every early-decision region (more conservative; 1 = no early exit;
  robust_cascade chooses it). early_exit_required: pruning keeps at least one early exit (the
  best real cascade, even where the last exit alone costs less). Algorithm: module docstring.
  """
  s = np.asarray(exit_scores, np.float32)
  if s.ndim != 2 or s.shape[0] == 0:
    raise ValueError(f"exit_scores must be [N, L] with N > 0, got shape {s.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError("exit_scores contain NaN/inf")
  n, depth = s.shape
  e = exits_lib.check_exits(exits, depth)
  if not 0.0 < float(target) <= 1.0:
    raise ValueError(f"target agreement must be in (0, 1], got {target}")

  cost_of = _cost_function(costs, e)
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

  best = _cheapest_exits(e, lambda ex: solve(ex)[0], prune_exits and not fixed_costs,
                         early_exit_required)
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


def _out_of_fold(s: np.ndarray, fold: np.ndarray, k: int, exits: Sequence[int], tau: float,
                 internal: float, margin: float, costs, full_cost: float | None,
                 prune_exits: bool, ref: float) -> tuple[float, float]:
  """(agreement, compute saved) of calibrate_cascade(internal, margin) out of fold: each fold
  predicted by the thresholds fitted on the others."""
  n = s.shape[0]
  agree, spent = 0, 0.0
  for f in range(k):
    train, test = fold != f, fold == f
    c = calibrate_cascade(s[train], exits, tau, internal, costs, full_cost, prune_exits,
                          margin=margin)
    out = simulate_cascade(s[test], c.exits, c.reject, c.accept, tau)
    agree += int(np.sum(out.accept == out.full_accept))
    spent += out.mean_cost(_costs_of(costs, c.exits)) * int(test.sum())
  return agree / n, 1.0 - spent / n / ref


def _costs_of(costs, ex: tuple[int, ...]) -> np.ndarray:
  if costs is None:
    return np.asarray(ex, np.float64)
  return np.asarray(costs(ex) if callable(costs) else costs, np.float64)


def _memo_key(s: np.ndarray, fold: np.ndarray, exits: Sequence[int], tau: float, costs,
              full_cost: float | None, prune_exits: bool) -> tuple:
  """Everything an out-of-fold run depends on besides (internal target, margin): the scores
  and folds (by digest), exits, tau, costs (a cost function by identity), full_cost, pruning."""
  digest = hashlib.sha256()
  for a in (s, fold):
    digest.update(repr((a.dtype.str, a.shape)).encode())
    digest.update(np.ascontiguousarray(a).tobytes())
  cost_key = costs if costs is None or callable(costs) else tuple(float(c) for c in costs)
  return (digest.hexdigest(), tuple(int(e) for e in exits), float(tau), cost_key,
          None if full_cost is None else float(full_cost), bool(prune_exits))


def robust_cascade(exit_scores: np.ndarray, exits: Sequence[int], tau: float,
                   target: float = 0.99, costs: Sequence[float] | Callable | None = None,
                   full_cost: float | None = None, groups: np.ndarray | None = None,
                   folds: int = 5, seed: int = 0, prune_exits: bool = True,
                   memo: dict | None = None) -> RobustCalibration:
  """calibrate_cascade made to generalise: thresholds set exactly at the calibration data's
  edges are optimistic on new images (more so when images cluster by identity), so the
  conservativeness is chosen by K-fold cross-validation over `groups` (identities, default each
  image its own group; folds from splits.group_folds). Settings are tried from the most to the
  least aggressive — the internal target t, 1 - (1 - t)/2, /4, /8, 1 (no disagreement allowed),
  then at 1 the margins MARGINS (each region trimmed to its outer part) — and the first whose
  out-of-fold agreement reaches `target` is refitted on all of `exit_scores` (whose agreement is
  then >= target too). None reaching it: no early exit. `memo` (a dict) keeps the out-of-fold
  runs for later calls (several targets on the same data share most of them); its keys hold
  everything a run depends on, so one memo may serve calls on different data.
  """
  s = np.asarray(exit_scores, np.float32)
  n = s.shape[0]
  fold, k = splits.group_folds(np.arange(n) if groups is None else groups, folds, seed)
  memo = {} if memo is None else memo
  data_key = _memo_key(s, fold, exits, tau, costs, full_cost, prune_exits)
  t = float(target)
  ladder = [(1.0 - (1.0 - t) / 2 ** i, 0.0) for i in range(4)] + [(1.0, m) for m in MARGINS]
  ref = float(_costs_of(costs, (s.shape[1],))[-1] if full_cost is None else full_cost)
  tried = []
  for internal, margin in ladder:
    key = (data_key, round(internal, 12), margin)
    if key not in memo:
      memo[key] = _out_of_fold(s, fold, k, exits, tau, internal, margin, costs, full_cost,
                               prune_exits, ref)
    cv_agree, cv_saved = memo[key]
    tried.append((internal, margin, cv_agree, cv_saved))
    if cv_agree >= t:
      final = calibrate_cascade(s, exits, tau, internal, costs, full_cost, prune_exits,
                                margin=margin)
      return RobustCalibration(final, t, internal, margin, cv_agree, cv_saved, k, tuple(tried))
  final = calibrate_cascade(s, exits, tau, 1.0, costs, full_cost, prune_exits, margin=1.0)
  return RobustCalibration(final, t, 1.0, 1.0, 1.0, final.saved, k, tuple(tried))
