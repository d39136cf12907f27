"""iResNet-100 embedding throughput with the flip (two passes per image): ours vs PyTorch.

  python -m bench.embed [--batch=16] [--rounds=5]

Same run, same CPU, same random weights: our jitted Flax iResNet-100 via exfiqa_jax.embed (flip
interleaved into one 2B forward, "concat" convention), as `load_fr_model` returns it (BatchNorms
folded) and unfolded, vs the PyTorch twin (official layout, eval, no_grad, 2 threads, f(x) and
f(flip x) as two forwards) in the official NCHW layout and in channels_last. The variants run in
turn, round after round, so a load change on the shared machine hits all of them alike. Reported:
best and median images/s (wall) and CPU-seconds per image (all threads; less sensitive to other
jobs than wall time). The ratio is against the official NCHW PyTorch run.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import torch

from exfiqa_jax.convert import iresnet_keys as ik
from exfiqa_jax import embedding, models
from exfiqa_jax.models import iresnet
from exfiqa_jax.testing import fr_torch_reference as ref

GFLOP_PER_FORWARD = 24.2   # iResNet-100 at 112², 2 × MACs


def _torch_step(model: torch.nn.Module, images: np.ndarray, channels_last: bool):
  def step():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    if channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
      a, b = model(x), model(torch.flip(x, dims=[3]))
    return torch.cat([torch.nn.functional.normalize(a), torch.nn.functional.normalize(b)], 1)
  return step


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(2)
  tmodel = ref.randomize_(ref.IResNet(), seed=0)
  tmodel_cl = ref.randomize_(ref.IResNet(), seed=0).to(memory_format=torch.channels_last)
  sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  config = ik.ARCFACE_IRESNET.infer_config(sd)
  module, variables = models.get_model(config), ik.ARCFACE_IRESNET.to_flax(sd, config)
  folded, folded_vars = iresnet.fold_batchnorm(module.config, variables)
  images = np.random.RandomState(0).randint(0, 256, (args.batch, 112, 112, 3)).astype(np.uint8)

  def ours(model, model_vars):
    fn, placed = embedding.make_embed_fn(model, "concat", "minus1_1"), embedding.replicate(model_vars)
    return lambda: embedding.embed_batch(fn, placed, images, args.batch)

  variants = {
      "exfiqa_jax, BN folded (XLA CPU, fp32)": ours(folded, folded_vars),
      "exfiqa_jax, unfolded (XLA CPU, fp32)": ours(module, variables),
      f"PyTorch {torch.__version__} NCHW (official, 2 threads, fp32)":
          _torch_step(tmodel, images, False),
      f"PyTorch {torch.__version__} channels_last (2 threads, fp32)":
          _torch_step(tmodel_cl, images, True),
  }
  outputs = {name: np.asarray(fn()) for name, fn in variants.items()}   # warm-up (compile)
  first = next(iter(outputs.values()))
  agree = max(float(np.abs(out - first).max()) for out in outputs.values())
  wall = {name: [] for name in variants}
  cpu = {name: [] for name in variants}
  for _ in range(args.rounds):
    for name, fn in variants.items():
      w, c = time.perf_counter(), time.process_time()
      fn()
      wall[name].append(time.perf_counter() - w)
      cpu[name].append(time.process_time() - c)

  print(f"iResNet-100 embedding with flip (2 forwards/image, {2 * GFLOP_PER_FORWARD:.1f} GFLOP), "
        f"batch {args.batch}, {args.rounds} rounds, {jax.device_count()} JAX device(s); "
        f"embeddings agree to {agree:.1e}")
  print("| implementation | best images/s | median images/s | CPU-s / image |")
  print("|---|---|---|---|")
  for name in variants:
    print(f"| {name} | {args.batch / min(wall[name]):.2f} | "
          f"{args.batch / np.median(wall[name]):.2f} | {np.median(cpu[name]) / args.batch:.3f} |")
  names = list(variants)
  ours_name, theirs_name, cl_name = names[0], names[2], names[3]
  ratio = lambda a, b: np.median(wall[b]) / np.median(wall[a])
  cpu_ratio = lambda a, b: np.median(cpu[b]) / np.median(cpu[a])
  print(f"ratio ours (folded) / PyTorch NCHW: {ratio(ours_name, theirs_name):.2f}x median wall, "
        f"{cpu_ratio(ours_name, theirs_name):.2f}x CPU time (target >= 1.5x)")
  print(f"ratio ours (folded) / PyTorch channels_last: {ratio(ours_name, cl_name):.2f}x median "
        f"wall, {cpu_ratio(ours_name, cl_name):.2f}x CPU time")


if __name__ == "__main__":
  main()
