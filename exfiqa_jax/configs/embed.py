r"""Embed a folder of aligned 112×112 face crops (or a list file) with an FR model.

  exfiqa --config=embed --config.fr.path=ckpt/elasticface \
      --config.images=DIR --config.output=OUT
  exfiqa --config=embed --config.fr.path=backbone.pth \
      --config.fr.family=elasticface --config.images=list.txt --config.image_root=ROOT

Writes OUT/embeddings.npy [N, D] (L2-normalised; D = 2·512 for the "concat" convention),
OUT/image_list.txt (same order, names as listed) and OUT/embed_config.json.
`fr.path`: a converted directory or a PyTorch .pt/.pth file (family detected from the keys or
named with `fr.family`); `fr.input_scale` overrides the family's ("minus1_1" | "0_1").
Argument: `size=tiny` (batch 8, tests).
"""
from __future__ import annotations

import ml_collections

from exfiqa_jax.configs import common


SIZES = ("default", "tiny")    # get_config's size= argument


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="default")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {SIZES}")
  config = common.base_config("embed", "out/embed")
  config.fr = common.fr_model(batch_size=32)
  config.images = ""                # image folder (recursive) or list file
  config.image_root = ""            # root for relative paths in a list file (default: its dir)
  config.data = common.data()
  del config.batch_size             # the FR batch is fr.batch_size
  if args.size == "tiny":
    config.fr.batch_size = 8
  return config
