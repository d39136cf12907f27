r"""Score a folder of face crops (or a list file) at every EX-FIQA exit, with ATTN-FIQA per block.

  exfiqa --config=score --config.quality_model.path=vitfiqa_token.pt \
      --config.images=DIR_OR_LIST --config.output=OUT [--config.quality_model.num_heads=8] \
      [--config.data.channel_order=rgb|bgr] [--config.batch_size=64] \
      [--config.skip_unreadable=True] [--config.exit=7]

`quality_model.path`: a converted directory or a PyTorch .pt (converted in memory), or
`method:path`; `quality_model.method` (and its options quality_model.serfiq.* / vitnt.* /
magface.*) picks a baseline method, whose columns scores.csv then has (crfiqa, serfiq,
grafiqs_image.., vitnt..; docs/methods.md, Baselines; configs/common.py). `images`:
every image under a folder (recursive, sorted) or a text file with one path per line (relative
paths are resolved against `image_root`, default the list file's folder). Writes OUT/scores.csv
(image, exit_1..exit_L, ex_fiqa_f, ex_fiqa_fw, attn_1..attn_L; for mode "fr" checkpoints
image, attn_1..attn_L) and OUT/scores.npz; OUT/skipped.txt lists files skipped with
skip_unreadable=True. `data.channel_order="bgr"` feeds the file's pixels as B,G,R — right for
CR-FIQA-prepared (channel-swapped) folders. `exit=k` runs the program truncated after block k
(its cost falls with k) and writes exit_1..exit_k, their fusions and attn_1..attn_k only.
`cascade="stored"` (or an agreement target, "0.95") runs the cascade the early_exit job
calibrated and stored with the model directory instead: per image the score at the exit it left
at, that exit, the decision and its GFLOPs (cascade_score, cascade_exit, cascade_accept,
cascade_gflops, q100_cascade), survivors carried across batches (docs/methods.md).
`data.align="detect"` takes raw photos instead: rows are detected faces (the primary one per
photo, or every face with `data.face="all"`), with the box, five landmarks and detector
confidence appended as columns; OUT/no_face.txt lists photos without a face.
Argument: `size=tiny` (batch 8, tests).
"""
from __future__ import annotations

import ml_collections

from exfiqa_jax.configs import common
from exfiqa_jax.detection import settings as detection_settings


SIZES = ("default", "tiny")    # get_config's size= argument


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="default")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {SIZES}")
  config = common.base_config("score", "out/score")
  config.quality_model = common.quality_model()
  config.images = ""                # image folder (recursive) or list file
  config.image_root = ""            # root for relative paths in a list file (default: its dir)
  config.data = common.data()
  # "detect": the images are raw photos — MTCNN finds the faces, each is aligned to the ArcFace
  # template and scored (docs/data.md, "Raw photos: detection and alignment"); "none": the
  # images are aligned crops already
  config.data.align = "none"
  photos = detection_settings.PhotoSettings()   # the defaults (exfiqa_jax/detection/settings.py)
  config.data.face = photos.face    # primary (big and central) | largest | probability | all
  config.data.detector_weights = photos.weights  # "" = installed facenet-pytorch; or .whl, folder
  config.data.detect_batch_size = photos.batch_size  # photos of one size per detector call
  # the reference's MTCNN settings and list sizes
  config.data.detector = ml_collections.ConfigDict(detection_settings.detector_defaults())
  config.skip_unreadable = False    # True: skip undecodable files, list them in skipped.txt
  config.chunk_images = 4096        # images per stored chunk: a stopped run resumes there
  config.exit = 0                   # k: run only blocks 1..k, write exits 1..k (0 = all exits)
  # the adaptive cascade calibrated by the early_exit job and stored with the model directory
  # (cascade.json): "stored" = its headline agreement target, "0.95" = that target, "" = off
  config.cascade = ""
  config.compute_dtype = "float32"  # "bfloat16": bf16 matmuls, f32 norms/heads/ATTN stats
  # 0–100 columns q100_*: "" = the model directory's quality_mapping.json when it has one
  # (written by configs/early_exit.py), a .json path, or "none"
  config.quality_mapping = ""
  if args.size == "tiny":
    config.batch_size = 8
  return config
