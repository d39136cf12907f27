"""The EDC written out plainly from docs/evaluation.md (loops, float64), for tests/test_edc.py and
tests/test_bootstrap.py: CR-FIQA's rule (§6 fiqa), the ISO rule (§5.2/§6 iso), both areas (§7),
and the synthetic pair sets both test files use. Slow and literal on purpose."""
from __future__ import annotations

import numpy as np


def ref_fiqa(scores, gen, q, fmr, discard):
  """CR-FIQA getFNMRFixedTH + calculate_roc + get_fmr_op, with a stable sort. Returns fnmr, thr."""
  n = len(scores)
  order = np.argsort(q, kind="stable")
  fnmrs, thrs = [], []
  for r in discard:
    keep = order[int(r * n):]
    s, g = scores[keep].astype(np.float64), gen[keep]
    gs, im = s[g], s[~g]
    u = np.unique(np.concatenate([gs, im]))                 # every distinct observed value
    fm = (len(im) - np.searchsorted(np.sort(im), u, side="left")).astype(np.float64)  # #{imp >= u}
    with np.errstate(invalid="ignore", divide="ignore"):
      k = int(np.argmin(np.abs(fm / len(im) - fmr)))        # first on ties
    thr = u[k]
    fnmrs.append(1 - np.sum(gs > thr) / len(gs))
    thrs.append(thr)
  return np.array(fnmrs), np.array(thrs)


def ref_iso(scores, gen, q, fmr, discard):
  """Fixed threshold from all impostors, genuine only, whole tie groups. fnmr, done, step curve."""
  im = np.sort(scores[~gen].astype(np.float64))[::-1]
  k = int(np.floor(fmr * len(im)))
  t = np.nextafter(np.float32(im[k]), np.float32(np.inf))
  assert np.sum(im >= t) / len(im) <= fmr and np.sum(im >= im[k]) / len(im) > fmr
  gs, gq = scores[gen], q[gen]
  o = np.argsort(gq, kind="stable")
  gs, gq = gs[o], gq[o]
  n = len(gs)
  starts = [0] + [i for i in range(1, n) if gq[i] != gq[i - 1]]
  curve_x = [d / n for d in starts]
  curve_y = [np.sum(gs[d:] < t) / (n - d) for d in starts]
  fnmr, done = [], []
  for r in discard:
    d = max(x for x in starts if x <= r * n)
    fnmr.append(np.sum(gs[d:] < t) / (n - d))
    done.append(d / n)
  return np.array(fnmr), np.array(done), t, (curve_x + [1.0], curve_y + [0.0])


def ref_step_pauc(xs, ys, limit):
  """Schlett compute_edc_pauc, literally."""
  if limit == 0:
    return 0.0
  area = 0.0
  for i in range(len(xs)):
    if i == len(xs) - 1 or xs[i + 1] >= limit:
      area += ys[i] * (limit - xs[i])
      break
    area += ys[i] * (xs[i + 1] - xs[i])
  return area


def ref_trapezoid(x, y):
  return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
def make_data(seed, p=3000, gen_frac=0.3, n_sets=3, tied=False, tied_scores=False):
  rng = np.random.default_rng(seed)
  gen = rng.random(p) < gen_frac
  return scores_and_quality(rng, gen, n_sets, tied, tied_scores)


def scores_and_quality(rng, gen, n_sets, tied, tied_scores):
  """(scores, gen, quality [S, P]): genuine scores high, quality correlated with the score."""
  p = len(gen)
  latent = rng.standard_normal(p)
  scores = np.where(gen, 0.5 + 0.25 * rng.standard_normal(p) + 0.1 * latent,
                    0.05 * rng.standard_normal(p)).astype(np.float32)
  if tied_scores:
    scores = (np.round(scores * 40) / 40).astype(np.float32)
  q = latent[None] + rng.standard_normal((n_sets, p))
  if tied:
    q = np.round(q * 2) / 2                                 # ~15 distinct values
  return scores, gen, q.astype(np.float32)


def boot_data(seed, p=360, n_gen=120, n_sets=2, tied=True, tied_scores=True, n_ids=24):
  """Fixed genuine count (one compile for every seed); identities per image side."""
  rng = np.random.default_rng(seed)
  gen = np.zeros(p, bool)
  gen[rng.choice(p, n_gen, replace=False)] = True
  ids = rng.integers(0, n_ids, (p, 2))
  ids[gen, 1] = ids[gen, 0]                                  # a genuine pair: one identity
  ids[~gen, 1] = (ids[~gen, 0] + 1 + rng.integers(0, n_ids - 1, (~gen).sum())) % n_ids
  return (*scores_and_quality(rng, gen, n_sets, tied, tied_scores), ids)


def tied_score_data(seed, p=3000, n_sets=3):
  """Comparison scores rounded to 0.01 (many ties), genuines 1.5 higher, uniform qualities."""
  rng = np.random.default_rng(seed)
  s = np.round(rng.standard_normal(p), 2).astype(np.float32)
  g = rng.random(p) < 0.2
  s[g] += 1.5
  return s, g, rng.random((n_sets, p)).astype(np.float32)
