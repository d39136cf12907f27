"""EDC engine and its bootstrap at IJB-C and LFW scale vs vectorised NumPy, ratios from ONE run.

  python -m bench.edc [--pairs=15658489] [--genuine=19557] [--sets=26] [--numpy_sets=1]
                      [--boot_sets=4] [--boot_resamples=20] [--lfw_resamples=200] [--skip_edc]

Three targets (docs/evaluation.md, "Speed"), each printed with the machine's ceiling:
  1. LFW size (6,000 pairs, 3,000 genuine), 12 quality sets x 3 FMRs x 200 resamples <= 15 s
     (fiqa; first call in this process, compile included, and warm).
  2. IJB-C size: 20 resamples (pair unit) of `--boot_sets` sets <= 20x one point estimate of the
     same sets (both warm).
  3. IJB-C-size EDC >= 20x the vectorised NumPy reference (both modes).
Synthetic IJB-C-like data: 23,124 templates (LFW size: 12,000 images), pair quality = min of two
template qualities (heavily tied, as on IJB-C), S quality sets, FMR {1e-3, 1e-4}, discard
0..0.95 (20 levels). NumPy in the FIQA mode is slow (one stable argsort per set + a ROC per
level): it runs on `--numpy_sets` sets and is extrapolated linearly to all sets (marked); its
FNMRs are compared with ours on those sets. `--pairs` smaller than IJB-C (e.g. 2,000,000) is
for a quick look: targets 2 and 3 are then extrapolated linearly in the pair count and marked.
Ceiling: one XLA streaming pass over P int32 (a scatter-add into a small table, the unit of the
engine's histogram passes) and NumPy's packed-key sort, timed here; the floors assume one
histogram pass to find the quality cuts + one counting pass per set (point estimate) or per
(set, resample) (bootstrap). Peak memory = resource.getrusage maxrss. Machines are shared
(load average printed): compare ratios from one run.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax.metrics import bootstrap, edc

FMRS = (1e-3, 1e-4)


def synthetic(pairs: int, genuine: int, sets: int, seed: int = 0, n_templates: int = 23124):
  rng = np.random.default_rng(seed)
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


def timed(fn, *args, **kwargs):
  t0 = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - t0


def ceiling(pairs: int) -> dict[str, float]:
  """Primitive timings on this machine: one XLA streaming pass over `pairs` int32 (scatter-add
  into a 15k-entry table, best of 5) and NumPy's sort of packed uint64 keys."""
  rng = np.random.default_rng(1)
  idx = jnp.asarray(rng.integers(0, pairs, pairs).astype(np.int32))
  w = jnp.asarray(rng.integers(0, 3, pairs).astype(np.int32))
  f = jax.jit(lambda i, v: jnp.zeros((pairs // 1024 + 1,), jnp.int32).at[i // 1024].add(v))
  jax.block_until_ready(f(idx, w))
  passes = []
  for _ in range(5):
    _, t = timed(lambda: jax.block_until_ready(f(idx, w)))
    passes.append(t)
  keys = rng.integers(0, 1 << 63, pairs, dtype=np.uint64)
  _, t_sort = timed(np.sort, keys)
  return {"pass": min(passes), "sort": t_sort}


def lfw_bootstrap(resamples: int) -> list[tuple]:
  """Target 1: LFW-size bootstrap, both modes; first call (compile included) and warm."""
  scores, gen, q = synthetic(6000, 3000, 12, seed=1, n_templates=12000)
  fmrs = (1e-2, 1e-3, 1e-4)
  rows = []
  for mode in ("fiqa", "iso"):
    limit = edc.PAUC_LIMIT if mode == "fiqa" else 0.2
    _, first = timed(bootstrap.bootstrap, scores, gen, q, fmrs, mode=mode, limit=limit,
                     num_resamples=resamples)
    res, warm = timed(bootstrap.bootstrap, scores, gen, q, fmrs, mode=mode, limit=limit,
                      num_resamples=resamples)
    _, point = timed(edc.edc_curves, scores, gen, q, fmrs, mode=mode, pauc_limit=limit)
    rows.append((mode, first, warm, point, int(np.isfinite(res.samples).sum())))
  return rows


def ijbc_bootstrap(scores, gen, q, resamples: int) -> tuple[float, float, float]:
  """Target 2: point estimate of the sets vs `resamples` bootstrap resamples (both warm)."""
  edc.edc_curves(scores, gen, q[:1], FMRS, pauc_limit=edc.PAUC_LIMIT, set_batch=1)
  res, point = timed(edc.edc_curves, scores, gen, q, FMRS, pauc_limit=edc.PAUC_LIMIT,
                     set_batch=1)
  # one resample per device call (what IJB-C size gets anyway): the warm-up compiles the shapes
  bootstrap.bootstrap(scores, gen, q, FMRS, num_resamples=1, point=res.pauc, resample_batch=1)
  _, boot = timed(bootstrap.bootstrap, scores, gen, q, FMRS, num_resamples=resamples,
                  point=res.pauc, resample_batch=1)
  return point, boot, maxrss_gb()


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--pairs", type=int, default=15_658_489)
  ap.add_argument("--genuine", type=int, default=19_557)
  ap.add_argument("--sets", type=int, default=26)
  ap.add_argument("--numpy_sets", type=int, default=1)
  ap.add_argument("--boot_sets", type=int, default=4)
  ap.add_argument("--boot_resamples", type=int, default=20)
  ap.add_argument("--lfw_resamples", type=int, default=200)
  ap.add_argument("--skip_edc", action="store_true", help="skip target 3 (EDC vs NumPy)")
  args = ap.parse_args()
  ijbc = 15_658_489
  scale = ijbc / args.pairs
  mark = "" if args.pairs == ijbc else (f" (measured at {args.pairs:,} pairs; times at IJB-C "
                                        f"size extrapolated linearly, x{scale:.2f})")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}", flush=True)
  ceil = ceiling(args.pairs)
  print(f"ceiling at {args.pairs:,} pairs: one XLA streaming pass {ceil['pass'] * 1e3:.0f} ms, "
        f"NumPy packed-key sort {ceil['sort'] * 1e3:.0f} ms", flush=True)

  # Target 1: LFW size.
  lfw = lfw_bootstrap(args.lfw_resamples)
  lfw_pass = ceil["pass"] * 6000 / args.pairs
  print(f"\n### Target 1: LFW size (6,000 pairs), 12 sets x 3 FMRs x {args.lfw_resamples} "
        "resamples, target <= 15 s\n")
  print("| mode | first call incl. compile (s) | warm (s) | point estimate, warm (s) | "
        "finite pAUC samples | floor: 2 passes per (set, resample) (s) | target met |")
  print("|---|---|---|---|---|---|---|")
  for mode, first, warm, point, n in lfw:
    print(f"| {mode} | {first:.1f} | {warm:.2f} | {point:.3f} | {n:,} | "
          f"{2 * lfw_pass * 12 * args.lfw_resamples:.2f} | {'yes' if first <= 15 else 'NO'} |")

  t0 = time.perf_counter()
  scores, gen, q = synthetic(args.pairs, args.genuine, max(args.sets, args.boot_sets))
  print(f"\ndata: {args.pairs:,} pairs, {args.genuine:,} genuine, {q.shape[0]} quality sets "
        f"({time.perf_counter() - t0:.1f} s, maxrss {maxrss_gb():.2f} GB)", flush=True)

  # Target 2: bootstrap vs point estimate at IJB-C size.
  point, boot, rss = ijbc_bootstrap(scores, gen, q[:args.boot_sets], args.boot_resamples)
  ratio = boot / point
  print(f"\n### Target 2: {args.boot_resamples} resamples vs one point estimate, "
        f"{args.boot_sets} sets, {args.pairs:,} pairs{mark}, target <= 20x\n")
  print("| point estimate (s) | bootstrap (s) | per resample (s) | bootstrap / point | "
        "floor: 2 passes per (set, resample) (s) | peak RSS (GB) | target met |")
  print("|---|---|---|---|---|---|---|")
  if scale != 1:
    print(f"| ~{point * scale:.1f} (extrapolated) | ~{boot * scale:.0f} (extrapolated) | | | | | |")
  print(f"| {point:.2f} | {boot:.1f} | {boot / args.boot_resamples:.2f} | {ratio:.1f}x | "
        f"{2 * ceil['pass'] * args.boot_sets * args.boot_resamples:.1f} | {rss:.2f} | "
        f"{'yes' if ratio <= 20 else 'NO'} |", flush=True)
  if args.skip_edc:
    return

  # Target 3: EDC vs NumPy.
  rows = []
  for mode in ("fiqa", "iso"):
    (_, first) = timed(edc.edc_curves, scores, gen, q[:1], FMRS, mode=mode, set_batch=1)
    res, ours = timed(edc.edc_curves, scores, gen, q[:args.sets], FMRS, mode=mode, set_batch=1)
    rss = maxrss_gb()
    k = args.numpy_sets if mode == "fiqa" else args.sets
    ref_fn = numpy_fiqa if mode == "fiqa" else numpy_iso
    t0 = time.perf_counter()
    ref = np.stack([ref_fn(scores, gen, q[s], FMRS, edc.FIQA_DISCARD) for s in range(k)])
    npt = (time.perf_counter() - t0) * args.sets / k
    diff = float(np.max(np.abs(ref - res.fnmr[:k])))
    rows.append((mode, ours, first, npt, k, diff, rss))
  print(f"\n### Target 3: EDC vs vectorised NumPy, {args.pairs:,} pairs{mark}, target >= 20x\n")
  print("| mode | curves | ours (s) | 1-set call incl. compile (s) | NumPy (s) | speed-up | "
        "ceiling: NumPy / 2 passes per set | max |ΔFNMR| vs NumPy | peak RSS (GB) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for mode, ours, first, npt, k, diff, rss in rows:
    est = "" if k == args.sets else f" (extrapolated from {k} set{'s' if k > 1 else ''})"
    print(f"| {mode} | {args.sets * len(FMRS)} | {ours:.1f} | {first:.1f} | {npt:.1f}{est} | "
          f"{npt / ours:.1f}x | {npt / (2 * ceil['pass'] * args.sets):.0f}x | {diff:.1e} | "
          f"{rss:.2f} |")
  print(f"\nfinal load average {os.getloadavg()[0]:.1f}, maxrss {maxrss_gb():.2f} GB")


if __name__ == "__main__":
  main()
