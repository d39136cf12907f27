"""Registry of model families: which PyTorch checkpoints we understand and how to convert them.

A family knows one checkpoint layout (key names) and the Flax module it becomes:

  name                      stable id, recorded as "family" in model_config.json
  matches(sd) -> bool       does this (unwrapped) state dict look like ours?
  infer_config(sd, **flags) -> dict        JSON model_config (architecture from the shapes,
                                           a "family" field; flags such as num_heads, None
                                           or 0 = the architecture's own: vit_keys.RELEASES)
  expected_shapes(config) -> {key: shape}  every torch key the strict check demands
  to_flax(sd, config) -> {"params": ..., "batch_stats": ...}     strict
  to_torch(variables, config) -> {key: np.ndarray}              loads with strict=True

The Flax module itself comes from `exfiqa_jax.models.get_model(config)`.
A new family is one object appended to FAMILIES (first match wins in `detect_family`).
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy as np

from exfiqa_jax.convert import iresnet_keys, quality_head_keys, vit_keys
from exfiqa_jax.convert.strict import CheckpointError, flag


class Family(Protocol):
  name: str

  def matches(self, sd: Mapping[str, np.ndarray]) -> bool: ...
  def infer_config(self, sd: Mapping[str, np.ndarray], **flags: Any) -> dict[str, Any]: ...
  def expected_shapes(self, config: dict[str, Any]) -> dict[str, tuple]: ...
  def to_flax(self, sd: Mapping[str, np.ndarray], config: dict[str, Any]) -> dict: ...
  def to_torch(self, variables: dict, config: dict[str, Any]) -> dict[str, np.ndarray]: ...


# The quality-head families before the bare iResNets: their keys are a superset of them.
FAMILIES: tuple[Family, ...] = ((vit_keys.VIT,) + tuple(quality_head_keys.FAMILIES)
                                + tuple(iresnet_keys.FAMILIES))


def names() -> list[str]:
  return [f.name for f in FAMILIES]


def family_by_name(name: str) -> Family:
  for family in FAMILIES:
    if family.name == name:
      return family
  raise CheckpointError(f"unknown model family {name!r}; known families: {names()} (fix "
                        f"{flag('family')}<name>, or leave it empty to detect the family from "
                        "the keys)")


def detect_family(sd: Mapping[str, np.ndarray], family: str | None = None) -> Family:
  """The named family, or the first registered family whose `matches` accepts the keys."""
  if family:
    return family_by_name(family)
  for candidate in FAMILIES:
    if candidate.matches(sd):
      return candidate
  sample = sorted(sd)[:8]
  raise CheckpointError(
      f"no known model family matches this checkpoint (first keys: {sample}); known families: "
      f"{names()}. Pass {flag('family')}<name> if it is one of them under different key "
      "names.")


def family_of_config(model_config: Mapping[str, Any]) -> Family:
  """The family that built a converted model (ViT configs written by the trainer carry none)."""
  name = model_config.get("family") or (vit_keys.VIT.name if "mode" in model_config else None)
  if name is None:
    raise CheckpointError("model_config.json names no family and is not a ViT config; "
                          f"add \"family\": one of {names()}")
  return family_by_name(name)



def check_recorded(model_config: Mapping[str, Any], where: str) -> None:
  """CheckpointError naming `where` (a model_config.json) for a field the variable shapes cannot
  check: a ViT's sizes and num_heads (vit_keys.check_recorded)."""
  if "mode" in model_config:
    vit_keys.check_recorded(model_config, where)
