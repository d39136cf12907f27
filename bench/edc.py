"""EDC engine at IJB-C scale vs a vectorised NumPy implementation of the same rules, same run.

  python -m bench.edc [--pairs=15658489] [--genuine=19557] [--sets=26] [--numpy_sets=1]

Synthetic IJB-C-like data: 23,124 templates, pair quality = min of two template qualities (so
heavily tied, as on IJB-C), S quality sets, FMR {1e-3, 1e-4}, discard 0..0.95 (20 levels), both
modes. NumPy in the FIQA mode is slow (one stable argsort per set + a ROC per level): it runs on
`--numpy_sets` sets and is extrapolated linearly to all sets (marked in the table); its FNMRs are
compared with ours on those sets. Peak memory = resource.getrusage maxrss of the process.
Machines are shared: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import resource
import time

import jax
import numpy as np

from exfiqa_jax.eval import edc

FMRS = (1e-3, 1e-4)


def synthetic(pairs: int, genuine: int, sets: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  n_templates = 23124
  t = rng.integers(0, n_templates, (pairs, 2))
  latent = rng.random(n_templates).astype(np.float32)
  gen = np.zeros(pairs, bool)
  gen[rng.choice(pairs, genuine, replace=False)] = True
  lp = np.minimum(latent[t[:, 0]], latent[t[:, 1]])
  scores = np.where(gen, 0.25 + 0.5 * lp + 0.1 * rng.standard_normal(pairs, np.float32),
                    0.07 * rng.standard_normal(pairs, np.float32)).astype(np.float32)
  del lp
  q = np.empty((sets, pairs), np.float32)
  for s in range(sets):
    tq = (latent + (0.2 + 0.05 * s) * rng.standard_normal(n_templates)).astype(np.float32)
    np.minimum(tq[t[:, 0]], tq[t[:, 1]], out=q[s])
  return scores, gen, q


def numpy_fiqa(scores, gen, q, fmrs, discard):
  """Vectorised NumPy, CR-FIQA rules (stable sort, ROC over every distinct value per level)."""
  n = scores.size
  order = np.argsort(q, kind="stable")
  out = np.empty((len(fmrs), len(discard)))
  for r, d in enumerate(discard):
    keep = order[int(d * n):]
    s, g = scores[keep], gen[keep]
    o = np.argsort(s, kind="stable")
    ss, lab = s[o], g[o]
    u, first = np.unique(ss, return_index=True)
    n_imp_below = first - np.cumsum(lab)[first] + lab[first]          # impostors with s < u
    n_imp = (~g).sum()
    fm = (n_imp - n_imp_below) / n_imp
    gs = np.sort(s[g])
    for f, fmr in enumerate(fmrs):
      thr = u[np.argmin(np.abs(fm - fmr))]
      out[f, r] = 1 - (gs.size - np.searchsorted(gs, thr, side="right")) / gs.size
  return out


def numpy_iso(scores, gen, q, fmrs, discard):
  """Vectorised NumPy, ISO rules (fixed threshold, genuine only, whole tie groups)."""
  imp = scores[~gen]
  n_imp = imp.size
  gs, gq = scores[gen], q[gen]
  o = np.argsort(gq, kind="stable")
  gs, gq = gs[o], gq[o]
  n = gs.size
  starts = np.flatnonzero(np.r_[True, gq[1:] != gq[:-1]])
  d = starts[np.searchsorted(starts, (np.asarray(discard) * n).astype(np.int64), side="right") - 1]
  out = np.empty((len(fmrs), len(discard)))
  for f, fmr in enumerate(fmrs):
    k = int(np.floor(fmr * n_imp))
    v = -np.partition(-imp, k)[k]
    t = np.nextafter(np.float32(v), np.float32(np.inf))
    suffix = np.r_[np.cumsum((gs < t)[::-1])[::-1], 0]
    out[f] = suffix[d] / (n - d)
  return out


def maxrss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--pairs", type=int, default=15_658_489)
  ap.add_argument("--genuine", type=int, default=19_557)
  ap.add_argument("--sets", type=int, default=26)
  ap.add_argument("--numpy_sets", type=int, default=1)
  args = ap.parse_args()
  t0 = time.perf_counter()
  scores, gen, q = synthetic(args.pairs, args.genuine, args.sets)
  print(f"data: {args.pairs:,} pairs, {args.genuine:,} genuine, {args.sets} quality sets "
        f"({time.perf_counter() - t0:.1f} s, maxrss {maxrss_gb():.2f} GB)", flush=True)
  rows = []
  # Warm-up compile on a small slice with the same set batch (1): compile time is reported apart.
  for mode in ("fiqa", "iso"):
    t0 = time.perf_counter()
    edc.edc_curves(scores, gen, q[:1], FMRS, mode=mode, set_batch=1)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = edc.edc_curves(scores, gen, q, FMRS, mode=mode, set_batch=1)
    ours = time.perf_counter() - t0
    rss = maxrss_gb()
    k = args.numpy_sets if mode == "fiqa" else args.sets
    ref_fn = numpy_fiqa if mode == "fiqa" else numpy_iso
    t0 = time.perf_counter()
    ref = np.stack([ref_fn(scores, gen, q[s], FMRS, edc.FIQA_DISCARD) for s in range(k)])
    npt = (time.perf_counter() - t0) * args.sets / k
    diff = float(np.max(np.abs(ref - res.fnmr[:k])))
    rows.append((mode, ours, first, npt, k, diff, rss))
  print(f"\n| mode | curves | ours (s) | 1-set call incl. compile (s) | NumPy (s) | speed-up | "
        f"max |ΔFNMR| vs NumPy | peak RSS (GB) |")
  print("|---|---|---|---|---|---|---|---|")
  for mode, ours, first, npt, k, diff, rss in rows:
    est = "" if k == args.sets else f" (extrapolated from {k} set{'s' if k > 1 else ''})"
    print(f"| {mode} | {args.sets * len(FMRS)} | {ours:.1f} | {first:.1f} | {npt:.1f}{est} | "
          f"{npt / ours:.1f}x | {diff:.1e} | {rss:.2f} |")
  print(f"\njax {jax.__version__}, backend {jax.default_backend()}, final maxrss {maxrss_gb():.2f} GB")


if __name__ == "__main__":
  main()
