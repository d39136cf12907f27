"""What every quality method shares: the bound scorer it returns and its input preparation.

    scorer = crfiqa.scorer(module, variables, model_config)
    scorer(images)          # uint8 [B, S, S, 3] RGB, or float32 already normalised → {column: [B]}
    scorer.apply(variables, images)   # the same, jitted and pure (for sharded callers)

The wiring (score, eval, `fx.load(..., method=)`) dispatches on a method's name (`METHOD` in each
module) and places `scorer.variables` on its devices once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax.convert import strict
from exfiqa_jax.data import preprocess
from exfiqa_jax.models import iresnet, quality_heads


@dataclasses.dataclass(frozen=True)
class Scorer:
  """A method bound to its model. `apply` is jitted: (variables, images) → {column: [B]}."""
  method: str
  columns: tuple[str, ...]
  apply: Callable[[Any, jax.Array], dict[str, jax.Array]]
  variables: Any

  def __call__(self, images: jax.Array | np.ndarray) -> dict[str, jax.Array]:
    return self.apply(self.variables, images)


def prepare_images(images: jax.Array, input_scale: str, channel_order: str = "rgb") -> jax.Array:
  """uint8 [B, H, W, 3] RGB → float32 as the family's network expects (`input_scale`, and B,G,R
  order for `channel_order="bgr"`); a float array is taken as already prepared. Traceable."""
  preprocess.check_channel_order(channel_order)
  if images.dtype != jnp.uint8:
    return images.astype(jnp.float32)
  if channel_order == "bgr":
    images = images[..., ::-1]
  return preprocess.scale_input(images, input_scale)


def wrong_model(method: str, needs: str, model_config: Mapping[str, Any]) -> ValueError:
  """The error for a method asked of a model it cannot score, naming the setting to change."""
  family = model_config.get("family") or ("vit" if "mode" in model_config else "unknown")
  return ValueError(f"{strict.flag('method')}{method} needs {needs}; this checkpoint's family "
                    f"is {family!r}. Choose another method or a checkpoint that fits.")


def unfolded_iresnet(method: str, module: Any, variables: Any,
                     model_config: Mapping[str, Any]) -> tuple[iresnet.IResNet, Any]:
  """(IResNet, its variables) of an FR model with its BatchNorms unfolded (GraFIQs reads their
  running statistics, SER-FIQ taps the network's dropout), unwrapping a CR-FIQA / eDifFIQA
  backbone; anything else is the error that names `quality_model.method`."""
  if (isinstance(module, quality_heads.BackboneWithHead)
      and isinstance(module.backbone, iresnet.IResNet)):
    module = module.backbone
    variables = quality_heads.backbone_variables(variables)
  if not isinstance(module, iresnet.IResNet) or "batch_stats" not in variables:
    raise wrong_model(
        method, "an iResNet / IR face-recognition CNN with its BatchNorms (load it with "
        "inference.load_variables and models.get_model: load_fr_model folds them away)",
        model_config)
  return module, variables


def for_inference(module: Any, variables: Any) -> tuple[Any, Any]:
  """(module, variables) with an iResNet's BatchNorms folded (same outputs, faster); anything
  else (already folded, a ViT) unchanged."""
  if isinstance(module, iresnet.IResNet):
    return iresnet.fold_batchnorm(module.config, variables, module.dtype)
  if (isinstance(module, quality_heads.BackboneWithHead)
      and isinstance(module.backbone, iresnet.IResNet)):
    return quality_heads.fold_batchnorm(module, variables, module.backbone.dtype)
  return module, variables


def bind(method: str, columns: tuple[str, ...],
         forward: Callable[[Any, jax.Array], dict[str, jax.Array]], variables: Any) -> Scorer:
  """A Scorer whose `apply` is `forward` under jit (variables are an argument, not constants)."""
  return Scorer(method, tuple(columns), jax.jit(forward), variables)


def head_scorer(method: str, family: str, column: str, module: Any, variables: Any,
                model_config: Mapping[str, Any]) -> Scorer:
  """A method whose quality is a learned head's output (models/quality_heads.py): CR-FIQA,
  eDifFIQA. `family` is the checkpoint family the method needs."""
  if model_config.get("family") != family or not quality_heads.is_quality_config(model_config):
    raise wrong_model(method, f"a {family} checkpoint", model_config)
  module, variables = for_inference(module, variables)
  input_scale = model_config.get("input_scale", "minus1_1")

  def forward(variables, images):
    quality, _ = module.apply(variables, prepare_images(images, input_scale))
    return {column: quality.astype(jnp.float32)}

  return bind(method, (column,), forward, variables)
