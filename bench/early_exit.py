"""Early-exit compute: wall time per fixed exit, and the adaptive cascade against the full pass.

  python -m bench.early_exit [--mode=token] [--batch=16] [--rounds=5] [--images=96]
      [--exits=3,6,9,12] [--leave=0.3] [--thresholds=thresholds.json] [--tau=...]
      [--model_dir=out/demo/train/model] [--skip_fixed]

Model: random-weight ViT-S (ViT-FIQA, patch 9, width 512, depth 12, fp32), or a converted model
directory (`--model_dir`, e.g. the demo's trained model), scored through the public API
(exfiqa_jax.inference.QualityModel; docs/methods.md "Fixed exits", "Adaptive cascade"):
  (1) fixed exit k = 1..L: `run_batch(images, exit=k)`, the program truncated after block k;
      reported as time(k) / time(L) against the target k/L + 0.05;
  (2) cascade vs full pass on `--images` images: `cascade(images, thresholds)` against
      `score(images)` (every exit, one program): measured images/s, mean GFLOPs per image
      (exfiqa_jax.models.gflops, the one cost formula), agreement with the full-depth decision
      score_L >= tau and the fraction decided at each exit. Thresholds come from `--thresholds`
      (a CascadeThresholds JSON, e.g. the early_exit task's calibration) or, by default, from
      quantiles of the full pass on the same images: at each early exit the lowest and highest
      `--leave`/2 of the scores leave (tau = the median exit-L score).
Every route is warmed up (compiled), then timed once per round in a shuffled order so that load
from other jobs falls on all alike; figures are medians over rounds. The ceiling it ran under is
this run's XLA f32 matmul rate (a 2048² jnp.dot), timed in the same rounds. Compare ratios from
one run, not absolute numbers. Default run ≈ 2-3 min on an idle 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax import inference, models
from exfiqa_jax.models import exits, vit


def time_interleaved(routes: dict[str, Callable[[], object]], rounds: int, seed: int = 0
                     ) -> tuple[dict[str, float], dict[str, float]]:
  """Median (wall, process CPU) seconds per route: one warm-up call each, then `rounds`
  shuffled rounds. CPU seconds move less with other jobs' load on a shared machine."""
  for fn in routes.values():
    fn()
  order = np.random.default_rng(seed)
  wall: dict[str, list[float]] = {name: [] for name in routes}
  cpu: dict[str, list[float]] = {name: [] for name in routes}
  for _ in range(rounds):
    for name in order.permutation(list(routes)):
      start, start_cpu = time.perf_counter(), time.process_time()
      routes[name]()
      wall[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  return ({name: statistics.median(ts) for name, ts in wall.items()},
          {name: statistics.median(ts) for name, ts in cpu.items()})


def matmul_route(n: int = 2048) -> tuple[Callable[[], object], float]:
  """A 2048² f32 XLA matmul and its GFLOP (2·n³)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  return (lambda: dot(a, b).block_until_ready()), 2 * n ** 3 / 1e9


def random_model(mode: str, batch: int) -> inference.QualityModel:
  cfg = vit.vit_s_config(mode)
  module = models.get_model(cfg)
  variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 112, 112, 3), np.float32))
  return inference.QualityModel(module, variables, cfg.to_dict(), batch_size=batch)


def quantile_thresholds(full: np.ndarray, exit_set: tuple[int, ...], leave: float,
                        tau: float | None) -> exits.CascadeThresholds:
  """At each early exit the lowest / highest leave/2 of the full pass's scores leave."""
  reject = tuple(float(np.quantile(full[:, e - 1], leave / 2)) for e in exit_set[:-1])
  accept = tuple(float(np.quantile(full[:, e - 1], 1 - leave / 2)) for e in exit_set[:-1])
  tau = float(np.median(full[:, -1])) if tau is None else tau
  return exits.CascadeThresholds(exit_set, reject, accept, tau)


def bench_model(label: str, model: inference.QualityModel, args, flop_route) -> None:
  depth, cfg = model.num_exits, model.model_config
  per_exit, _ = models.gflops(cfg)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (args.images, model.image_size, model.image_size, 3),
                        dtype=np.uint8)
  batch = images[:model.batch_size]
  matmul, matmul_gflop = flop_route
  print(f"## {label}: mode {model.mode}, depth {depth}, {cfg.get('width')} wide, batch "
        f"{model.batch_size}, {jax.device_count()} {jax.devices()[0].platform} device(s)")
  print()

  if not args.skip_fixed:
    routes = {f"k{k}": (lambda k=k: model.run_batch(batch, exit=k)) for k in range(1, depth + 1)}
    routes["matmul"] = matmul
    sec, cpu = time_interleaved(routes, args.rounds)
    ceiling = matmul_gflop / sec["matmul"]
    full_t = sec[f"k{depth}"]
    print(f"Fixed exits: median of {args.rounds} interleaved rounds, {model.batch_size} images "
          f"per call. Ceiling: XLA f32 matmul {ceiling:.0f} GFLOP/s (same rounds) = "
          f"{ceiling / per_exit[-1]:.1f} images/s at {per_exit[-1]:.2f} GFLOPs/image.")
    print()
    print("| exit k | GFLOPs/image | images/s | % of matmul ceiling | time(k)/time(L) | "
          "CPU time ratio | target k/L + 0.05 |")
    print("|---|---|---|---|---|---|---|")
    for k in range(1, depth + 1):
      t = sec[f"k{k}"]
      rate = model.batch_size / t
      ratio, target = t / full_t, k / depth + 0.05
      print(f"| {k} | {per_exit[k - 1]:.2f} | {rate:.1f} | "
            f"{100 * rate * per_exit[k - 1] / ceiling:.0f}% | {ratio:.3f} "
            f"({'met' if ratio <= target else 'missed'}) | {cpu[f'k{k}'] / cpu[f'k{depth}']:.3f} "
            f"| {target:.3f} |")
    print()

  exit_set = tuple(int(e) for e in args.exits.split(",")) if args.exits else \
      exits.default_exits(depth)
  full = model.score(images)
  if args.thresholds:
    with open(args.thresholds, encoding="utf-8") as f:
      thresholds = exits.CascadeThresholds.from_dict(json.load(f))
  else:
    thresholds = quantile_thresholds(full["exit_scores"], exit_set, args.leave, args.tau)
  result = model.cascade(images, thresholds)
  sec, cpu = time_interleaved({"full": lambda: model.score(images),
                               "cascade": lambda: model.cascade(images, thresholds),
                               "matmul": matmul}, args.rounds, seed=1)
  ceiling = matmul_gflop / sec["matmul"]
  engine = model._cascades[tuple(thresholds.exits)]
  stats = engine.last_stats
  n = len(images)
  full_dec = full["exit_scores"][:, -1] >= thresholds.tau
  agreement = float(np.mean(result.accept == full_dec))
  g_full = float(per_exit[-1])
  g_cascade = float(result.gflops.mean())
  r_full, r_cascade = n / sec["full"], n / sec["cascade"]
  print(f"Cascade vs full pass on {n} images, exits {thresholds.exits}, median of {args.rounds} "
        f"interleaved rounds; ceiling this run: XLA f32 matmul {ceiling:.0f} GFLOP/s.")
  print(f"thresholds: {json.dumps(thresholds.to_dict())}"
        + ("" if args.thresholds else f" (quantiles, leave={args.leave:g} per exit)"))
  print()
  print("| route | images/s | mean GFLOPs/image | achieved GFLOP/s | agreement with full "
        "depth |")
  print("|---|---|---|---|---|")
  print(f"| full pass (every exit, one program) | {r_full:.1f} | {g_full:.2f} | "
        f"{r_full * g_full:.0f} | 100% |")
  print(f"| cascade | {r_cascade:.1f} | {g_cascade:.2f} | {r_cascade * g_cascade:.0f} | "
        f"{100 * agreement:.1f}% |")
  print()
  decided = [float(np.mean(result.exit == e)) for e in thresholds.exits]
  padded = sum(stats["padded_rows"]) / max(1, sum(stats["rows"]))
  print("| ratio | value |")
  print("|---|---|")
  print(f"| images/s cascade / full | {r_cascade / r_full:.2f}x (CPU time: "
        f"{cpu['full'] / cpu['cascade']:.2f}x) |")
  print(f"| GFLOPs full / cascade (the compute ratio) | {g_full / g_cascade:.2f}x |")
  print(f"| measured speed-up / compute ratio | "
        f"{(r_cascade / r_full) / (g_full / g_cascade):.2f} |")
  print(f"| rows computed incl. padding / rows needed | {padded:.3f} |")
  print("| fraction decided at exit " + ", ".join(str(e) for e in thresholds.exits) + " | "
        + ", ".join(f"{100 * d:.0f}%" for d in decided) + " |")
  print()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mode", default="token", choices=vit.QUALITY_MODES,
                      help="random ViT-S head (token = ViT-FIQA (T), crfiqa = (C))")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
  parser.add_argument("--images", type=int, default=96, help="images the cascade decides")
  parser.add_argument("--exits", default="", help="cascade exits, e.g. 3,6,9,12 (default)")
  parser.add_argument("--leave", type=float, default=0.3,
                      help="default thresholds: fraction leaving at each early exit")
  parser.add_argument("--tau", type=float, default=None,
                      help="full-depth threshold (default: the median exit-L score)")
  parser.add_argument("--thresholds", default="", help="CascadeThresholds JSON file")
  parser.add_argument("--model_dir", default="", help="also bench this converted model")
  parser.add_argument("--skip_random", action="store_true", help="only --model_dir")
  parser.add_argument("--skip_fixed", action="store_true", help="cascade table only")
  args = parser.parse_args()
  if min(args.batch, args.rounds, args.images) < 1 or not 0 < args.leave < 1:
    raise ValueError("--batch, --rounds, --images must be >= 1 and --leave in (0, 1)")
  started = time.time()
  load_before = os.getloadavg()[0]
  print(f"jax {jax.__version__}, {os.cpu_count()} cores, load average {load_before:.1f}; other "
        "jobs share the machine: timings are noisy, compare ratios from this run.")
  print()
  flop_route = matmul_route()
  if not args.skip_random:
    bench_model(f"random-weight ViT-S ({args.mode})", random_model(args.mode, args.batch),
                args, flop_route)
  if args.model_dir:
    bench_model(args.model_dir, inference.load(args.model_dir, batch_size=args.batch), args,
                flop_route)
  print(f"total {time.time() - started:.0f} s; load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
