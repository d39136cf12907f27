"""Embed a folder of aligned 112×112 face crops (or a list file) with an FR model.

  python main.py --config=configs/embed.py --config.model=ckpt/elasticface \
      --config.images=DIR --config.output=OUT
  python main.py --config=configs/embed.py --config.model=backbone.pth \
      --config.family=elasticface --config.images=list.txt --config.image_root=ROOT

Writes OUT/embeddings.npy [N, D] (L2-normalised; D = 2·512 for the "concat" convention),
OUT/image_list.txt (same order, names as listed) and OUT/embed_config.json.
`model`: a converted directory or a PyTorch .pt/.pth file (family detected from the keys or
named with `family`); `normalisation` overrides the family's input scale ("minus1_1" | "0_1").
"""
from __future__ import annotations

from configs.common import base_config


def get_config(arg: str | None = None):
  config = base_config("embed")
  config.model = ""                 # converted directory or PyTorch checkpoint
  config.family = ""                # "" = detect from the keys (elasticface must be named)
  config.normalisation = ""         # "" = the family's default input scale
  config.num_heads = 0              # ViT FR .pt only (no shape records it): 0 = 8; ViT-B 16
  config.images = ""                # image folder (recursive) or list file
  config.image_root = ""            # root for relative paths in a list file (default: its dir)
  config.channel_order = "rgb"      # "bgr_on_disk" for CR-FIQA-prepared folders
  config.convention = "concat"      # concat (FIQA papers) | sum (insightface) | none (no flip)
  config.decode_threads = 4
  config.batch_size = 32
  if arg == "tiny":
    config.batch_size = 8
  return config
