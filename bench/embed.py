"""iResNet-100 embedding throughput with the flip (two passes per image): ours vs PyTorch.

  python -m bench.embed [--batch=16] [--iters=3]

Same run, same CPU: our jitted Flax iResNet-100 via exfiqa_jax.embed (flip interleaved into one
2B forward, "concat" convention) vs the PyTorch twin (official layout, eval, no_grad, 2 threads,
f(x) and f(flip x) as two forwards). Prints a table and the ratio. Machines are shared: compare
ratios from one run.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import torch

from converters import iresnet_keys as ik
from exfiqa_jax import embed
from tests import fr_torch_reference as ref


def _rate(fn, n_images: int, iters: int) -> float:
  fn()                                   # warm-up (compile)
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return n_images * iters / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--iters", type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(2)
  tmodel = ref.randomize_(ref.IResNet(), seed=0)
  sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  config = ik.ARCFACE_IRESNET.infer_config(sd)
  module, variables = ik.ARCFACE_IRESNET.build(config), ik.ARCFACE_IRESNET.to_flax(sd, config)
  images = np.random.RandomState(0).randint(0, 256, (args.batch, 112, 112, 3)).astype(np.uint8)

  fn = embed.make_embed_fn(module, "concat", "minus1_1")
  replicated = embed.replicate(variables)
  ours = _rate(lambda: embed.embed_batch(fn, replicated, images, args.batch), args.batch,
               args.iters)

  def torch_step():
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    with torch.no_grad():
      a, b = tmodel(x), tmodel(torch.flip(x, dims=[3]))
    return torch.cat([torch.nn.functional.normalize(a), torch.nn.functional.normalize(b)], 1)
  theirs = _rate(torch_step, args.batch, args.iters)

  print(f"iResNet-100 embedding with flip, batch {args.batch}, {jax.device_count()} device(s)")
  print("| implementation | images/s |")
  print("|---|---|")
  print(f"| exfiqa_jax (XLA CPU, fp32) | {ours:.2f} |")
  print(f"| PyTorch {torch.__version__} (2 threads, fp32) | {theirs:.2f} |")
  print(f"ratio ours/PyTorch: {ours / theirs:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
  main()
