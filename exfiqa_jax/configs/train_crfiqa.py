r"""CR-FIQA (an iResNet with the `qs` quality head) trained as the official run (docs/methods.md,
CR-FIQA training; the training data formats: docs/data.md, "Training data").

  python main.py --config=configs/train_crfiqa.py --config.output=OUT \
      --config.data.root=/data/faces_emore                 # CR-FIQA(L): iResNet100, MS1MV2
  python main.py --config=configs/train_crfiqa.py:model=S --config.output=OUT \
      --config.data.root=/data/faces_webface_112x112       # CR-FIQA(S): iResNet50, CASIA-WebFace
  # an identity folder or ViT-FIQA's LMDB instead of insightface's train.rec:
  #   ... --config.data.kind=image_folder|lmdb --config.data.root=...

`OUT/model/` is a converted `crfiqa` directory: `score`/`eval` read it as the `crfiqa` method,
and checkpoints.directory_to_pt (converters/flax_to_torch.py) writes the official `.pt` layout.

Official constants (fdbtrs/CR-FIQA config.py, train_cr_fiqa.py, losses.py, run.sh): 4 GPUs ×
128 = 512 global batch; SGD momentum 0.9, weight decay 5e-4 on every parameter, lr 0.1
(cfg.lr / 512 × global batch), ×0.1 at the milestone epochs (L: 8, 14 of 18; S: 20, 28, 32 of
34), no warm-up; clip the backbone's (qs included) gradient norm at 5; ArcFace s = 64, m = 0.5
(cos(θ + m), no fallback); α = 10 on SmoothL1(β = 0.5) towards CR = CCS / NNCCS; dropout 0.4
before `fc`; 512-d embedding; random horizontal flip only; verification every 5686 (L) / 958 (S)
steps. Differences that remain are listed in docs/methods.md (BatchNorm statistics over the
global batch, not per GPU).
"""
from __future__ import annotations

import ml_collections

from exfiqa_jax.configs import common

SIZES = ("default", "smoke")    # get_config's size= argument
MODELS = {
    # CR-FIQA(L) and (S): depth, epochs, lr milestones (1-based epochs), eval interval, data
    "L": dict(depth=100, epochs=18, decay=(8, 14, 20, 25), every=5686, data="faces_emore"),
    "S": dict(depth=50, epochs=34, decay=(20, 28, 32), every=958, data="faces_webface_112x112"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="default", model="L")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {SIZES}")
  if args.model not in MODELS:
    raise ValueError(f"model={args.model!r} is not one of {tuple(MODELS)}")
  run = MODELS[args.model]
  config = common.base_config("train", f"out/train_crfiqa_{args.model}")
  config.batch_size = 512             # 4 GPUs × 128
  config.epochs = run["epochs"]
  config.total_steps = 0              # 0: epochs × (images // batch_size)
  config.stop_after = 0
  config.log_every = 50
  config.progress = True
  config.compute_dtype = "float32"    # "bfloat16" for bf16 convolutions on accelerators
  config.shard_centres = 0
  config.export_model = True

  config.architecture = ml_collections.ConfigDict(dict(
      family="crfiqa", layout="iresnet", depth=run["depth"],
      layers=(),                      # () = the depth's; e.g. (1, 1, 1, 1) for a tiny net
      widths=(64, 128, 256, 512), num_features=512, dropout=0.4, bn_eps=1e-5, img_size=112))
  config.optim = ml_collections.ConfigDict(dict(
      kind="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, clip_norm=5.0,
      decay_epochs=run["decay"], decay_factor=0.1))
  config.loss = ml_collections.ConfigDict(dict(
      scale=64.0, margins=(1.0, 0.5, 0.0), alpha=10.0, beta=0.5,
      cr_denominator="nnccs",         # CCS / NNCCS (the code); "nnccs_plus_one": the paper's
      margin_fallback=False))
  config.augment = ml_collections.ConfigDict(dict(enabled=True, gridsample_prob=0.0))  # flip

  config.data = ml_collections.ConfigDict(dict(
      kind="recordio",                # recordio (train.rec/.idx) | image_folder | lmdb
      root="", channel_order="rgb", num_images=0,   # 0: counted from root
      decode_threads=16, workers=0))  # workers > 0: Grain decoding processes (docs/data.md)
  config.eval = ml_collections.ConfigDict(dict(
      every=run["every"], batch_size=256, fmr=1e-3, limit=0.3,
      pairs_bin=""))                  # "" = the lfw/cfp_fp/agedb_30.bin beside train.rec
  config.checkpointing = ml_collections.ConfigDict(dict(every=run["every"], keep=3,
                                                     best_metric="", best_mode="max"))
  if args.size == "smoke":
    config.batch_size, config.total_steps, config.log_every = 8, 4, 1
    config.architecture.update(layers=(1, 1, 1, 1), widths=(8, 16, 24, 32), num_features=16)
    # A handful of classes can all lie at negative cosines (NNCCS ≤ 0): CCS / NNCCS then blows
    # up, which 85,742 (10,572) classes never do; the paper's CCS / (NNCCS + 1 + ε) stays finite.
    config.loss.cr_denominator = "nnccs_plus_one"
  return config
