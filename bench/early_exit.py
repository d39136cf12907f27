"""Early-exit compute: wall time per fixed exit, and calibrated cascades against the full pass.

  python -m bench.early_exit [--mode=token] [--batch=16] [--rounds=3] [--cal_images=200]
      [--images=128] [--targets=0.95,0.99] [--exits=3,6,9,12] [--model_dir=out/demo/train/model]
      [--skip_fixed]
      [--skip_random]

Models: random-weight ViT-S (ViT-FIQA, patch 9, width 512, depth 12, fp32) and a converted
model directory (`--model_dir`, e.g. the demo's trained model), through the public API
(exfiqa_jax.inference.QualityModel; docs/methods.md "Fixed exits", "Adaptive cascade"). Images:
the synthetic faces' calibration split (exfiqa_jax/evaluation/early_exit.py synthetic_split),
its identities halved: one half calibrates, the other is timed.
  (1) fixed exit k = 1..L: `run_batch(images, exit=k)`, the program truncated after block k,
      reported as time(k) / time(L) against the target k/L + 0.05;
  (2) the cascade calibrated as the early_exit job does (calibrate/early_exit.cascade_columns,
      robust; tau discards 20 %), per agreement target: FLOPs-optimal, cost-aware (the cost
      model measured in this run, models/cascade_cost.py; one full segment where no cascade is
      predicted faster) and cost-aware + streaming (survivors carried across chunks,
      QualityModel.cascade_stream), each fed the held-out images in chunks of one batch as a
      folder is scored, against the full pass (`score`) fed the same chunks: images/s, the
      ratio to the full pass (wall and process CPU time, which other jobs' load moves less),
      and the ratio the cost model predicted for that same run.
Every route is warmed up (compiled), then timed once per round in a shuffled order so that load
from other jobs falls on all alike; figures are medians over rounds. Compare ratios from one
run, not absolute numbers. ViT-S on an idle 2-core CPU: about 10 min.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax import inference, models, parallel, quality_mapping
from exfiqa_jax.calibrate import cascade
from exfiqa_jax.calibrate import early_exit as study
from exfiqa_jax.configs import early_exit as early_exit_config
from exfiqa_jax.evaluation import early_exit as early_exit_study
from exfiqa_jax.models import exits, vit

MIN_SPEEDUP = float(early_exit_config.settings().cascade.min_speedup)   # as the job


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


def faces(cal_images: int, images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(calibration images, their identities, held-out images): the synthetic faces'
  calibration split, identities halved (as the early_exit job's default benchmark)."""
  bench = early_exit_study.synthetic_split(early_exit_config.get_config(), "val")
  ids = np.asarray(bench.extra["identity"])
  first = ids < np.median(np.unique(ids))
  cal_rows, ev_rows = np.flatnonzero(first)[:cal_images], np.flatnonzero(~first)[:images]
  return bench.read(cal_rows)[0], ids[cal_rows], bench.read(ev_rows)[0]


def bench_fixed(model: inference.QualityModel, images: np.ndarray, rounds: int,
                flop_route) -> None:
  """Wall time per fixed exit k against k/L (one batch per call)."""
  depth = model.num_exits
  per_exit, _ = models.gflops(model.model_config)
  batch = images[:model.batch_size]
  matmul, matmul_gflop = flop_route
  routes = {f"k{k}": (lambda k=k: model.run_batch(batch, exit=k)) for k in range(1, depth + 1)}
  routes["matmul"] = matmul
  sec, cpu = time_interleaved(routes, rounds)
  ceiling = matmul_gflop / sec["matmul"]
  full_t = sec[f"k{depth}"]
  print(f"Fixed exits: median of {rounds} interleaved rounds, {model.batch_size} images per "
        f"call. Ceiling: XLA f32 matmul {ceiling:.0f} GFLOP/s (same rounds) = "
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


def calibrated(model: inference.QualityModel, cal: np.ndarray, groups: np.ndarray,
               s_ev: np.ndarray, targets: list[float], cost_model, candidates: tuple[int, ...]
               ) -> dict[tuple[str, float], tuple[dict, exits.CascadeThresholds]]:
  """{(FLOPs-optimal | cost-aware, target): (row, thresholds)}: the cascades calibrated on
  `cal` as the early_exit job does, with their held-out figures on the exit scores `s_ev`."""
  cfg = model.model_config
  s_cal = model.score(cal)["exit_scores"]
  tau, _ = study.pick_tau(s_cal[:, -1], 0.2, resamples=0)
  mapping = quality_mapping.fit_mapping({"exit_scores": s_cal})
  big = exits.bucket_ladder(model.batch_size)[-1]
  out = {}
  for name, seconds in (("FLOPs-optimal", {}),
                        ("cost-aware", {"seconds": lambda e: cost_model.per_image(e, big),
                                        "full_seconds": cost_model.full_per_image(big),
                                        "min_speedup": MIN_SPEEDUP})):
    cols, records = study.cascade_columns(
        s_cal, s_ev, candidates, tau,
        lambda e: exits.cascade_gflops(cfg, e, np.asarray(e)),
        float(models.gflops(cfg)[0][-1]), mapping.columns, targets, groups, **seconds)
    for (_, row), rec in zip(cols, records):
      out[(name, row["target"])] = (row, rec["_thresholds"])
  return out


def predicted_seconds(cost_model, thr: exits.CascadeThresholds, s_ev: np.ndarray,
                      chunks: list[np.ndarray], sizes: tuple[int, ...], stream: bool) -> float:
  """The cost model's seconds for the timed run: chunk by chunk, or as one stream."""
  total = 0.0
  for rows in ([np.concatenate(chunks)] if stream else chunks):
    stage = cascade.simulate_cascade(s_ev[rows], thr.exits, thr.reject, thr.accept,
                                     thr.tau).stage
    total += cost_model.predict_seconds(
        thr.exits, [int(np.sum(stage >= i)) for i in range(len(thr.exits))], sizes)
  return total


def bench_cascades(model: inference.QualityModel, cal: np.ndarray, groups: np.ndarray,
                   ev: np.ndarray, args) -> None:
  """Full pass against the calibrated cascades over `ev` fed in chunks of one batch."""
  started = time.time()
  cost_model = model.cascade_costs(None, repeats=args.cost_repeats)
  candidates = exits.check_exits(
      [int(e) for e in args.exits.split(",")] if args.exits
      else exits.default_exits(model.num_exits), model.num_exits)
  cost_model.prepare(candidates, exits.bucket_ladder(model.batch_size)[-1])   # as the job
  targets = [float(t) for t in args.targets.split(",")]
  s_ev = model.score(ev)["exit_scores"]
  found = calibrated(model, cal, groups, s_ev, targets, cost_model, candidates)
  sizes = exits.bucket_ladder(model.batch_size)
  chunks = [np.arange(i, min(len(ev), i + model.batch_size))
            for i in range(0, len(ev), model.batch_size)]
  routes: dict[str, Callable[[], object]] = {
      "full": lambda: [model.score(ev[c]) for c in chunks]}
  for (name, target), (_, thr) in found.items():
    routes[f"{name}@{target:g}"] = lambda thr=thr: [model.cascade(ev[c], thr) for c in chunks]
    if name == "cost-aware":
      def stream(thr=thr):
        st = model.cascade_stream(thr)
        return [st.push(ev[c]) for c in chunks] + [st.flush()]
      routes[f"streaming@{target:g}"] = stream
  setup = time.time() - started
  sec, cpu = time_interleaved(routes, args.rounds, seed=2)
  n = len(ev)
  full_pred = sum(cost_model.predict_full_seconds(len(c), sizes) for c in chunks)
  print(f"Calibrated cascades over candidate exits {'+'.join(map(str, candidates))}: "
        f"{len(cal)} calibration images, {n} held-out images fed in "
        f"chunks of {model.batch_size}; cost model measured in this run ({cost_model.measured} "
        f"entries; measurement + calibration {setup:.0f} s); median of {args.rounds} "
        "interleaved rounds.")
  print()
  print("| target | route | exits | GFLOPs/image | held-out agreement | images/s | x full pass "
        "| x full (CPU time) | predicted x full |")
  print("|---|---|---|---|---|---|---|---|---|")
  print(f"| — | full pass | all | {float(models.gflops(model.model_config)[0][-1]):.3g} | "
        f"100 % | {n / sec['full']:.1f} | 1.00 | 1.00 | 1.00 |")
  notes = []
  for target in targets:
    for name in ("FLOPs-optimal", "cost-aware", "streaming"):
      row, thr = found[("cost-aware" if name == "streaming" else name, target)]
      key = f"{name}@{target:g}"
      pred = predicted_seconds(cost_model, thr, s_ev, chunks, sizes, name == "streaming")
      label = "cost-aware + streaming" if name == "streaming" else name
      print(f"| {target:g} | {label} | {row['exits']} | {row['mean_gflops']:.3g} | "
            f"{100 * row['agreement']:.2f} % | {n / sec[key]:.1f} | "
            f"{sec['full'] / sec[key]:.2f} | {cpu['full'] / cpu[key]:.2f} | "
            f"{full_pred / pred:.2f} |")
      if row.get("fallback") and name == "cost-aware":
        notes.append(study.fallback_text(target, row["fallback"], parallel.device_name()))
  print()
  for line in notes:
    print(f"- {line}.")
  if notes:
    print()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mode", default="token", choices=vit.QUALITY_MODES,
                      help="random ViT-S head (token = ViT-FIQA (T), crfiqa = (C))")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
  parser.add_argument("--cal_images", type=int, default=200, help="calibration images")
  parser.add_argument("--images", type=int, default=128, help="held-out images timed")
  parser.add_argument("--targets", default="0.95,0.99", help="agreement targets")
  parser.add_argument("--exits", default="", help="candidate exits, e.g. 2,4,6,8,10,12 "
                      "(default: the job's, exits.default_exits)")
  parser.add_argument("--cost_repeats", type=int, default=3,
                      help="timed calls per cost-model entry (after warm-up)")
  parser.add_argument("--model_dir", default="", help="also bench this converted model")
  parser.add_argument("--skip_random", action="store_true", help="only --model_dir")
  parser.add_argument("--skip_fixed", action="store_true", help="cascade tables only")
  args = parser.parse_args()
  if min(args.batch, args.rounds, args.images, args.cal_images, args.cost_repeats) < 1:
    raise ValueError("--batch, --rounds, --images, --cal_images, --cost_repeats must be >= 1")
  started = time.time()
  load_before = os.getloadavg()[0]
  print(f"jax {jax.__version__}, {parallel.device_name()}, load average "
        f"{load_before:.1f}; other jobs share the machine: timings are noisy, compare ratios "
        "from this run.")
  print()
  cal, groups, ev = faces(args.cal_images, args.images)
  flop_route = matmul_route()
  todo = [] if args.skip_random else [
      (f"random-weight ViT-S ({args.mode})", lambda: random_model(args.mode, args.batch))]
  if args.model_dir:
    todo.append((args.model_dir, lambda: inference.load(args.model_dir, batch_size=args.batch)))
  for label, make in todo:
    model = make()
    cfg = model.model_config
    print(f"## {label}: mode {model.mode}, depth {model.num_exits}, {cfg.get('width')} wide, "
          f"batch {model.batch_size}, {jax.device_count()} {jax.devices()[0].platform} "
          "device(s)")
    print()
    if not args.skip_fixed:
      bench_fixed(model, ev, args.rounds, flop_route)
    bench_cascades(model, cal, groups, ev, args)
  print(f"total {time.time() - started:.0f} s; load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
