r"""ViT-FIQA (ViT-S, quality token) on MS1MV2 as the field ships it, as the official run
(docs/methods.md; the training data formats: docs/data.md, "Training data").

  exfiqa --config=train_vitfiqa --config.output=OUT \
      --config.data.kind=recordio --config.data.root=/data/faces_emore   # insightface train.rec
  exfiqa --config=train_vitfiqa --config.output=OUT \
      --config.data.kind=lmdb --config.data.root=/data/ms1mv2.lmdb       # ViT-FIQA's LMDB
  exfiqa --config=train_vitfiqa --config.output=OUT \
      --config.data.root=/data/ms1mv2_images            # <root>/<identity>/<image>.jpg|png
  # on every host of a TPU pod slice:  ... --config.distributed=True
  # large class count on many devices: ... --config.shard_centres=4   (2-D data × model mesh)

Official constants: global batch 1024 (4 GPUs × 256), 20 epochs with 2 warm-up epochs over
5,822,653 MS1MV2 images (steps derived from the image count when total_steps = 0), AdamW lr 1e-3
wd 0.05 on all params, clip backbone grads at 5, CosFace s=64 m=0.4, alpha 10 (≈ 40 effective in
the 4-GPU run, see docs/methods.md), gridsample augmentation, verification every 2000 steps.
"""
from __future__ import annotations

import ml_collections

from exfiqa_jax.configs import common


SIZES = ("default", "smoke")    # get_config's size= argument


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="default")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {SIZES}")
  config = common.base_config("train", "out/train_vitfiqa")
  config.seed = 2048
  config.batch_size = 1024
  config.epochs = 20
  config.warmup_epochs = 2            # 20 // 8
  config.total_steps = 0              # 0: epochs × (images // batch_size)
  config.stop_after = 0
  config.log_every = 50
  config.progress = True
  config.compute_dtype = "float32"    # "bfloat16" for bf16 matmuls on accelerators
  config.shard_centres = 0
  config.export_model = True

  config.architecture = ml_collections.ConfigDict(dict(
      mode="token", width=512, depth=12, num_heads=8, patch_size=9, img_size=112, mlp_dim=2048,
      embed_dim=512, has_mask_token=True))
  config.optim = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=0, weight_decay=0.05, clip_norm=5.0, power=1.0))
  config.loss = ml_collections.ConfigDict(dict(scale=64.0, margins=(1.0, 0.0, 0.4), alpha=10.0,
                                               beta=0.5))
  config.augment = ml_collections.ConfigDict(dict(enabled=True, gridsample_prob=0.6))

  config.data = ml_collections.ConfigDict(dict(
      kind="image_folder",            # image_folder | recordio (train.rec/.idx) | lmdb (ViT-FIQA)
      root="", channel_order="rgb", num_images=0,   # 0: counted from root
      decode_threads=16,              # JPEG/WebP decoding threads per host (0: main thread)
      workers=0))                     # > 0: Grain decoding processes per host (docs/data.md)
  config.eval = ml_collections.ConfigDict(dict(
      every=2000, batch_size=256, fmr=1e-3, limit=0.3,
      pairs_bin=""))                  # an insightface .bin pair set (lfw.bin); "" = none, or
  #                                     with kind=recordio the lfw/cfp_fp/agedb_30.bin beside it
  config.checkpointing = ml_collections.ConfigDict(dict(every=2000, keep=3, best_metric="",
                                                     best_mode="max"))
  if args.size == "smoke":
    config.batch_size, config.total_steps, config.log_every = 8, 4, 1
    config.architecture.update(width=32, depth=2, num_heads=2, mlp_dim=64, embed_dim=16)
  return config
