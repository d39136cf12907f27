"""Verification metrics on pair sets: insightface-style 10-fold accuracy, the ROC and TAR at FAR
(insightface IJB 1:1), and the FR sanity numbers an evaluation reports (docs/evaluation.md,
"FR sanity"). The training monitor that uses them is exfiqa_jax/train/monitor.py."""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from exfiqa_jax.metrics.arrays import sortable_keys


def verification_accuracy(scores: np.ndarray, is_genuine: np.ndarray, folds: int = 10) -> float:
  """insightface-style 10-fold accuracy: threshold chosen on 9 folds, accuracy on the 10th.

  Fold f = pairs with index % folds == f (min(folds, P) folds). On the training folds every
  distinct training score t is a candidate, "same" iff score >= t, the first t of highest
  accuracy wins. Vectorised: one sort per fold and cumulative counts (no loop over thresholds),
  equal to the per-threshold loop (tests/test_verification.py)."""
  scores, is_genuine = np.asarray(scores, np.float64), np.asarray(is_genuine, bool)
  if scores.ndim != 1 or scores.shape != is_genuine.shape or scores.size < 2:
    raise ValueError(f"verification_accuracy needs >= 2 pairs with one label each, got scores "
                     f"{scores.shape}, is_genuine {is_genuine.shape}")
  idx = np.arange(len(scores))
  accs = []
  for f in range(min(folds, len(scores))):
    test = idx % folds == f
    train = ~test
    s, g = scores[train], is_genuine[train]
    o = np.argsort(s, kind="stable")
    s, g = s[o], g[o]
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])   # first position of each distinct t
    gen_below = np.r_[0, np.cumsum(g)][first]                # genuines with score < t
    correct = (g.sum() - gen_below) + (first - gen_below)   # genuine >= t, impostor < t
    best = s[first[int(np.argmax(correct))]]
    accs.append(np.mean((scores[test] >= best) == is_genuine[test]))
  return float(np.mean(accs))


class TarAtFar(NamedTuple):
  """TAR at each target FAR (insightface IJB 1:1), the ROC point it was read at."""
  far_target: np.ndarray   # [K]
  tar: np.ndarray          # [K] fraction of genuine pairs with score >= threshold
  far: np.ndarray          # [K] the FAR of that ROC point (nearest to the target)
  threshold: np.ndarray    # [K]


def roc_curve(scores: np.ndarray, is_genuine: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """sklearn.metrics.roc_curve(label, score) with its defaults (drop_intermediate=True):
  (fpr, tpr, thresholds), thresholds descending from +inf, "accept" iff score >= threshold.
  One sort of packed keys (ties need no order: only counts at tie-group ends are used)."""
  s = np.asarray(scores, np.float32)
  g = np.asarray(is_genuine, bool)
  if s.ndim != 1 or s.shape != g.shape or not g.any() or g.all():
    raise ValueError("roc_curve needs [P] scores and labels with both genuine and impostor pairs")
  if not np.all(np.isfinite(s)):
    raise ValueError("scores contain NaN/inf")
  key = sortable_keys(s)                                              # float order
  packed = ((~key).astype(np.uint64) << np.uint64(1)) | g.astype(np.uint64)
  packed.sort()                                                           # descending score
  lab = (packed & np.uint64(1)).astype(bool)
  ss = (~(packed >> np.uint64(1)).astype(np.uint32))
  ss = np.where(ss >> 31 == 1, ss & np.uint32(0x7FFFFFFF), ~ss).view(np.float32)
  ends = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), ss.size - 1]           # last of each tie group
  tps = np.cumsum(lab, dtype=np.float64)[ends]
  fps = 1.0 + ends - tps
  thr = ss[ends].astype(np.float64)
  if fps.size > 2:
    keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
    fps, tps, thr = fps[keep], tps[keep], thr[keep]
  fps, tps, thr = np.r_[0.0, fps], np.r_[0.0, tps], np.r_[np.inf, thr]
  return fps / fps[-1], tps / tps[-1], thr


def tar_at_far(scores: np.ndarray, is_genuine: np.ndarray,
               fars: Sequence[float] = (1e-4, 1e-5)) -> TarAtFar:
  """TAR at FAR, the insightface IJB 1:1 way (docs/evaluation.md, "FR sanity"): ROC of all pairs
  (roc_curve), both arrays flipped, the point minimising |fpr - far| (first after the flip),
  its tpr. The threshold comes from the impostor scores: TAR = genuines with score >= it."""
  fars = np.atleast_1d(np.asarray(fars, np.float64))
  fpr, tpr, thr = roc_curve(scores, is_genuine)
  fpr, tpr, thr = fpr[::-1], tpr[::-1], thr[::-1]
  i = np.argmin(np.abs(fpr[None, :] - fars[:, None]), axis=1)           # first minimum
  return TarAtFar(fars, tpr[i], fpr[i], thr[i])


SANITY_FARS = (1e-4, 1e-5)


def fr_sanity(pair_kind: str, scores: np.ndarray, is_genuine: np.ndarray) -> dict[str, Any]:
  """The numbers that show at once whether the FR model, the data and the channel order were
  loaded right (docs/evaluation.md, "FR sanity"): image-pair sets, insightface 10-fold accuracy;
  template sets (IJB-C), TAR at FAR 1e-4 and 1e-5 (insightface IJB 1:1)."""
  scores = np.asarray(scores, np.float32)
  if pair_kind == "template":
    t = tar_at_far(scores, is_genuine, SANITY_FARS)
    return {"kind": "tar_at_far",
            **{f"tar@far={far:.0e}": float(v) for far, v in zip(t.far_target, t.tar)}}
  return {"kind": "accuracy", "accuracy_10fold": verification_accuracy(scores, is_genuine)}
