r"""EDC evaluation on IJB-C (1:1 templates, the FIQA papers' protocol; docs/evaluation.md).

Files you need (the insightface IJB-C release, `IJB_release/IJBC/`), passed as
`--config.data.manual_dir=<that IJBC folder>`:
  loose_crop/<img_name>                    the 469,375 loose face crops
  meta/ijbc_name_5pts_score.txt            img_name + 5 landmarks + faceness (12 columns)
  meta/ijbc_face_tid_mid.txt               img_name template_id media_id     (same order)
  meta/ijbc_template_pair_label.txt        template_id_1 template_id_2 label (15,658,489 pairs)
plus a quality model (a converted directory or the official .pt, e.g. vitfiqa_token.pt) and an
FR model (a converted iResNet/ViT checkpoint or .pt, e.g. ElasticFace-Arc `295672backbone.pth`
with --config.fr.family=elasticface; or precomputed embeddings in image order).

  exfiqa --config=eval_ijbc --config.data.manual_dir=~/IJB_release/IJBC \
      --config.quality_model.path=vitfiqa_t=ckpt/vitfiqa_token,vitfiqa_c=ckpt/vitfiqa_crfiqa \
      --config.fr.path=ckpt/elasticface --config.output=out/eval_ijbc

The first run aligns the faces into a TFDS data set (`--config.data.data_dir`, default the TFDS
folder) and reuses it afterwards; `--config.data.subset=N` keeps the first N templates for a
quick run. Every stage is cached in `output/cache` (resumable after a kill). At this scale the
bootstrap is costly: the default uses 20 resamples. Outputs: edc.csv, pauc.csv, summary.json,
summary.md, plots/, ijbc/scores_<model>.csv. Argument: `size=tiny` (tests).
"""
from __future__ import annotations

from exfiqa_jax.configs import common
from exfiqa_jax.configs.eval_common import eval_config


SIZES = ("default", "tiny")    # get_config's size= argument


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, size="default")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {SIZES}")
  config = eval_config(["ijbc"], output="out/eval_ijbc")
  config.eval.bootstrap = 20
  config.eval.chunk_images = 16384
  if args.size == "tiny":
    config.batch_size = 8
    config.eval.bootstrap = 10
    config.eval.chunk_images = 16
    config.report.attention_examples = 2
  return config
