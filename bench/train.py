"""Training throughput: images/s of one jitted training step, and its compile time.

  python -m bench.train [--configs=tiny,vit_s] [--batch=16] [--iters=3] [--augment]

For each model config (the tiny synthetic config of configs/train_tiny.py and ViT-S of
configs/train_vitfiqa.py) it times: compiling the step (first call), then `iters` steady steps
(forward + backward + AdamW, CosFace + CR loss over `classes` centres). With --augment the
on-device gridsample augmentation runs inside the step (as in the ViT-S recipe). Machines are
shared: compare ratios from one run.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from configs import train_tiny, train_vitfiqa
from exfiqa_jax import parallel
from exfiqa_jax.train import augment, optim, step as step_lib, trainer

CONFIGS = {"tiny": train_tiny.get_config, "vit_s": train_vitfiqa.get_config}


def bench_one(name: str, batch: int, iters: int, classes: int, with_augment: bool) -> dict:
  config = CONFIGS[name]()
  model, cfg = trainer.build_model(config.architecture, config.compute_dtype)
  mesh = parallel.mesh(1)
  tx, schedule = optim.make_optimizer(config.optim.lr, 10, 1000)
  state, sh = step_lib.init_state(model, tx, jax.random.key(0), classes, cfg.embed_dim, mesh)
  fn = step_lib.make_train_step(
      model, tx, mesh=mesh, shardings=sh, schedule=schedule,
      augment=augment.AugmentConfig() if with_augment else None,
      loss_kwargs=dict(scale=config.loss.scale, margins=tuple(config.loss.margins),
                       alpha=config.loss.alpha, num_classes=classes))
  rng = np.random.default_rng(0)
  batch_np = {"image": rng.integers(0, 256, (batch, 112, 112, 3)).astype(np.uint8),
              "label": rng.integers(0, classes, batch).astype(np.int32)}
  b = {k: jax.device_put(v, parallel.batch_sharding(mesh)) for k, v in batch_np.items()}
  key = jax.random.key(1)
  t = time.perf_counter()
  state, m = fn(state, b, key)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(iters):
    state, m = fn(state, b, key)
  jax.block_until_ready(m)
  rate = batch * iters / (time.perf_counter() - t)
  return {"config": name, "batch": batch, "augment": with_augment, "compile_s": compile_s,
          "images_per_s": rate}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--configs", default="tiny,vit_s")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--iters", type=int, default=3)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--augment", action="store_true")
  args = parser.parse_args()
  rows = []
  for name in args.configs.split(","):
    for aug in ([False, True] if args.augment else [False]):
      rows.append(bench_one(name, args.batch, args.iters, args.classes, aug))
  print(f"training step, batch {args.batch}, {args.classes} classes, {jax.device_count()} "
        f"device(s), {jax.devices()[0].platform}")
  print("| config | augment | compile (s) | images/s |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['config']} | {r['augment']} | {r['compile_s']:.1f} | {r['images_per_s']:.1f} |")


if __name__ == "__main__":
  main()
