"""Score a folder of face crops (or a list file) at every EX-FIQA exit, with ATTN-FIQA per block.

  python main.py --config=configs/score.py --config.checkpoint=vitfiqa_token.pt \
      --config.images=DIR_OR_LIST --config.output=OUT [--config.model.num_heads=8] \
      [--config.data.channel_order=rgb|bgr] [--config.batch_size=64] \
      [--config.skip_unreadable=True]

`checkpoint`: a converted directory or a PyTorch .pt (converted in memory). `images`: every image
under a folder (recursive, sorted) or a text file with one path per line (relative paths are
resolved against the list file's folder). Writes OUT/scores.csv (image, exit_1..exit_L,
ex_fiqa_f, ex_fiqa_fw, attn_1..attn_L; for mode "fr" checkpoints image, attn_1..attn_L) and
OUT/scores.npz; OUT/skipped.txt lists files skipped with skip_unreadable=True.
`data.channel_order="bgr"` feeds the file's pixels as B,G,R — right for CR-FIQA-prepared
(channel-swapped) folders. `get_config("tiny")` uses batch 8 (tests).
"""
from __future__ import annotations

import ml_collections

from configs.common import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = base_config("score")
  config.checkpoint = ""            # converted directory or PyTorch .pt
  config.images = ""                # image folder (recursive) or list file
  config.model = ml_collections.ConfigDict()
  config.model.num_heads = 8        # not recorded in any weight shape (CVLFace ViT-B: 16)
  config.model.family = ""          # "" = detect from the checkpoint's keys
  config.data = ml_collections.ConfigDict()
  config.data.channel_order = "rgb"   # rgb | bgr (CR-FIQA-prepared, channel-swapped files)
  config.data.decode_threads = 4
  config.batch_size = 64            # global, rounded up to a multiple of the device count
  config.skip_unreadable = False    # True: skip undecodable files, list them in skipped.txt
  if arg == "tiny":
    config.batch_size = 8
  return config
