"""Tiny ViT-FIQA trained on synthetic faces (the demo's model; the tests use the "smoke" size).

  exfiqa --config=train_tiny --config.output=out/train_tiny
  exfiqa --config=train_tiny:size=smoke      # seconds, for tests / CI

Lessons from the CPU feasibility runs (docs/demo.md): CosFace s=32 m=0.35 (s=64 plateaus on a tiny
model), lr 2e-3 with a warm-up, and clean training images re-degraded afresh every batch with a
new severity (online re-degradation) so the quality head sees many (image, severity) pairs.
No gridsample augmentation: the synthetic degradations are the variation that matters here.
"""
from __future__ import annotations

import ml_collections

from exfiqa_jax.configs import common

SIZES = {
    # width, depth, heads, mlp, embed, identities, images/identity, batch, steps, warm-up
    "default": dict(width=64, depth=4, heads=4, mlp=256, embed=64, ids=200, per_id=24,
                    batch=64, steps=1500, warmup=100, pairs=2000),
    "smoke": dict(width=32, depth=2, heads=2, mlp=64, embed=16, ids=8, per_id=8, batch=16,
                  steps=6, warmup=2, pairs=64),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="default")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {tuple(SIZES)}")
  size, smoke = SIZES[args.size], args.size == "smoke"
  config = common.base_config("train", "out/train_tiny")
  config.batch_size = size["batch"]
  config.total_steps = size["steps"]
  config.stop_after = 0               # > 0: stop after this step (resumable), for tests
  config.log_every = 10 if not smoke else 1
  config.progress = True
  config.compute_dtype = "float32"
  config.shard_centres = 0            # 0/1: replicated class centres; k: split over k devices
  config.export_model = True

  config.architecture = ml_collections.ConfigDict(dict(
      mode="token", width=size["width"], depth=size["depth"], num_heads=size["heads"],
      patch_size=9, img_size=112, mlp_dim=size["mlp"], embed_dim=size["embed"],
      has_mask_token=True))

  config.optim = ml_collections.ConfigDict(dict(
      lr=2e-3, warmup_steps=size["warmup"], weight_decay=0.05, clip_norm=5.0, power=1.0))
  config.loss = ml_collections.ConfigDict(dict(scale=32.0, margins=(1.0, 0.0, 0.35), alpha=10.0,
                                               beta=0.5))
  config.augment = ml_collections.ConfigDict(dict(enabled=False))

  config.data = ml_collections.ConfigDict(dict(
      kind="synthetic", num_identities=size["ids"], images_per_identity=size["per_id"],
      online_degradation=True, gamma=1.0, clean_fraction=0.5, num_pairs=size["pairs"],
      eval_identities=max(size["ids"] // 4, 4)))
  config.eval = ml_collections.ConfigDict(dict(every=200 if not smoke else 0, batch_size=128,
                                               fmr=1e-3, limit=0.3))
  config.checkpointing = ml_collections.ConfigDict(dict(every=200 if not smoke else 3, keep=2,
                                                     best_metric="", best_mode="max"))
  return config
