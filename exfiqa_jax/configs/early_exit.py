r"""Early exits: fixed exits, the adaptive cascade and calibrated thresholds, on a benchmark.

  exfiqa --config=early_exit \
      --config.quality_model.path=out/demo/train/model --config.output=out/early_exit
  exfiqa --config=early_exit:benchmark=lfw --config.data.manual_dir=DIR \
      --config.quality_model.path=vitfiqa_token.pt --config.fr.path=r100.pt
  exfiqa --config=early_exit:size=smoke     # tests (a model path is needed)

Calibrates on one split and evaluates on another, identity-disjoint (exfiqa_jax/evaluation/
early_exit.py): synthetic faces (default) use the "val" and "test" splits, other benchmarks are
split by identity (or by connected pairs, else by image). Writes early_exit.csv / .json / .md,
quality_mapping.json (also into the model directory with early_exit.mapping.store_with_model),
plots/early_exit_pauc_vs_gflops.png and plots/early_exit_decided.png.

Fields (config.early_exit): tau.discard (default 0.2: tau discards 20 % of the calibration set
at full depth) or tau.value (explicit; NaN = use discard); cascade.exits (() = the engine's
default, (3, 6, 9, 12) for ViT-S), cascade.targets (agreement targets), cascade.prune_exits,
cascade.robust (how conservative: chosen by identity-grouped cascade.folds-fold cross-validation,
exfiqa_jax/calibrate/cascade.py robust_cascade; False = the exact calibration-split optimum),
cascade.cost ("measured": exits and thresholds that maximise images/s predicted by the cost
model measured on this device, exfiqa_jax/models/cascade_cost.py, kept beside the compile cache,
and one full segment where no cascade beats the full pass; "gflops": the fewest GFLOPs),
cascade.cost_repeats and cascade.cost_min_seconds (interleaved rounds per cost-table entry: at
least that many, and more until each program has run that long), cascade.min_speedup (the
predicted margin a cascade must win by, for the cost model's own error; else one full segment),
cascade.store_with_model (cascade.json into the model directory, which
`fx.load(dir).cascade(images)` runs);
thresholds.discard / thresholds.fnmr (threshold table with bootstrap intervals, at
thresholds.fmr); mapping.kind ("quantile" | "logistic"); fusion_fit (the learned fusion
ex_fiqa_fit: weights fitted on the calibration split, reported on the evaluation split beside
ex_fiqa_f and ex_fiqa_fw; enabled, steps, learning_rate, temperature, init "fw" | "f",
normalization "none" | "zscore" | "minmax" | "rank"); timing.images (images/s measured on
this many evaluation images; 0 = skip; timing.repeats / timing.min_seconds: interleaved rounds,
at least that many and more until each route has run that long; timing.fixed_exits: also
every fixed exit, not only the full pass). Arguments: size=default|smoke, benchmark=<name>.
"""
from __future__ import annotations

import ml_collections

from exfiqa_jax.configs import common, train_tiny
from exfiqa_jax.configs.eval_common import eval_config

TARGETS = (0.9, 0.95, 0.99, 0.995, 0.999)
SIZES = ("default", "smoke")    # get_config's size= argument


def settings(size: str = "default") -> ml_collections.ConfigDict:
  """config.early_exit: what the task (and the demo's early-exit analysis) reads."""
  smoke = size == "smoke"
  return ml_collections.ConfigDict(dict(
      fmr=1e-3,                          # pAUC-EDC at this FMR, `fiqa` mode, limit eval.pauc_limit
      tau=ml_collections.ConfigDict(dict(discard=0.2, value=float("nan"))),
      cascade=ml_collections.ConfigDict(dict(
          exits=(),                      # () = exfiqa_jax.models.exits.default_exits(depth)
          targets=TARGETS, headline=0.99, prune_exits=True,
          robust=True,                   # conservativeness by identity-grouped cross-validation
          folds=5,
          cost="measured",               # minimise measured seconds ("gflops": GFLOPs, the
          cost_repeats=5,                # edge-device case); timed calls per cost-table entry
          cost_min_seconds=0.0 if smoke else 0.5,   # and more until each has run this long
          min_speedup=1.05,              # a cascade must be predicted this much faster
          store_with_model=True)),       # cascade.json beside the model: fx.load(dir).cascade
      thresholds=ml_collections.ConfigDict(dict(
          discard=(0.1, 0.2, 0.3),       # discard fractions → quality thresholds (+ bootstrap CI)
          fnmr=(0.05, 0.02),             # FNMR targets at `fmr` → thresholds (needs pairs)
          resamples=20 if smoke else 200,
          fnmr_resamples=0 if smoke else 50,
          alpha=0.05)),
      mapping=ml_collections.ConfigDict(dict(kind="quantile", knots=101,
                                             store_with_model=True)),
      fusion_fit=ml_collections.ConfigDict(dict(   # ex_fiqa_fit: weights learned on the
          enabled=True, steps=50 if smoke else 200,  # calibration split (pAUC surrogate, Adam)
          learning_rate=0.05, temperature=0.05, init="fw", normalization="none")),
      split=ml_collections.ConfigDict(dict(fraction=0.5)),   # non-synthetic: calibration share
      timing=ml_collections.ConfigDict(dict(images=32 if smoke else 256, repeats=1 if smoke else 3,
                                            min_seconds=0.0 if smoke else 0.5,
                                            all_targets=True, fixed_exits=True))))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="default", benchmark="synthetic_faces")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {SIZES}")
  smoke = args.size == "smoke"
  config = eval_config([args.benchmark], task="early_exit", output="out/early_exit")
  config.quality_model.path = "out/demo/train/model"   # the demo's trained model
  config.fr.path = "quality_model"    # the quality model's own feature head (as the demo)
  config.batch_size = 128
  config.eval.fmrs = (1e-3,)
  config.eval.modes = ("fiqa",)
  config.eval.bootstrap = 0
  # Synthetic faces: the demo's identity split (configs/demo.py), "val" calibrates, "test"
  # evaluates; images per identity and pairs as the demo's test split.
  train = train_tiny.get_config(f"size={args.size}")
  config.train = ml_collections.ConfigDict(dict(data=train.data))
  config.train.data.eval_identities = 8 if smoke else config.train.data.eval_identities
  config.train.data.test_identities = 8 if smoke else 100
  config.test = ml_collections.ConfigDict(dict(per_identity=6 if smoke else 10,
                                               impostors_per_genuine=10.0, clean_fraction=0.5))
  config.early_exit = settings(args.size)
  return config
