"""The embedded default: train a tiny ViT-FIQA on synthetic faces, evaluate it, write the report.

  exfiqa --config=demo                       # ≈ 5-10 min on a 2-core CPU
  exfiqa --config=demo:size=smoke            # the tests' size: 3-4 min, < 1 min compiled

No downloads: the synthetic-faces benchmark (exfiqa_jax/data/synthetic.py) is rendered on the
fly. Outputs in `output` (default out/demo): summary.md (pAUC tables ×1e3, the demo's targets,
Spearman correlations with the degradation severity), summary.json, edc.csv, pauc.csv, plots/,
synthetic_faces/scores_vitfiqa_tiny.csv, train/ (checkpoints, train_log.csv, eval.csv, model/
with its quality_mapping.json), early_exit/ (configs/early_exit.py outputs), cache/. Rerunning
resumes: nothing finished is recomputed.
"""
from __future__ import annotations

import ml_collections

from exfiqa_jax.configs import common, early_exit, train_tiny
from exfiqa_jax.configs.eval_common import eval_config


SIZES = ("default", "smoke")    # get_config's size= argument


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="default")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {SIZES}")
  smoke = args.size == "smoke"
  config = eval_config(["synthetic_faces"], task="demo", output="out/demo")
  config.train = train_tiny.get_config(f"size={args.size}")
  config.train.output = ""            # "" = <output>/train
  config.quality_model.path = ""      # the trained model (the demo sets it)
  config.fr.path = "quality_model"    # the ViT-FIQA model's own feature head
  # The field's methods that apply to the trained ViT, run on it beside ViT-FIQA and compared
  # in summary.md and comparison.md (docs/methods.md, Baselines): ViTNT-FIQA (training-free)
  config.baselines = ("vitnt",)
  config.batch_size = 128
  config.test = ml_collections.ConfigDict(dict(
      per_identity=4 if smoke else 10,        # images per test identity
      impostors_per_genuine=10.0,             # all genuine pairs + this many impostors each
      clean_fraction=0.5))
  config.train.data.test_identities = 6 if smoke else 100
  config.eval.bootstrap = 8 if smoke else 200
  config.eval.bootstrap_unit = "identity"   # test identities recur across pairs: resample them
  config.report.attention_examples = 2 if smoke else 4
  config.targets = ml_collections.ConfigDict(dict(fmr=1e-3, max_ratio_to_random=0.7,
                                                  min_spearman=0.5))
  # Early exits on the trained model (configs/early_exit.py; summary.md states the compute
  # saved at 99 % agreement), kept to seconds: images/s of the full pass and the 99 % cascade
  # on 128 images, no FNMR-target thresholds and no learned fusion (they need the val split's
  # comparisons).
  config.early_exit = early_exit.settings(args.size)
  config.early_exit.timing.update(dict(images=32 if smoke else 128, repeats=1,
                                       all_targets=False, fixed_exits=False))
  config.early_exit.thresholds.fnmr = ()
  config.early_exit.fusion_fit.enabled = False
  return config
