"""ViT-S scoring throughput: ours (all exits + ATTN in one pass) vs PyTorch, same run, same CPU.

  python -m bench.throughput [--batch=16] [--repeats=5]

ViT-FIQA ViT-S, token mode, fp32, one set of random weights shared by both sides (the PyTorch
twin's, converted with converters/vit_keys as the parity tests do):
  (a) ours: one jitted apply returning every exit score and every block's ATTN score;
  (b) ours truncated at depth k = 3, 6, 9, 12 (a program that runs only the first k blocks);
  (c) PyTorch twin, one forward, final score only (eval, no_grad);
  (d) PyTorch twin, the official EX-FIQA way: one run per exit (12 passes, early exit 0..11);
plus this machine's XLA f32 matmul GFLOP/s (a 2048² jnp.dot) and PyTorch's, in the same run.
Each figure is the median of `repeats` timed calls after a warm-up. Machines are shared and
other jobs may run at the same time: compare ratios from one run, not absolute numbers.
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
import torch

from converters import vit_keys
from exfiqa_jax.models import vit
from tests import torch_reference as tr

GFLOP_PER_IMAGE = float(vit.gflops_per_exit(vit.vit_s_config("token"))[-1])  # 11.49
DEPTHS = (3, 6, 9, 12)


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
  """Median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def xla_matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  seconds = _median_seconds(lambda: dot(a, b).block_until_ready(), repeats, warmup=2)
  return 2 * n ** 3 / seconds / 1e9


def torch_matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
  a, b = torch.randn(n, n), torch.randn(n, n)
  seconds = _median_seconds(lambda: a @ b, repeats, warmup=2)
  return 2 * n ** 3 / seconds / 1e9


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--official_repeats", type=int, default=3,
                      help="repeats for (d), the slowest route")
  args = parser.parse_args()
  if args.batch < 1:
    raise ValueError(f"--batch must be >= 1, got {args.batch}")
  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)

  cfg = vit.vit_s_config("token")
  twin = tr.random_init_(tr.VitFiqaTorch(
      mode=cfg.mode, width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
      patch_size=cfg.patch_size, img_size=cfg.img_size, mlp_dim=cfg.mlp_dim,
      embed_dim=cfg.embed_dim, mask_token=cfg.has_mask_token), seed=0)
  variables = vit_keys.state_dict_to_variables(
      {k: v.numpy() for k, v in twin.state_dict().items()}, cfg.to_dict())
  variables = jax.device_put(variables)
  images_np = np.random.default_rng(0).uniform(-1, 1, (args.batch, 112, 112, 3)).astype(
      np.float32)
  images = jax.device_put(images_np)
  images_nchw = torch.from_numpy(images_np.transpose(0, 3, 1, 2).copy())

  gflops_xla = xla_matmul_gflops()
  gflops_torch = torch_matmul_gflops()

  # (a) and (b): one jitted program per depth; depth 12 is (a).
  seconds_at = {}
  outputs = {}
  for k in DEPTHS:
    model = vit.VisionTransformer(cfg, depth=k)
    v = vit.truncate_variables(variables, k) if k < cfg.depth else variables
    fn = jax.jit(model.apply)
    outputs[k] = jax.block_until_ready(fn(v, images))                 # compile
    seconds_at[k] = _median_seconds(lambda: jax.block_until_ready(fn(v, images)), args.repeats)
  _, out = outputs[cfg.depth]
  assert out["exit_scores"].shape == (args.batch, cfg.depth)
  assert out["attn_scores"].shape == (args.batch, cfg.depth)

  # (c) and (d): the PyTorch twin, eval, no_grad.
  with torch.inference_mode():
    seconds_c = _median_seconds(lambda: twin(images_nchw), args.repeats)
    seconds_d = _median_seconds(lambda: twin.exits(images_nchw), args.official_repeats)
    _, torch_final = twin(images_nchw)
    torch_exits, _ = twin.exits(images_nchw)
  err_final = float(np.max(np.abs(np.asarray(out["exit_scores"][:, -1]) - torch_final.numpy())))
  err_exits = float(np.max(np.abs(np.asarray(out["exit_scores"]) - torch_exits.numpy())))

  b = args.batch
  rate = {name: b / s for name, s in (("a", seconds_at[cfg.depth]), ("c", seconds_c),
                                      ("d", seconds_d))}
  bound = gflops_xla / GFLOP_PER_IMAGE
  print(f"ViT-S token (patch 9, width 512, depth 12), fp32, batch {b}; jax {jax.__version__} "
        f"on {jax.devices()[0].platform} x{jax.device_count()}, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; median of {args.repeats} "
        f"({args.official_repeats} for d) after warm-up. Shared machine: timings are noisy.")
  print(f"XLA f32 matmul 2048²: {gflops_xla:.0f} GFLOP/s; PyTorch: {gflops_torch:.0f} GFLOP/s; "
        f"matmul-bound limit at {GFLOP_PER_IMAGE:.2f} GFLOP/image: {bound:.1f} images/s")
  print(f"parity ours vs PyTorch: final score max |diff| {err_final:.2e}, "
        f"all 12 exits {err_exits:.2e}")
  print()
  print("| route | images/s | ms/image | GFLOP/s |")
  print("|---|---|---|---|")
  rows = [("(a) ours: 12 exit scores + 12 ATTN scores, one pass", rate["a"]),
          ("(c) PyTorch, one forward, final score only", rate["c"]),
          ("(d) PyTorch, official EX-FIQA: 12 passes", rate["d"])]
  for name, r in rows:
    print(f"| {name} | {r:.2f} | {1e3 / r:.1f} | {r * GFLOP_PER_IMAGE:.0f} |")
  print()
  print("| ratio | measured | target |")
  print("|---|---|---|")
  print(f"| (a) / (c) | {rate['a'] / rate['c']:.2f}x | >= 2.4x |")
  print(f"| (a) / (d) | {rate['a'] / rate['d']:.1f}x | >= 16x |")
  print(f"| (a) / matmul-bound limit | {100 * rate['a'] / bound:.0f}% | >= 80% |")
  print()
  print("| (b) depth k | images/s | ms/image | time(k)/time(12) | target k/12 + 0.05 |")
  print("|---|---|---|---|---|")
  for k in DEPTHS:
    ratio = seconds_at[k] / seconds_at[cfg.depth]
    target = k / cfg.depth + 0.05
    mark = "ok" if ratio <= target else "missed"
    print(f"| {k} | {b / seconds_at[k]:.2f} | {1e3 * seconds_at[k] / b:.1f} | {ratio:.3f} | "
          f"{target:.3f} ({mark}) |")


if __name__ == "__main__":
  main()
