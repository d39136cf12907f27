"""Defaults shared by the evaluation configs (eval_ijbc.py, eval_verification.py, demo.py)."""
from __future__ import annotations

from typing import Sequence

import ml_collections

from exfiqa_jax.configs import common
from exfiqa_jax.data.benchmark_names import manual_dir_key

FMRS = (1e-2, 1e-3, 1e-4)     # the papers' EDC plots; tables at 1e-3
MODES = ("fiqa", "iso")        # fiqa reproduces the published numbers; iso = Schlett / ISO style
PAUC_LIMIT = {"fiqa": 0.3, "iso": 0.2}


def eval_config(benchmarks: Sequence[str], task: str = "eval",
                output: str = "out/eval") -> ml_collections.ConfigDict:
  config = common.base_config(task, output)
  # Quality model(s): a converted directory or PyTorch .pt; several as name1=path1,name2=path2
  # (e.g. vitfiqa_t=ckpt/vitfiqa_token,vitfiqa_c=ckpt/vitfiqa_crfiqa); a baseline method per
  # entry as name=method:path (ours=ckpt/vitfiqa_token,cr=crfiqa:cr.pth,gq=grafiqs:r100.pth).
  config.quality_model = common.quality_model()
  # Another method's scores as a quality column: name=scores:<file>[#column][?lower] in
  # quality_model.path (text "path score", OFIQ CSV, CSV, .npy, eDifFIQA pickle; docs/
  # evaluation.md, "Compare with other methods"); lower_is_better: comma list of such names whose
  # values are lower-is-better (the same as `?lower`)
  config.quality_model.lower_is_better = ""
  # FR model(s) in fr.path, comma list: a converted FR directory or .pt (iResNet / ViT families),
  # "precomputed:<embeddings.npy>" (one row per image, in image order), or "quality_model"
  # (the ViT-FIQA model's own feature head; "quality_model:<name>" with several).
  config.fr = common.fr_model()
  # Fixed early exit: score with the program truncated after block k (exits 1..k, fusions of
  # exits 1..k; ATTN-FIQA up to block k); 0 = every exit.
  config.exit = 0
  # Matmul dtype of the quality model(s): "float32" | "bfloat16" (LayerNorms, exit heads and
  # ATTN statistics stay float32; docs/accelerators.md). FR models run in float32.
  config.compute_dtype = "float32"
  config.benchmarks = ",".join(benchmarks)
  config.data = common.data(
      channel_order="",       # "" = as the data set records; "rgb" | "bgr" (CR-FIQA-prepared)
      manual_dir="",          # folder with the benchmark files (see docs/data.md)
      manual_dirs=ml_collections.ConfigDict({manual_dir_key(b): "" for b in benchmarks}),
      data_dir="",            # where the TFDS builders write (default: the TFDS default)
      skip_corrupt=False,
      subset=0,               # IJB-C: keep the first N templates (0 = all)
      # "published": the FIQA scripts' pixels (IJB-C crops and .bin / XQLFW images as CR-FIQA's
      # scripts write and read them); "lossless": PNG IJB-C crops, stored .bin bytes
      # (docs/data.md, "Protocols: published and lossless"). The demo's arrays ignore it.
      protocol="published",   # benchmark_names.PROTOCOLS
      image_format="",        # IJB-C "jpeg" | "png" (must agree with protocol); "" = from it
      adience_folds="")       # folder with Adience fold_*_data.txt (age, gender); "" = manual dir
  config.eval = ml_collections.ConfigDict(dict(
      fmrs=FMRS, modes=MODES,
      pauc_limit=ml_collections.ConfigDict(dict(PAUC_LIMIT)),
      bootstrap=200,          # pAUC bootstrap resamples (0 = no CI)
      alpha=0.05,             # 95 % intervals
      # what a bootstrap resample draws: "pair" | "identity" (pair sets with per-image identity
      # labels, e.g. the synthetic set) | "template" (IJB-C): whole units with replacement
      # (docs/evaluation.md, "Bootstrap"); recorded in summary.json
      bootstrap_unit="template" if "ijbc" in benchmarks else "pair",
      paired=True,            # pauc_diff.csv: Δ pAUC of chosen column pairs, paired bootstrap
      set_group=8,            # quality columns per EDC call (memory at IJB-C scale)
      # per-group EDC: a CSV "image,group" (more columns = more groupings); Adience's age and
      # gender are used whenever its fold files are found (docs/evaluation.md, Per-group EDC)
      groups="",
      chunk_images=4096))     # images per resumable chunk of the scoring stages
  config.report = ml_collections.ConfigDict(dict(
      plots=True, attention_examples=4,
      # comparison.md/.csv and plots/comparison_edc.png (docs/evaluation.md, "Compare with other
      # methods"): rows = quality columns, comma list ("" = each model's headline columns and
      # every score file); reference = the row the others are compared with ("" = the first);
      # fmrs = comma list of the evaluated FMRs to show ("" = all)
      comparison=ml_collections.ConfigDict(dict(rows="", reference="", fmrs=""))))
  return config
