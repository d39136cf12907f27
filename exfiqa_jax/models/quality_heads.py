"""FR backbones with a learned quality head: CR-FIQA and eDifFIQA (docs/methods.md, Baselines).

Both methods put a small head on the *unnormalised* embedding of an insightface iResNet (the
output of its `features` BatchNorm1d) and read the quality from it:
  head "linear" (CR-FIQA, fdbtrs/CR-FIQA backbones/iresnet.py): `qs = Linear(E → 1)`
  head "mlp"    (eDifFIQA, LSIbabnikz/eDifFIQA model/mlp.py): `l1 = Linear(E → H)`, exact (erf)
                GELU, `l2 = Linear(H → 1)`; H = 1024 in every released model
The Flax tree is {"backbone": <models/iresnet.py tree>, "head": {"qs"} | {"l1", "l2"}}; the key
maps in convert/quality_head_keys.py name the torch keys. Output, like the iResNet's:
`(quality [B], {"embedding": [B, E], "quality": [B]})`, so the model is also an FR model.
Higher quality = better for both.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax.models import iresnet

HEADS = ("linear", "mlp")   # CR-FIQA qs | eDifFIQA MLP
DEFAULT_HIDDEN = 1024       # eDifFIQA's MLP width (configs/ediffiqa{L,M,S}_config.yaml)


def is_quality_config(model_config: Mapping[str, Any]) -> bool:
  """True for the model_config of an iResNet with a quality head (it records "quality_head")."""
  return "quality_head" in model_config


class LinearHead(nn.Module):
  """CR-FIQA: `qs = Linear(E → 1)` on the embedding."""

  @nn.compact
  def __call__(self, embedding):
    return nn.Dense(1, name="qs")(embedding)[:, 0]


class MLPHead(nn.Module):
  """eDifFIQA: Linear(E → hidden) → GELU (exact, torch's default) → Linear(hidden → 1)."""
  hidden: int = DEFAULT_HIDDEN

  @nn.compact
  def __call__(self, embedding):
    x = nn.gelu(nn.Dense(self.hidden, name="l1")(embedding), approximate=False)
    return nn.Dense(1, name="l2")(x)[:, 0]


class BackboneWithHead(nn.Module):
  """An iResNet (`IResNet`, or `FoldedIResNet` for inference) and its quality head."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, images, train: bool = False):
    embedding, out = self.backbone(images, train=train)
    quality = self.head(embedding.astype(jnp.float32))
    return quality, {**out, "embedding": embedding, "quality": quality}


def head_module(model_config: Mapping[str, Any]) -> nn.Module:
  """The head a model_config names ("quality_head", and "head_hidden" for "mlp")."""
  kind = model_config["quality_head"]
  if kind == "linear":
    return LinearHead()
  if kind == "mlp":
    return MLPHead(int(model_config.get("head_hidden", DEFAULT_HIDDEN)))
  raise ValueError(f"quality_head must be one of {HEADS}, got {kind!r}")


def get_model(model_config: Mapping[str, Any], dtype: Any = None) -> BackboneWithHead:
  """The Flax module of a quality-head model_config (backbone in `dtype`, head in float32)."""
  cfg = iresnet.IResNetConfig.from_dict(dict(model_config))
  backbone = iresnet.IResNet(cfg, dtype=dtype or jnp.float32)
  return BackboneWithHead(backbone, head_module(model_config))


def head_shapes(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The head's parameter shapes ({"qs": {"kernel", "bias"}} | {"l1": ..., "l2": ...})."""
  head = head_module(model_config)
  embedding = jax.ShapeDtypeStruct((1, int(model_config["num_features"])), jnp.float32)
  return jax.eval_shape(lambda e: head.init(jax.random.key(0), e), embedding)["params"]


def backbone_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  """The backbone's part of a BackboneWithHead's variables (each collection's "backbone")."""
  return {c: tree["backbone"] for c, tree in variables.items()}


def fold_batchnorm(module: BackboneWithHead, variables: Mapping[str, Any],
                   dtype: Any = jnp.float32) -> tuple[BackboneWithHead, dict[str, Any]]:
  """`BackboneWithHead(IResNet)` eval variables → the same model with the backbone's BatchNorms
  folded (`iresnet.fold_batchnorm`); the head is unchanged. Inference only."""
  folded, folded_vars = iresnet.fold_batchnorm(module.backbone.config,
                                               backbone_variables(variables), dtype)
  head = jax.tree.map(lambda v: np.asarray(v, np.float32), variables["params"]["head"])
  return (BackboneWithHead(folded, module.head),
          {"params": {"backbone": folded_vars["params"], "head": head}})
