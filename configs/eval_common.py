"""Defaults shared by the evaluation configs (eval_ijbc.py, eval_verification.py, demo.py)."""
from __future__ import annotations

from typing import Sequence

import ml_collections

from configs.common import base_config
from exfiqa_jax.evaluate import manual_dir_key

FMRS = (1e-2, 1e-3, 1e-4)     # the papers' EDC plots; tables at 1e-3
MODES = ("fiqa", "iso")        # fiqa reproduces the published numbers; iso = Schlett / ISO style
PAUC_LIMIT = {"fiqa": 0.3, "iso": 0.2}


def eval_config(benchmarks: Sequence[str], task: str = "eval") -> ml_collections.ConfigDict:
  config = base_config(task)
  config.output = "out/eval"
  # Quality model(s): a converted directory or PyTorch .pt; several as name1=path1,name2=path2
  # (e.g. vitfiqa_t=ckpt/vitfiqa_token,vitfiqa_c=ckpt/vitfiqa_crfiqa).
  config.checkpoint = ""
  config.model = ml_collections.ConfigDict(dict(num_heads=8, family=""))
  # FR model(s), comma list: a converted FR directory or .pt (iResNet / ViT families),
  # "precomputed:<embeddings.npy>" (one row per image, in image order), or "quality_model"
  # (the ViT-FIQA model's own feature head; "quality_model:<name>" with several).
  config.fr_model = ""
  config.fr = ml_collections.ConfigDict(dict(
      family="",              # "" = detect from the keys (elasticface must be named)
      normalisation="",       # "" = the family's input scale; "minus1_1" | "0_1"
      num_heads=0,            # ViT FR .pt only (no shape records it): 0 = 8; CVLFace ViT-B 16
      convention="concat",    # concat (FIQA papers) | sum (insightface) | none (no flip)
      batch_size=64))
  config.benchmarks = ",".join(benchmarks)
  config.data = ml_collections.ConfigDict(dict(
      manual_dir="",          # folder with the benchmark files (see the builders' layouts)
      manual_dirs=ml_collections.ConfigDict({manual_dir_key(b): "" for b in benchmarks}),  # per benchmark
      data_dir="",            # where the TFDS builders write (default: the TFDS default)
      channel_order="",       # "" = the data set's own; "bgr" for CR-FIQA-prepared folders
      skip_corrupt=False,
      subset=0,               # IJB-C: keep the first N templates (0 = all)
      decode_threads=4))
  config.eval = ml_collections.ConfigDict(dict(
      fmrs=FMRS, modes=MODES,
      pauc_limit=ml_collections.ConfigDict(dict(PAUC_LIMIT)),
      bootstrap=200,          # pAUC bootstrap resamples (0 = no CI)
      alpha=0.05,             # 95 % intervals
      set_group=8,            # quality columns per EDC call (memory at IJB-C scale)
      chunk_images=4096))     # images per resumable chunk of the scoring stages
  config.report = ml_collections.ConfigDict(dict(plots=True, attention_examples=4))
  config.progress = True
  return config

