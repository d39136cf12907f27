"""ViT-S scoring throughput: ours (all exits + ATTN in one pass) vs PyTorch, the scoring command
vs its own program, and the fraction of the chip's peak; same run, same machine.

  python -m bench.throughput [--parts=compare,command] [--batch=16] [--dtype=float32]
      [--command_images=1024] [--command_batch=64] [--sweep=256:float32,256:bfloat16]

ViT-FIQA ViT-S, token mode, one set of random weights (the PyTorch twin's, converted with
converters/vit_keys as the parity tests do; without torch, fan-in-scaled random weights).
Part "compare" (torch: CPU only unless --torch=yes):
  (a) ours: one jitted apply returning every exit score and every block's ATTN score;
  (b) ours truncated at depth k = 3, 6, 9, 12 (a program that runs only the first k blocks);
  (c) PyTorch twin, one forward, final score only (eval, no_grad);
  (d) PyTorch twin, the official EX-FIQA way: one run per exit (12 passes, early exit 0..11);
Part "command" (docs/accelerators.md, "Compilation cache"): N PNG files scored by
  program  the QualityModel's jitted forward over N/B batches already on the device;
  command  `python main.py --config=configs/score.py ...` end to end in a fresh process (start-up,
           checkpoint load, compile-cache load, decoding in threads, writing scores.csv/.npz);
           its warm-up run fills the compile cache, as a user's first run does;
  task     tasks/score.run(config) in this process (the command without interpreter start-up);
  decode   the input pipeline alone (same threads): if decoding did not overlap the model, the
           task could reach at most 1/(1/program + 1/decode).
Part "sweep": the all-exit program at each batch:dtype of --sweep (the accelerator table).
Always: this machine's XLA matmul GFLOP/s in f32 and bf16 (2048² on a CPU, 8192² on an
accelerator), the chip's known peak (bench/peaks.py, from jax.devices()[0].device_kind) and the
fraction of it reached. Every route is warmed up, then timed once per round in a shuffled order,
so that load from other jobs falls on all routes alike; each figure is the median over rounds.
Process CPU seconds (children included) are printed beside wall clock: on a loaded machine they
move less with other jobs. Compare ratios from one run, not absolute numbers. Runtime on an idle
2-core CPU: ≈ 2 min for "compare", ≈ 6 min for "command" with 1024 images.
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

# The score command runs in a child process beside this one: on a GPU, do not let this process
# take 75 % of the device memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import peaks  # noqa: E402
from exfiqa_jax import checkpoints, inference  # noqa: E402
from exfiqa_jax.data import pipeline  # noqa: E402
from exfiqa_jax.models import exits, vit  # noqa: E402
from exfiqa_jax.testing import worlds  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GFLOP_PER_IMAGE = float(vit.gflops_per_exit(vit.vit_s_config("token"))[-1])  # 11.49
DEPTHS = (3, 6, 9, 12)


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _time_once(fn: Callable[[], object]) -> tuple[float, float]:
  """(wall seconds, CPU seconds summed over threads and finished child processes) of one call."""
  wall, cpu = time.perf_counter(), time.process_time() + _children_cpu()
  fn()
  return time.perf_counter() - wall, time.process_time() + _children_cpu() - cpu


def time_interleaved(routes: dict[str, Callable[[], object]], repeats: int,
                     slow: dict[str, int] | None = None) -> dict[str, list[tuple[float, float]]]:
  """(wall, CPU) seconds of every route: one warm-up call each, then `repeats` rounds that time
  each route once in a shuffled order, so load from other jobs falls on all routes alike. Routes
  named in `slow` are timed only in `slow[name]` rounds spread over the run."""
  slow = slow or {}
  for fn in routes.values():
    fn()
  order = np.random.default_rng(0)
  rounds = {name: set(np.linspace(0, repeats - 1, slow.get(name, repeats)).round().astype(int))
            for name in routes}
  times: dict[str, list[tuple[float, float]]] = {name: [] for name in routes}
  for r in range(repeats):
    for name in order.permutation(list(routes)):
      if r in rounds[name]:
        times[name].append(_time_once(routes[name]))
  return times


def matmul_routes(n: int = 2048, torch_too: bool = True) -> dict[str, Callable[[], object]]:
  """An n×n matmul in XLA, f32 and bf16 (2·n³ FLOP each), and in PyTorch f32 (`torch_too`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  dot = jax.jit(jnp.dot)
  routes = {"xla_matmul": lambda: dot(a, b).block_until_ready(),
            "xla_matmul_bf16": lambda: dot(a16, b16).block_until_ready()}
  if torch_too:
    import torch
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    routes["torch_matmul"] = lambda: ta @ tb
  return routes


def _jax_route(fn, variables, images) -> Callable[[], object]:
  return lambda: jax.block_until_ready(fn(variables, images))


def _twin_and_variables(cfg: vit.ViTConfig, use_torch: bool):
  """(PyTorch twin or None, variables): the twin's weights converted, or random ones."""
  if not use_torch:
    return None, jax.device_put(worlds.random_variables(vit.VisionTransformer(cfg), 0))
  from exfiqa_jax.convert import vit_keys
  from exfiqa_jax.testing import torch_reference as tr
  twin = tr.random_init_(tr.VitFiqaTorch(
      mode=cfg.mode, width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
      patch_size=cfg.patch_size, img_size=cfg.img_size, mlp_dim=cfg.mlp_dim,
      embed_dim=cfg.embed_dim, mask_token=cfg.has_mask_token), seed=0)
  return twin, jax.device_put(vit_keys.state_dict_to_variables(
      {k: v.numpy() for k, v in twin.state_dict().items()}, cfg.to_dict()))


def _median(times: dict[str, list[tuple[float, float]]]) -> tuple[dict[str, float],
                                                                 dict[str, float]]:
  return ({n: statistics.median(w for w, _ in ts) for n, ts in times.items()},
          {n: statistics.median(c for _, c in ts) for n, ts in times.items()})


def _verdict(ok: bool) -> str:
  return "met" if ok else "missed"


def ceiling(matmul_n: int, repeats: int, torch_too: bool) -> dict[str, float]:
  """Measured matmul GFLOP/s (XLA f32 and bf16, PyTorch f32) and the chip's known peak."""
  times = time_interleaved(matmul_routes(matmul_n, torch_too), repeats)
  seconds, cpu = _median(times)
  flop = 2 * matmul_n ** 3 / 1e9
  out = {k: flop / v for k, v in seconds.items()}
  out.update({k + "_cpu": flop / v for k, v in cpu.items()})
  return out


def print_ceiling(rates: dict[str, float], matmul_n: int, threads: int) -> peaks.Peak | None:
  kind = jax.devices()[0].device_kind
  peak = peaks.lookup(kind)
  line = (f"matmul {matmul_n}²: XLA f32 {rates['xla_matmul']:.0f} GFLOP/s, bf16 "
          f"{rates['xla_matmul_bf16']:.0f} GFLOP/s")
  if "torch_matmul" in rates:
    line += f", PyTorch f32 {rates['torch_matmul']:.0f} GFLOP/s ({threads} threads)"
  print(line)
  if peak is None:
    print(f"device kind {kind!r}: no known peak (bench/peaks.py); the ceiling is the measured "
          "matmul above")
  else:
    print(f"device kind {kind!r} = {peak.name}: peak {peak.bf16_tflops:g} TFLOP/s bf16, "
          f"{'—' if peak.f32_tflops is None else f'{peak.f32_tflops:g}'} f32 ({peak.source}); "
          f"measured matmul = {100 * rates['xla_matmul_bf16'] / (1e3 * peak.bf16_tflops):.0f}% "
          "of the bf16 peak")
  return peak


def sweep_rows(cfg: vit.ViTConfig, variables, spec: str, repeats: int, rates: dict[str, float],
               peak: peaks.Peak | None) -> None:
  """The all-exit program at every batch:dtype of `spec`: images/s and the fraction of peak."""
  routes = {}
  for item in [x for x in spec.split(",") if x]:
    batch, dtype = item.split(":")
    inference.check_compute_dtype(dtype, "--sweep dtype ")
    model = vit.VisionTransformer(cfg, dtype=jnp.dtype(dtype))
    images = jax.device_put(np.random.default_rng(0).uniform(-1, 1, (int(batch), 112, 112, 3))
                            .astype(np.float32))
    routes[item] = _jax_route(jax.jit(model.apply), variables, images)
  seconds, _ = _median(time_interleaved(routes, repeats))
  print()
  print("| ViT-S, 12 exits + 12 ATTN | images/s | TFLOP/s | % of bf16 peak | % of measured matmul "
        "(same dtype) |")
  print("|---|---|---|---|---|")
  for item, sec in seconds.items():
    batch, dtype = item.split(":")
    rate = int(batch) / sec
    tflops = rate * GFLOP_PER_IMAGE / 1e3
    matmul = rates["xla_matmul_bf16" if dtype == "bfloat16" else "xla_matmul"] / 1e3
    frac_peak = "—" if peak is None else f"{100 * tflops / peak.bf16_tflops:.1f}%"
    print(f"| batch {batch} {dtype} | {rate:.1f} | {tflops:.2f} | {frac_peak} | "
          f"{100 * tflops / matmul:.0f}% |")


def _write_pngs(folder: str, n: int) -> list[str]:
  """n distinct 112×112 PNG files (smooth patterns + noise, like face crops in size)."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  ys, xs = np.mgrid[0:112, 0:112] / 112
  from PIL import Image
  paths = []
  for i in range(n):
    f = rng.uniform(2, 9, 3)
    base = 128 + 90 * np.stack([np.sin(xs * f[0]), np.cos(ys * f[1]), np.sin((xs + ys) * f[2])], -1)
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    paths.append(os.path.join(folder, f"{i:05d}.png"))
    Image.fromarray(image).save(paths[-1])
  return paths


def command_rows(cfg: vit.ViTConfig, variables, args, threads: int) -> None:
  """Part "command": the scoring command vs its own program, same images and batch (module
  docstring). Works in a temporary folder (model, PNGs, compile cache, outputs)."""
  from configs import score as score_config
  from exfiqa_jax import compile_cache
  from exfiqa_jax.tasks import score
  work = tempfile.mkdtemp(prefix="bench_throughput_")
  try:
    n, batch, dtype = args.command_images, args.command_batch, args.dtype
    compile_cache.setup(os.path.join(work, "xla"))     # the task row shares the command's cache
    model_dir = os.path.join(work, "vit_s")
    checkpoints.save_model(model_dir, jax.device_get(variables),
                           {"family": "vit", "kind": "vit", "input_scale": "minus1_1",
                            **cfg.to_dict()})
    paths = _write_pngs(os.path.join(work, "images"), n)
    cache = os.path.join(work, "xla")
    runs = itertools.count()
    loop_rates: list[float] = []
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    common = [f"--config.quality_model.path={model_dir}", f"--config.images={work}/images",
              f"--config.batch_size={batch}", f"--config.compute_dtype={dtype}",
              f"--config.compile_cache={cache}", "--config.progress=False",
              f"--config.data.decode_threads={args.decode_threads}"]

    def command():
      out = os.path.join(work, f"out{next(runs)}")
      proc = subprocess.run([sys.executable, "main.py", "--config=configs/score.py",
                             f"--config.output={out}", *common], cwd=ROOT, env=env,
                            capture_output=True, text=True)
      if proc.returncode:
        raise RuntimeError(f"score command failed:\n{proc.stderr[-3000:]}")
      found = re.search(r"scored \d+ images \(\d+ skipped, ([\d.]+) images/s\)", proc.stderr)
      if found:
        loop_rates.append(float(found.group(1)))
      shutil.rmtree(out, ignore_errors=True)

    def task():
      config = score_config.get_config()
      config.quality_model.path, config.images = model_dir, os.path.join(work, "images")
      config.batch_size, config.compute_dtype, config.progress = batch, dtype, False
      config.data.decode_threads = args.decode_threads
      config.output = os.path.join(work, f"out{next(runs)}")
      score.run(config)
      shutil.rmtree(config.output, ignore_errors=True)

    model = inference.load(model_dir, batch_size=batch, dtype=dtype)
    fn = model._forward(False, model.num_exits)
    images = pipeline.image_reader(paths)(np.arange(n))[0]
    padded = -(-n // model.batch_size) * model.batch_size
    images = np.concatenate([images, np.zeros((padded - n,) + images.shape[1:], np.uint8)])
    on_device = [jax.device_put(images[i:i + model.batch_size])
                 for i in range(0, padded, model.batch_size)]

    def program():
      jax.block_until_ready([fn(model.variables, b) for b in on_device])

    def decode():
      for _ in pipeline.host_batches(pipeline.image_reader(paths), n, model.batch_size,
                                     workers=args.decode_threads):
        pass

    load_before = os.getloadavg()[0]
    times = time_interleaved({"program": program, "command": command, "task": task,
                              "decode": decode}, args.command_rounds)
    load_after = os.getloadavg()[0]
    seconds, cpu = _median(times)
    rate = {k: n / v for k, v in seconds.items()}
    serial = 1 / (1 / rate["program"] + 1 / rate["decode"])
    print()
    print(f"Part command: {n} PNG files, batch {model.batch_size}, {dtype}, "
          f"{args.decode_threads} decode threads; median of {args.command_rounds} interleaved "
          f"rounds after a warm-up (which filled the compile cache); load average "
          f"{load_before:.1f} -> {load_after:.1f} on {threads} cores.")
    print()
    print("| row | images/s | / program | CPU ms/image |")
    print("|---|---|---|---|")
    rows = [("program: the jitted forward, N/B batches on device", "program"),
            ("command: python main.py score, fresh process, end to end", "command"),
            ("task: tasks/score.run in this process", "task"),
            ("decode: the input pipeline alone", "decode")]
    for name, key in rows:
      print(f"| {name} | {rate[key]:.2f} | {rate[key] / rate['program']:.3f} | "
            f"{1e3 * cpu[key] / n:.1f} |")
    print(f"| no overlap bound 1/(1/program + 1/decode) | {serial:.2f} | "
          f"{serial / rate['program']:.3f} | |")
    ratio = rate["command"] / rate["program"]
    print()
    verdict = (_verdict(ratio >= 0.9) if n >= 1024 else
               f"not judged: the target is set at 1024 images, this run scored {n}, where the "
               "command's fixed start-up weighs more")
    print(f"command / program = {100 * ratio:.1f}% ({verdict}, target >= 90%); "
          f"task / program = {100 * rate['task'] / rate['program']:.1f}%"
          + (f"; the command's own scoring loop ran at {statistics.median(loop_rates):.2f} "
             "images/s (its log)" if loop_rates else ""))
  finally:
    shutil.rmtree(work, ignore_errors=True)


def compare_rows(cfg, twin, variables, args, threads: int, rates: dict[str, float]) -> None:
  """Part "compare": (a)-(d) and the truncated programs (module docstring)."""
  import torch
  dtype = None if args.dtype == "float32" else jnp.dtype(args.dtype)
  images_np = np.random.default_rng(0).uniform(-1, 1, (args.batch, 112, 112, 3)).astype(
      np.float32)
  images = jax.device_put(images_np)
  images_nchw = torch.from_numpy(images_np.transpose(0, 3, 1, 2).copy())

  # (a) is the full-depth program (k = 12 of (b)); every other k is its own compiled program.
  routes, programs = {}, {}
  for k in DEPTHS:
    v = exits.truncate_variables(variables, k) if k < cfg.depth else variables
    module = (vit.VisionTransformer(cfg, depth=k) if dtype is None
              else vit.VisionTransformer(cfg, depth=k, dtype=dtype))
    programs[k] = (jax.jit(module.apply), v)
    routes[f"k{k}"] = _jax_route(*programs[k], images)

  def torch_single():
    with torch.inference_mode():
      return twin(images_nchw)

  def torch_official():
    with torch.inference_mode():
      return twin.exits(images_nchw)
  routes["c"], routes["d"] = torch_single, torch_official

  load_before = os.getloadavg()[0]
  times = time_interleaved(routes, args.repeats, slow={"c": args.torch_repeats,
                                                          "d": args.official_repeats})
  load_after = os.getloadavg()[0]
  seconds, cpu = _median(times)

  # Same weights on both sides: the scores must agree (else the comparison means nothing).
  _, out = programs[cfg.depth][0](programs[cfg.depth][1], images)
  assert out["exit_scores"].shape == (args.batch, cfg.depth)
  assert out["attn_scores"].shape == (args.batch, cfg.depth)
  _, torch_final = torch_single()
  torch_exits, _ = torch_official()
  err_final = float(np.max(np.abs(np.asarray(out["exit_scores"][:, -1]) - torch_final.numpy())))
  err_exits = float(np.max(np.abs(np.asarray(out["exit_scores"]) - torch_exits.numpy())))

  b = args.batch
  a = f"k{cfg.depth}"
  matmul = rates["xla_matmul_bf16" if args.dtype == "bfloat16" else "xla_matmul"]
  matmul_cpu = rates["xla_matmul_bf16_cpu" if args.dtype == "bfloat16" else "xla_matmul_cpu"]
  bound = matmul / GFLOP_PER_IMAGE

  def per_wall(key):
    return b / seconds[key]

  def per_cpu(key):
    return b / cpu[key]

  print()
  print(f"Part compare: ViT-S token, {args.dtype}, batch {b}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads. Median of {args.repeats} interleaved rounds "
        f"({args.torch_repeats} for c, {args.official_repeats} for d) after a warm-up; load "
        f"average {load_before:.1f} -> {load_after:.1f} on {threads} cores (other jobs share "
        "the machine: timings are noisy, compare ratios).")
  print(f"matmul-bound limit at {GFLOP_PER_IMAGE:.2f} GFLOP/image: {bound:.1f} images/s; parity "
        f"ours vs PyTorch (same weights): final score max |diff| {err_final:.1e}, all 12 exits "
        f"{err_exits:.1e}")
  print()
  print("| route | images/s | ms/image | GFLOP/s | CPU ms/image |")
  print("|---|---|---|---|---|")
  rows = [("(a) ours: 12 exit scores + 12 ATTN scores, one jitted pass", a),
          ("(c) PyTorch, one forward, final score only", "c"),
          ("(d) PyTorch, official EX-FIQA: 12 passes (exit 0..11)", "d")]
  for name, key in rows:
    print(f"| {name} | {per_wall(key):.2f} | {1e3 / per_wall(key):.1f} | "
          f"{per_wall(key) * GFLOP_PER_IMAGE:.0f} | {1e3 / per_cpu(key):.1f} |")
  print()
  print("| ratio | wall clock | CPU time | target |")
  print("|---|---|---|---|")
  for name, key, target in (("(a) / (c)", "c", 2.4), ("(a) / (d)", "d", 16.0)):
    wall_ratio, cpu_ratio = per_wall(a) / per_wall(key), per_cpu(a) / per_cpu(key)
    print(f"| {name} | {wall_ratio:.2f}x ({_verdict(wall_ratio >= target)}) | {cpu_ratio:.2f}x | "
          f">= {target:g}x |")
  # What the matmul rates allow: a program running at exactly the XLA matmul-bound limit.
  print(f"| ceiling: matmul-bound limit / (c), / (d) | {bound / per_wall('c'):.2f}x, "
        f"{bound / per_wall('d'):.1f}x | | |")
  frac_wall = per_wall(a) / bound
  frac_cpu = per_cpu(a) * GFLOP_PER_IMAGE / matmul_cpu
  print(f"| (a) / matmul-bound limit | {100 * frac_wall:.0f}% ({_verdict(frac_wall >= 0.8)}) | "
        f"{100 * frac_cpu:.0f}% | >= 80% |")
  print()
  print("| (b) ours at depth k | images/s | ms/image | time(k)/time(12) | CPU time ratio | "
        "target k/12 + 0.05 |")
  print("|---|---|---|---|---|---|")
  for k in DEPTHS:
    key = f"k{k}"
    ratio, cpu_ratio = seconds[key] / seconds[a], cpu[key] / cpu[a]
    target = k / cfg.depth + 0.05
    print(f"| {k} | {per_wall(key):.2f} | {1e3 / per_wall(key):.1f} | {ratio:.3f} "
          f"({_verdict(ratio <= target)}) | {cpu_ratio:.3f} | <= {target:.3f} |")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--parts", default="compare,command",
                      help="comma list of compare, command, sweep")
  parser.add_argument("--batch", type=int, default=16, help="batch of part compare")
  parser.add_argument("--dtype", default="float32", choices=inference.COMPUTE_DTYPES,
                      help="matmul dtype of our programs (compare, command)")
  parser.add_argument("--repeats", type=int, default=9, help="timed rounds (median reported)")
  parser.add_argument("--torch_repeats", type=int, default=5, help="rounds that also time (c)")
  parser.add_argument("--official_repeats", type=int, default=3,
                      help="rounds that also time (d), the slowest route")
  parser.add_argument("--torch", default="auto", choices=("auto", "yes", "no"),
                      help="PyTorch routes (c), (d): auto = only when JAX runs on the CPU")
  parser.add_argument("--command_images", type=int, default=1024)
  parser.add_argument("--command_batch", type=int, default=64, help="the score default")
  parser.add_argument("--command_rounds", type=int, default=2)
  parser.add_argument("--decode_threads", type=int, default=4, help="config.data default")
  parser.add_argument("--sweep", default="", help="batch:dtype,... for part sweep, e.g. "
                      "256:float32,256:bfloat16,1024:float32,1024:bfloat16")
  parser.add_argument("--matmul_n", type=int, default=0, help="0 = 2048 (CPU), 8192 (else)")
  args = parser.parse_args()
  parts = {p for p in args.parts.split(",") if p}
  if parts - {"compare", "command", "sweep"}:
    raise ValueError(f"--parts: unknown {sorted(parts - {'compare', 'command', 'sweep'})}")
  if min(args.batch, args.repeats, args.torch_repeats, args.official_repeats,
         args.command_images, args.command_batch, args.command_rounds) < 1:
    raise ValueError("batches, image counts and rounds must be >= 1")
  if "compare" in parts and max(args.torch_repeats, args.official_repeats) > args.repeats:
    raise ValueError("--torch_repeats and --official_repeats cannot exceed --repeats")
  platform = jax.devices()[0].platform
  use_torch = args.torch == "yes" or (args.torch == "auto" and platform == "cpu")
  if "compare" in parts and not use_torch:
    print(f"part compare skipped: its PyTorch routes run on the CPU, JAX runs on {platform} "
          "(--torch=yes to force)")
    parts.discard("compare")
  threads = os.cpu_count() or 1
  if use_torch:
    import torch
    torch.set_num_threads(threads)
  matmul_n = args.matmul_n or (2048 if platform == "cpu" else 8192)

  cfg = vit.vit_s_config("token")
  twin, variables = _twin_and_variables(cfg, use_torch)
  print(f"ViT-S token (patch 9, width 512, depth 12, {GFLOP_PER_IMAGE:.2f} GFLOP/image); jax "
        f"{jax.__version__} on {jax.device_count()} {platform} device(s) "
        f"({jax.devices()[0].device_kind}), {threads} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f}.")
  rates = ceiling(matmul_n, args.repeats, use_torch)
  peak = print_ceiling(rates, matmul_n, threads)
  print()
  print("Known peaks (bench/peaks.py):")
  print("\n".join(peaks.markdown()))
  if "compare" in parts:
    compare_rows(cfg, twin, variables, args, threads, rates)
  if "sweep" in parts and args.sweep:
    sweep_rows(cfg, variables, args.sweep, args.repeats, rates, peak)
  if "command" in parts:
    command_rows(cfg, variables, args, threads)


if __name__ == "__main__":
  main()
