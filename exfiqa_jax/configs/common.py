"""Fields every job shares, declared once; big_vision-style `key=value` config arguments.

One schema across jobs:
  quality_model.{path, num_heads, family, method}   the quality model (score, eval, demo,
                                              early_exit); the method options per method:
  quality_model.{magface, serfiq, vitnt}.<option>   (exfiqa_jax/methods/registry.py)
  fr.{path, family, num_heads, input_scale, convention, batch_size}   the FR model (embed, eval)
  data.{channel_order ∈ {rgb, bgr}, decode_threads, ...}
Configs import ml_collections, each other and pure-Python exfiqa_jax modules (data/benchmark_names,
detection/settings, columns, methods/registry), never JAX: loading a config is instant (tests/test_configs.py).
"""
from __future__ import annotations

from typing import Any

import ml_collections

from exfiqa_jax.methods import registry

# 0 = the checkpoint's own count: a converted directory's recorded one, a published ViT's known
# one (ViT-FIQA / CVLFace ViT-S 8, CVLFace ViT-B 16; docs/checkpoints.md), else 8 with a warning.
# No weight shape records it: set it for a .pt of another architecture.
NUM_HEADS = 0


def base_config(task: str, output: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = task
  config.output = output or "out/" + task
  config.seed = 0
  config.distributed = False        # True on every host of a TPU pod slice / multi-host job
  config.batch_size = 64            # global; rounded up to a multiple of the device count
  config.progress = True
  # Persistent XLA compilation cache (exfiqa_jax/compile_cache.py): a folder, "" = off.
  config.compile_cache = "~/.cache/exfiqa_jax/xla"
  return config


def quality_model() -> ml_collections.ConfigDict:
  """The quality model: a converted directory or a PyTorch .pt, `[method:]path` (eval: several
  as name1=[method:]path1,name2=...), and the quality method with its options."""
  return ml_collections.ConfigDict(dict(
      path="",
      num_heads=NUM_HEADS,
      family="",              # "" = detect from the checkpoint's keys
      # "" = what the checkpoint implies (ViT-FIQA: exits, fusions, ATTN; CR-FIQA: crfiqa;
      # eDifFIQA: ediffiqa; MagFace: magface; FR ViT: ATTN + ViTNT), or one of
      # crfiqa | ediffiqa | magface | serfiq | grafiqs | vitnt (docs/methods.md, Baselines)
      method="",
      # each method's options, official defaults: magface.{channel_order, any_family},
      # serfiq.{passes, rate, seed, rescale, alpha, r, chunk}, vitnt.{blocks (0-based; () =
      # all), scaling, attention "last" | "mean"}
      **{name: ml_collections.ConfigDict(dict(opts))
         for name, opts in registry.OPTIONS.items()}))


def fr_model(batch_size: int = 64) -> ml_collections.ConfigDict:
  """The face-recognition model of the embeddings and comparisons."""
  return ml_collections.ConfigDict(dict(
      path="",                # converted FR directory or .pt (eval also: precomputed:, quality_model)
      family="",              # "" = detect from the keys (elasticface must be named)
      num_heads=NUM_HEADS,    # ViT FR .pt only
      input_scale="",         # "" = the family's; "minus1_1" (x/127.5 - 1) | "0_1" (x/255)
      convention="concat",    # flip: concat (FIQA papers) | sum (insightface) | none
      batch_size=batch_size))


def data(channel_order: str = "rgb", **extra: Any) -> ml_collections.ConfigDict:
  """Image reading: channel_order "bgr" feeds B,G,R (CR-FIQA-prepared, channel-swapped files)."""
  return ml_collections.ConfigDict(dict(channel_order=channel_order, decode_threads=4, **extra))


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """`get_config` argument "k1=v1,k2=v2" → ConfigDict over `defaults` (values typed like the
  default; "+" separates list items: benchmarks=lfw+agedb_30). Unknown keys are an error."""
  out = ml_collections.ConfigDict(dict(defaults))
  for item in [s.strip() for s in (arg or "").split(",") if s.strip()]:
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not key=value; known keys: "
                       f"{sorted(defaults)} (e.g. configs/score.py:size=tiny)")
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      out[key] = type(default)(value)
    else:
      out[key] = value
  return out
