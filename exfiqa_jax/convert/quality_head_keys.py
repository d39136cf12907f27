"""Converter families for iResNets with a quality head (models/quality_heads.py) ⇄ PyTorch.

  crfiqa    fdbtrs/CR-FIQA `<step>backbone.pth`: the insightface iResNet keys (bare, as in
            arcface_iresnet) plus `qs.weight` [1, E], `qs.bias` [1]; BN eps 1e-5; input
            (x/255 − 0.5)/0.5, RGB (docs/methods.md, Baselines)
  ediffiqa  LSIbabnikz/eDifFIQA `ediffiqa{L,M,S}.pth`: `base_model.<iResNet key>` (iresnet100 /
            50 / 18), `mlp.l1.*` [H, E], `mlp.l2.*` [1, H] (the GELU has no weights); BN eps
            1e-5; input PIL RGB → (x/255 − 0.5)/0.5
The backbone keys map through convert/iresnet_keys.py (one rule for every iResNet leaf); the head
is two or four more leaves. Strict both ways: every missing, unexpected or mis-shaped key is one
CheckpointError, and the torch dict converted back loads into the official module strictly.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from exfiqa_jax.convert import iresnet_keys, layout
from exfiqa_jax.convert.strict import CheckpointError, check_state_dict
from exfiqa_jax.models import iresnet, quality_heads

_LEAF = {"kernel": "weight", "bias": "bias"}


@dataclasses.dataclass(frozen=True)
class QualityHeadFamily:
  """One released iResNet-plus-head checkpoint family (registry object, convert/families.py)."""
  name: str
  head: str                 # models/quality_heads.py HEADS
  backbone_prefix: str      # where the iResNet's keys sit ("" or "base_model.")
  head_prefix: str          # where the head's modules sit ("" → qs.*, "mlp." → mlp.l1.*)
  description: str = ""

  kind = "iresnet"

  # -- detection and key split
  def _head_keys(self) -> list[str]:
    names = ("qs",) if self.head == "linear" else ("l1", "l2")
    return [f"{self.head_prefix}{n}.{leaf}" for n in names for leaf in ("weight", "bias")]

  def backbone_state_dict(self, sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The iResNet's keys, relative to the backbone (the head's keys left out)."""
    head, p = set(self._head_keys()), self.backbone_prefix
    return {k[len(p):]: v for k, v in sd.items() if k.startswith(p) and k not in head}

  def matches(self, sd: Mapping[str, np.ndarray]) -> bool:
    p = self.backbone_prefix
    backbone = all(f"{p}{k}" in sd for k in ("conv1.weight", "layer1.0.bn1.weight", "fc.weight"))
    return backbone and all(k in sd for k in self._head_keys())

  # -- config
  def infer_config(self, sd: Mapping[str, np.ndarray], normalisation: str | None = None,
                   bn_eps: float | None = None, **unused: Any) -> dict[str, Any]:
    """model_config.json: the iResNet's (arcface_iresnet rules) + the head's kind and width."""
    missing = [k for k in self._head_keys() if k not in sd]
    if missing:
      raise CheckpointError(f"not a {self.name} checkpoint: no {missing} (the quality head)")
    config = iresnet_keys.ARCFACE_IRESNET.infer_config(
        self.backbone_state_dict(sd), normalisation=normalisation, bn_eps=bn_eps)
    config.update(family=self.name, kind=self.kind, quality_head=self.head)
    if self.head == "mlp":
      config["head_hidden"] = int(np.shape(sd[f"{self.head_prefix}l1.weight"])[0])
    return config

  def expected_shapes(self, config: Mapping[str, Any]) -> dict[str, tuple]:
    backbone = iresnet_keys.expected_torch_shapes(iresnet.IResNetConfig.from_dict(dict(config)))
    out = {self.backbone_prefix + k: v for k, v in backbone.items()}
    for name, leaves in quality_heads.head_shapes(config).items():
      for leaf, struct in leaves.items():
        out[f"{self.head_prefix}{name}.{_LEAF[leaf]}"] = tuple(reversed(struct.shape))
    return out

  # -- conversion
  def to_flax(self, sd: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict:
    """Strict: every problem of backbone and head listed in one CheckpointError."""
    check_state_dict(self.expected_shapes(config), sd)
    backbone = iresnet_keys.state_dict_to_variables(
        self.backbone_state_dict(sd), iresnet.IResNetConfig.from_dict(dict(config)))
    head = {name: {leaf: np.ascontiguousarray(layout.to_flax_by_rank(np.asarray(
        sd[f"{self.head_prefix}{name}.{_LEAF[leaf]}"], np.float32))) for leaf in leaves}
        for name, leaves in quality_heads.head_shapes(config).items()}
    return {"params": {"backbone": backbone["params"], "head": head},
            "batch_stats": {"backbone": backbone["batch_stats"]}}

  def to_torch(self, variables: Mapping[str, Any], config: Mapping[str, Any]
               ) -> dict[str, np.ndarray]:
    backbone = iresnet_keys.variables_to_state_dict(quality_heads.backbone_variables(variables))
    sd = {self.backbone_prefix + k: v for k, v in backbone.items()}
    for name, leaves in variables["params"]["head"].items():
      for leaf, value in leaves.items():
        sd[f"{self.head_prefix}{name}.{_LEAF[leaf]}"] = np.ascontiguousarray(
            layout.to_torch_by_rank(np.asarray(value, np.float32)))
    return sd


CRFIQA = QualityHeadFamily(
    "crfiqa", "linear", backbone_prefix="", head_prefix="",
    description="CR-FIQA iResNet-50/100 with its qs head (insightface keys + qs.*)")
EDIFFIQA = QualityHeadFamily(
    "ediffiqa", "mlp", backbone_prefix="base_model.", head_prefix="mlp.",
    description="eDifFIQA L/M/S: iResNet-100/50/18 (base_model.*) + MLP head (mlp.l1/l2)")

# Before the bare iResNet families: a CR-FIQA checkpoint also has every arcface_iresnet key.
FAMILIES = (CRFIQA, EDIFFIQA)
