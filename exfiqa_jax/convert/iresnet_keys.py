"""Converter families for the FR CNNs (exfiqa_jax/models/iresnet.py) ⇄ PyTorch state dicts.

The Flax tree mirrors the torch module tree, so one generic rule maps every leaf:
  <module path joined by ".">.{weight|bias|running_mean|running_var}
  conv kernel [kh, kw, in, out] ⇄ torch [out, in, kh, kw]; dense kernel [in, out] ⇄ [out, in];
  BN scale/bias ⇄ weight/bias, mean/var ⇄ running_mean/running_var (+ num_batches_tracked, which
  torch stores and Flax does not need); PReLU negative_slope ⇄ weight.
Families (what each released checkpoint contains, checked against the official sources):
  arcface_iresnet  insightface arcface_torch backbone.pth: bare keys (conv1.weight, layer1.0.bn1.*,
                   fc.*, features.*), BN eps 1e-5, input (x/255 − 0.5)/0.5
  elasticface      same keys and eps as arcface_iresnet (not distinguishable from keys: name it
                   with --family elasticface)
  magface          {"state_dict": {"features.module.<backbone key>" | "module.features.<key>",
                   "fc.weight" (the MagLinear classifier)}}; BN eps 2e-5; input x/255
  curricularface   CurricularFace_Backbone.pth (face.evoLVe IR-101): input_layer.*, body.N.
                   {shortcut_layer, res_layer.0-4}, output_layer.{0,3,4}; input (x/255 − 0.5)/0.5
  tface_ir         TFace torchkit IR (res_layer.0-5, a BN after the first conv)
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import numpy as np

from exfiqa_jax.convert import layout
from exfiqa_jax.convert.strict import CheckpointError, check_state_dict, flag
from exfiqa_jax.data.preprocess import INPUT_SCALES
from exfiqa_jax.models import iresnet

BN_TORCH = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
# MagFace checkpoints: the backbone sits under one of these; anything else is its training head.
MAGFACE_PREFIXES = ("features.module.", "module.features.", "features.")


def _strict_check(expected: dict[str, tuple], state_dict: dict[str, np.ndarray]) -> None:
  """Fails listing every missing, unexpected and mis-shaped key."""
  check_state_dict(expected, state_dict)


# ---------------------------------------------------------------- generic tree <-> state dict

def _flax_shapes(config: iresnet.IResNetConfig) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp
  model = iresnet.IResNet(config)
  images = jax.ShapeDtypeStruct((1, config.img_size, config.img_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)


def _leaves(tree: dict, prefix: tuple = ()):
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _torch_key(collection: str, path: tuple[str, ...], ndim: int) -> str:
  module, leaf = ".".join(path[:-1]), path[-1]
  if collection == "batch_stats":
    return f"{module}.{BN_TORCH[leaf]}"
  if leaf == "kernel":
    return f"{module}.weight"
  if leaf == "negative_slope":
    return f"{module}.weight"
  if leaf in BN_TORCH:   # BN scale/bias and Dense bias (bias → bias)
    return f"{module}.{BN_TORCH[leaf]}"
  raise KeyError(f"no torch name for Flax leaf {collection}/{'/'.join(path)}")


def _bn_modules(shapes: dict) -> list[str]:
  return sorted({".".join(p[:-1]) for p, _ in _leaves(shapes.get("batch_stats", {}))})


def expected_torch_shapes(config: iresnet.IResNetConfig) -> dict[str, tuple]:
  """Every key (with shape) of the official backbone state dict for this architecture."""
  shapes = _flax_shapes(config)
  out = {}
  for collection, tree in shapes.items():
    for path, leaf in _leaves(tree):
      out[_torch_key(collection, path, len(leaf.shape))] = tuple(
          layout.to_torch_by_rank(np.empty(leaf.shape, np.uint8)).shape)
  for module in _bn_modules(shapes):
    out[f"{module}.num_batches_tracked"] = ()
  return out


def state_dict_to_variables(sd: dict[str, np.ndarray], config: iresnet.IResNetConfig) -> dict:
  """Backbone state dict (official key names) → {"params", "batch_stats"}; strict."""
  _strict_check(expected_torch_shapes(config), sd)
  shapes = _flax_shapes(config)
  variables: dict = {}
  for collection, tree in shapes.items():
    for path, leaf in _leaves(tree):
      value = layout.to_flax_by_rank(np.asarray(sd[_torch_key(collection, path, len(leaf.shape))],
                                        dtype=np.float32))
      node = variables.setdefault(collection, {})
      for name in path[:-1]:
        node = node.setdefault(name, {})
      node[path[-1]] = np.ascontiguousarray(value)
  return variables


def variables_to_state_dict(variables: dict) -> dict[str, np.ndarray]:
  """{"params", "batch_stats"} → backbone state dict with the official key names."""
  sd = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in _leaves(variables.get(collection, {})):
      arr = np.asarray(leaf, dtype=np.float32)
      sd[_torch_key(collection, path, arr.ndim)] = np.ascontiguousarray(layout.to_torch_by_rank(arr))
  for module in _bn_modules(variables):
    sd[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
  return sd


# ---------------------------------------------------------------- architecture from shapes

def _infer_iresnet(sd: dict[str, np.ndarray]) -> dict[str, Any]:
  layers, widths = [], []
  for stage in range(1, 5):
    units = {int(m.group(1)) for k in sd
             if (m := re.match(rf"layer{stage}\.(\d+)\.conv1\.weight$", k))}
    if not units:
      raise CheckpointError(f"no layer{stage}.*.conv1.weight in the checkpoint: not an iResNet "
                            f"backbone (pass the right {flag('family')}<name>)")
    layers.append(max(units) + 1)
    widths.append(int(np.shape(sd[f"layer{stage}.0.conv1.weight"])[0]))
  fc = np.shape(sd["fc.weight"])
  return dict(layout="iresnet", layers=layers, widths=widths, num_features=int(fc[0]),
              img_size=_img_size(fc[1], widths[-1]))


def _infer_ir(sd: dict[str, np.ndarray]) -> dict[str, Any]:
  units = sorted({int(m.group(1)) for k in sd
                  if (m := re.match(r"body\.(\d+)\.res_layer\.1\.weight$", k))})
  if not units or units != list(range(len(units))):
    raise CheckpointError("body.N.res_layer.1.weight keys missing or not numbered 0..N-1: not "
                          f"an IR backbone (pass the right {flag('family')}<name>)")
  widths, layers = [], []
  for u in units:   # a stage starts at unit 0 and at every unit with a conv shortcut
    w = int(np.shape(sd[f"body.{u}.res_layer.1.weight"])[0])
    if u == 0 or f"body.{u}.shortcut_layer.0.weight" in sd:
      widths.append(w)
      layers.append(0)
    layers[-1] += 1
  if len(widths) != 4:
    raise ValueError(f"expected 4 stages of IR units, found widths {widths}")
  layout = "ir_tface" if any(k.startswith("body.0.res_layer.5.") for k in sd) else "ir"
  fc = np.shape(sd["output_layer.3.weight"])
  return dict(layout=layout, layers=layers, widths=widths, num_features=int(fc[0]),
              img_size=_img_size(fc[1], widths[-1]))


def _img_size(fc_in: int, channels: int) -> int:
  side = int(round((fc_in / channels) ** 0.5))
  if side * side * channels != fc_in:
    raise ValueError(f"fc input {fc_in} is not {channels}·side²: unexpected head shape")
  return side * 16


# ---------------------------------------------------------------- the families

@dataclasses.dataclass(frozen=True)
class IResNetFamily:
  """One released FR checkpoint family (registry object, see exfiqa_jax/convert/families.py)."""
  name: str
  layout: str                    # "iresnet" | "ir"  (ir_tface is inferred from the keys)
  bn_eps: float = 1e-5
  input_scale: str = "minus1_1"
  wrapper_prefixes: tuple[str, ...] = ()   # where the backbone sits inside the checkpoint
  auto_detect: bool = True       # False: keys identical to another family; name it explicitly
  description: str = ""

  kind = "iresnet"

  # -- detection and canonical keys
  def wrapper_prefix(self, sd: dict[str, np.ndarray]) -> str:
    """The first of `wrapper_prefixes` that the keys carry ("" if none): where the backbone sits."""
    return next((p for p in self.wrapper_prefixes if any(k.startswith(p) for k in sd)), "")

  def backbone_state_dict(self, sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys relative to the backbone: unwraps `wrapper_prefixes`, drops training heads."""
    prefix = self.wrapper_prefix(sd)
    if not prefix:
      return dict(sd)
    dropped = sorted(k for k in sd if not k.startswith(prefix))
    if dropped:
      logging.info("%s: ignoring %d non-backbone keys (training head): %s", self.name,
                   len(dropped), dropped[:5])
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

  def matches(self, sd: dict[str, np.ndarray]) -> bool:
    if not self.auto_detect:
      return False
    if self.wrapper_prefixes and not any(k.startswith(p) for k in sd
                                         for p in self.wrapper_prefixes):
      return False
    inner = self.backbone_state_dict(sd)
    if self.layout == "iresnet":
      return "conv1.weight" in inner and "layer1.0.bn1.weight" in inner and "fc.weight" in inner
    return "input_layer.0.weight" in inner and "body.0.res_layer.1.weight" in inner

  # -- config
  def infer_config(self, sd: dict[str, np.ndarray], normalisation: str | None = None,
                   bn_eps: float | None = None, **unused) -> dict[str, Any]:
    """model_config.json content: architecture from the shapes + family, input scale, eps."""
    inner = self.backbone_state_dict(sd)
    arch = _infer_iresnet(inner) if self.layout == "iresnet" else _infer_ir(inner)
    scale = normalisation or self.input_scale
    if scale not in INPUT_SCALES:
      raise ValueError(f"normalisation must be one of {INPUT_SCALES}, got {scale!r}")
    cfg = iresnet.IResNetConfig(bn_eps=float(bn_eps or self.bn_eps), **{
        k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})
    # the prefix read is the prefix written back (MagFace files use "features.module." or, from
    # its distributed trainer, "module.features.", which torch_io leaves as "features.")
    wrapper = {"key_prefix": self.wrapper_prefix(sd)} if self.wrapper_prefixes else {}
    return {"family": self.name, "kind": self.kind, "input_scale": scale, **cfg.to_dict(),
            **wrapper}

  def model_config(self, config: dict[str, Any]) -> iresnet.IResNetConfig:
    return iresnet.IResNetConfig.from_dict(config)

  def expected_shapes(self, config: dict[str, Any]) -> dict[str, tuple]:
    return {self._wrap(k, config): v
            for k, v in expected_torch_shapes(self.model_config(config)).items()}

  # -- conversion
  def to_flax(self, sd: dict[str, np.ndarray], config: dict[str, Any]) -> dict:
    return state_dict_to_variables(self.backbone_state_dict(sd), self.model_config(config))

  def to_torch(self, variables: dict, config: dict[str, Any]) -> dict[str, np.ndarray]:
    return {self._wrap(k, config): v for k, v in variables_to_state_dict(variables).items()}

  def _wrap(self, key: str, config: dict[str, Any]) -> str:
    default = self.wrapper_prefixes[0] if self.wrapper_prefixes else ""
    return config.get("key_prefix", default) + key


ARCFACE_IRESNET = IResNetFamily(
    "arcface_iresnet", "iresnet", description="insightface arcface_torch iResNet-18..200")
ELASTICFACE = IResNetFamily(
    "elasticface", "iresnet", auto_detect=False,
    description="ElasticFace iResNet (same keys as arcface_iresnet; name it with --family)")
MAGFACE = IResNetFamily(
    "magface", "iresnet", bn_eps=2e-5, input_scale="0_1", wrapper_prefixes=MAGFACE_PREFIXES,
    description="MagFace iResNet (features.module.* keys, eps 2e-5, input x/255)")
CURRICULARFACE = IResNetFamily(
    "curricularface", "ir", description="CurricularFace IR-101 (face.evoLVe IR layout)")
TFACE_IR = IResNetFamily(
    "tface_ir", "ir", auto_detect=False,
    description="TFace torchkit IR (BN after the first conv; auto-detected as curricularface "
                "with layout ir_tface)")

# MagFace first: its wrapped keys would otherwise fail the bare-key families' checks loudly.
FAMILIES = (MAGFACE, ARCFACE_IRESNET, CURRICULARFACE, ELASTICFACE, TFACE_IR)
