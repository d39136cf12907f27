"""FR sanity numbers (exfiqa_jax/metrics/verification.py) against plain references written here:
the per-threshold loop that `verification_accuracy` replaced, and sklearn's roc_curve algorithm
(drop_intermediate=True) + insightface's IJB TAR@FAR read-out, in loops. Exact equality: both
sides count integers and divide in float64 the same way.
"""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.metrics import verification


def loop_accuracy(scores, is_genuine, folds=10):
  """The former definition, literally."""
  scores, is_genuine = np.asarray(scores, np.float64), np.asarray(is_genuine, bool)
  idx = np.arange(len(scores))
  accs = []
  for f in range(min(folds, len(scores))):
    test = idx % folds == f
    train = ~test
    thr = np.unique(scores[train])
    acc_train = [np.mean((scores[train] >= t) == is_genuine[train]) for t in thr]
    best = thr[int(np.argmax(acc_train))]
    accs.append(np.mean((scores[test] >= best) == is_genuine[test]))
  return float(np.mean(accs))


def plain_roc_curve(label, score):
  """sklearn.metrics.roc_curve(label, score) (defaults), step by step with Python loops."""
  order = sorted(range(len(score)), key=lambda i: -float(score[i]))
  s = [float(score[i]) for i in order]
  y = [bool(label[i]) for i in order]
  fps, tps, thr, tp, fp = [], [], [], 0, 0
  for i in range(len(s)):
    tp += y[i]
    fp += not y[i]
    if i == len(s) - 1 or s[i + 1] != s[i]:
      fps.append(fp), tps.append(tp), thr.append(s[i])
  if len(fps) > 2:                      # drop_intermediate: drop collinear interior points
    keep = [0] + [i for i in range(1, len(fps) - 1)
                  if fps[i + 1] - 2 * fps[i] + fps[i - 1] != 0
                  or tps[i + 1] - 2 * tps[i] + tps[i - 1] != 0] + [len(fps) - 1]
    fps, tps, thr = [fps[i] for i in keep], [tps[i] for i in keep], [thr[i] for i in keep]
  fps, tps, thr = [0] + fps, [0] + tps, [np.inf] + thr
  return (np.array(fps, float) / fps[-1], np.array(tps, float) / tps[-1], np.array(thr))


def insightface_tar(label, score, fars):
  """insightface eval_ijbc.py: flipud, then min(zip(|fpr - x|, index))."""
  fpr, tpr, _ = plain_roc_curve(label, score)
  fpr, tpr = np.flipud(fpr), np.flipud(tpr)
  out = []
  for x in fars:
    _, i = min(zip(abs(fpr - x), range(len(fpr))))
    out.append(tpr[i])
  return np.array(out)


def pair_data(seed, p, tied=False):
  rng = np.random.default_rng(seed)
  gen = rng.random(p) < 0.4
  s = np.where(gen, 0.45 + 0.2 * rng.standard_normal(p), 0.1 * rng.standard_normal(p))
  if tied:
    s = np.round(s * 20) / 20
  return s.astype(np.float32), gen


@pytest.mark.parametrize("p,folds,tied", [(600, 10, False), (600, 10, True), (37, 10, True),
                                          (5, 10, False), (200, 3, True)])
def test_accuracy_equals_loop_definition(p, folds, tied):
  s, g = pair_data(p + folds, p, tied)
  assert verification.verification_accuracy(s, g, folds) == loop_accuracy(s, g, folds)


def test_verification_accuracy_folds():
  rng = np.random.default_rng(4)
  genuine = rng.random(400) < 0.5
  scores = np.where(genuine, 0.6, 0.2) + rng.normal(0, 0.05, 400)
  assert verification.verification_accuracy(scores, genuine) > 0.99       # nearly separable
  flipped = verification.verification_accuracy(rng.random(400), genuine)
  assert 0.3 < flipped < 0.7                                          # chance


def test_accuracy_bad_input():
  with pytest.raises(ValueError, match=">= 2 pairs"):
    verification.verification_accuracy(np.zeros(1), np.ones(1, bool))


@pytest.mark.parametrize("seed,tied", [(0, False), (1, True), (2, True)])
def test_tar_at_far_equals_plain_roc_curve(seed, tied):
  s, g = pair_data(seed, 4000, tied)
  fars = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
  got = verification.tar_at_far(s, g, fars)
  np.testing.assert_array_equal(got.tar, insightface_tar(g, s, fars))
  fpr, tpr, thr = verification.roc_curve(s, g)
  pf, pt, pth = plain_roc_curve(g, s)
  np.testing.assert_array_equal(fpr, pf)
  np.testing.assert_array_equal(tpr, pt)
  np.testing.assert_array_equal(thr, pth)
  # the threshold comes from the impostors; TAR = genuines at or above it
  for k in range(len(fars)):
    assert got.tar[k] == np.mean(s[g] >= got.threshold[k])
    assert got.far[k] == np.mean(s[~g] >= got.threshold[k])


def test_drop_intermediate_matters():
  """Equal steps of one genuine + one impostor tie are collinear: sklearn drops their interior
  points, and the nearest-FAR point moves with them (as in insightface's numbers)."""
  s = np.array([5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0], np.float32)
  g = np.array([1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
  fpr, _, _ = verification.roc_curve(s, g)
  assert len(fpr) < len(np.unique(s)) + 1
  np.testing.assert_array_equal(verification.tar_at_far(s, g, (0.2, 0.35)).tar,
                                insightface_tar(g, s, (0.2, 0.35)))
