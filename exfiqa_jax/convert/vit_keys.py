"""The ViT family ⇄ PyTorch state dicts: ViT-FIQA (token / crfiqa / full) and the FR ViTs.

Covers the official ViT-FIQA / EX-FIQA checkpoints (docs/methods.md) and, as mode
"fr", the insightface arcface_torch ViTs and the CVLFace ViTs ATTN-FIQA uses (§4.1: no quality
token, no `head_qs`, `mask_token` only when trained with masking). Wrappers and `module.`/`net.`
prefixes are undone by exfiqa_jax/convert/torch_io.py before a state dict gets here.

Architecture from the shapes (heads cannot be seen in any shape: a published architecture's
count from RELEASES, else a flag, default 8):
  width D, patch p     patch_embed.proj.weight [D, 3, p, p]
  tokens T             pos_embed [1, T, D]; a qs_token adds one token in front
  depth L              number of blocks.{i}.norm1.weight
  MLP width M          blocks.0.mlp.fc1.weight [M, D]
  feature head         feature.0.weight [E, F]
  mode                 qs_token and F = (T−1)·D → token; qs_token and F = T·D → full;
                       no qs_token: head_qs.* present → crfiqa, absent → fr
Leaf rules: Conv (O,I,kh,kw) → (kh,kw,I,O); Linear (out,in) → (in,out); LN weight → scale;
BN weight → scale, running_mean/var → batch_stats mean/var; num_batches_tracked is checked
(integer scalar) and dropped, written back as int64 0; per-block keys stacked on a leading axis.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, NamedTuple

import numpy as np
from absl import logging

from exfiqa_jax.convert import layout
from exfiqa_jax.convert.strict import CheckpointError, check_state_dict, flag
from exfiqa_jax import models
from exfiqa_jax.models import vit
from exfiqa_jax.models.vit import QUALITY_MODES

DEFAULT_HEADS = 8
DEFAULT_IMG_SIZE = 112


class Leaf(NamedTuple):
  torch_key: str            # "blocks.{i}.attn.qkv.weight" for stacked leaves
  collection: str           # "params" | "batch_stats"
  path: tuple[str, ...]     # Flax path inside the collection
  kind: str                 # "same" | "linear" | "conv"
  stacked: bool = False


def _linear(module: str, path: tuple[str, ...], bias: bool, stacked: bool = False) -> list[Leaf]:
  prefix = "blocks.{i}." if stacked else ""
  leaves = [Leaf(f"{prefix}{module}.weight", "params", path + ("kernel",), "linear", stacked)]
  if bias:
    leaves.append(Leaf(f"{prefix}{module}.bias", "params", path + ("bias",), "same", stacked))
  return leaves


def _layer_norm(module: str, path: tuple[str, ...], stacked: bool = False) -> list[Leaf]:
  prefix = "blocks.{i}." if stacked else ""
  return [Leaf(f"{prefix}{module}.weight", "params", path + ("scale",), "same", stacked),
          Leaf(f"{prefix}{module}.bias", "params", path + ("bias",), "same", stacked)]


def _batch_norm(module: str, path: tuple[str, ...]) -> list[Leaf]:
  return [Leaf(f"{module}.weight", "params", path + ("scale",), "same"),
          Leaf(f"{module}.bias", "params", path + ("bias",), "same"),
          Leaf(f"{module}.running_mean", "batch_stats", path + ("mean",), "same"),
          Leaf(f"{module}.running_var", "batch_stats", path + ("var",), "same")]


def key_map(config: Mapping[str, Any]) -> list[Leaf]:
  """Every converted leaf in the official registration order (Appendix A)."""
  mode = config["mode"]
  leaves = []
  if mode in ("token", "full"):
    leaves.append(Leaf("qs_token", "params", ("qs_token",), "same"))
  leaves.append(Leaf("pos_embed", "params", ("pos_embed",), "same"))
  if config["has_mask_token"]:
    leaves.append(Leaf("mask_token", "params", ("mask_token",), "same"))
  leaves += [Leaf("patch_embed.proj.weight", "params", ("patch_embed", "proj", "kernel"), "conv"),
             Leaf("patch_embed.proj.bias", "params", ("patch_embed", "proj", "bias"), "same")]
  leaves += _layer_norm("norm1", ("blocks", "norm1"), stacked=True)
  leaves += _layer_norm("norm2", ("blocks", "norm2"), stacked=True)
  leaves += _linear("attn.qkv", ("blocks", "attn", "qkv"), bias=False, stacked=True)
  leaves += _linear("attn.proj", ("blocks", "attn", "proj"), bias=True, stacked=True)
  leaves += _linear("mlp.fc1", ("blocks", "mlp", "fc1"), bias=True, stacked=True)
  leaves += _linear("mlp.fc2", ("blocks", "mlp", "fc2"), bias=True, stacked=True)
  leaves += _layer_norm("norm", ("norm",))
  leaves += _linear("feature.0", ("feature", "0"), bias=False)
  leaves += _batch_norm("feature.1", ("feature", "1"))
  leaves += _linear("feature.2", ("feature", "2"), bias=False)
  leaves += _batch_norm("feature.3", ("feature", "3"))
  if mode in QUALITY_MODES:
    leaves += _batch_norm("head_qs.0", ("head_qs", "0"))
    leaves += _linear("head_qs.1", ("head_qs", "1"), bias=False)
  return leaves


def _bn_modules(config: Mapping[str, Any]) -> list[str]:
  return ["feature.1", "feature.3"] + (["head_qs.0"] if config["mode"] in QUALITY_MODES else [])


# ------------------------------------------------------------------------ shapes and config

def _tokens(config: Mapping[str, Any]) -> tuple[int, int]:
  """(number of patches, number of extra tokens in front), as ViTConfig counts them."""
  cfg = vit_config(config)
  return cfg.num_patches, cfg.num_tokens - cfg.num_patches


def feature_in(config: Mapping[str, Any]) -> int:
  """F, the input width of feature.0 (ViTConfig.feature_in: token mode leaves the qs token out)."""
  return vit_config(config).feature_in


def _torch_shape(leaf: Leaf, config: Mapping[str, Any]) -> tuple[int, ...]:
  d, m, e, p = config["width"], config["mlp_dim"], config["embed_dim"], config["patch_size"]
  q = d if config["mode"] == "token" else e   # head_qs reads the quality token or the embedding
  patches, extra = _tokens(config)
  shapes = {
      "qs_token": (1, 1, d), "pos_embed": (1, patches + extra, d), "mask_token": (1, 1, d),
      "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,),
      "attn.qkv.weight": (3 * d, d), "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
      "mlp.fc1.weight": (m, d), "mlp.fc1.bias": (m,), "mlp.fc2.weight": (d, m),
      "mlp.fc2.bias": (d,), "feature.0.weight": (e, feature_in(config)),
      "feature.2.weight": (e, e), "head_qs.1.weight": (1, q)}
  key = leaf.torch_key.replace("blocks.{i}.", "")
  if key in shapes:
    return shapes[key]
  if key.startswith("head_qs."):
    return (q,)                                     # BN of the head input
  return (d,) if key.startswith("norm") else (e,)   # LayerNorms [D]; feature BNs [E]


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple]:
  """Every torch key (with its shape) of this architecture, num_batches_tracked included."""
  out = {}
  leaves = key_map(config)
  for leaf in leaves:
    if not leaf.stacked:
      out[leaf.torch_key] = _torch_shape(leaf, config)
    elif leaf is next(l for l in leaves if l.stacked):   # block-major, as torch registers
      for i in range(config["depth"]):
        for block_leaf in (l for l in leaves if l.stacked):
          out[block_leaf.torch_key.format(i=i)] = _torch_shape(block_leaf, config)
  for module in _bn_modules(config):
    out[f"{module}.num_batches_tracked"] = ()
  return out


def _shape(sd: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
  if key not in sd:
    raise CheckpointError(f"not a ViT checkpoint: no {key!r} (first keys: {sorted(sd)[:6]}); "
                          f"pass {flag('family')}<name> if it is another model family")
  return tuple(np.shape(sd[key]))


def _img_size(grid: int, patch: int) -> int:
  """112 when the patch grid fits it (9·12 = 108 ≤ 112 < 117), else grid·patch."""
  return DEFAULT_IMG_SIZE if grid * patch <= DEFAULT_IMG_SIZE < (grid + 1) * patch \
      else grid * patch


def infer_architecture(sd: Mapping[str, np.ndarray], num_heads: int | None = None,
                       source: str = "the checkpoint") -> dict[str, Any]:
  """ViTConfig fields read from the shapes, and the heads `choose_heads` settles on."""
  width, in_ch, patch, patch_w = _shape(sd, "patch_embed.proj.weight")
  if in_ch != 3 or patch != patch_w:
    raise CheckpointError(f"patch_embed.proj.weight is {[width, in_ch, patch, patch_w]}: "
                          "expected [D, 3, p, p] (RGB input, square patches)")
  tokens = _shape(sd, "pos_embed")[1]
  has_qs = "qs_token" in sd
  patches = tokens - int(has_qs)
  grid = int(round(patches ** 0.5))
  if grid * grid != patches:
    raise CheckpointError(f"pos_embed has {tokens} tokens ({patches} patches): not a square "
                          "patch grid")
  blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.norm1\.weight$", k))}
  if not blocks:
    raise CheckpointError("no blocks.{i}.norm1.weight keys: not a ViT checkpoint")
  depth = max(blocks) + 1
  mlp_dim = _shape(sd, "blocks.0.mlp.fc1.weight")[0]
  embed_dim, f_in = _shape(sd, "feature.0.weight")
  if has_qs:
    by_f = {patches * width: "token", tokens * width: "full"}
    if f_in not in by_f:
      raise CheckpointError(
          f"feature.0.weight takes {f_in} inputs; with a qs_token and {tokens} tokens of width "
          f"{width} it must be {patches * width} (mode token) or {tokens * width} (mode full)")
    mode = by_f[f_in]
  else:
    mode = "crfiqa" if any(k.startswith("head_qs.") for k in sd) else "fr"
  arch = dict(mode=mode, width=int(width), depth=int(depth), patch_size=int(patch),
              img_size=_img_size(grid, patch), mlp_dim=int(mlp_dim), embed_dim=int(embed_dim),
              has_mask_token="mask_token" in sd,
              mask_ratio=0.1 if "mask_token" in sd else 0.0)   # training only
  heads, override = choose_heads(arch, num_heads, source)
  return {**arch, "num_heads": heads, **({HEADS_OVERRIDE: True} if override else {})}


def check_heads(width: int, num_heads: int) -> int:
  if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) \
      or num_heads < 1 or width % num_heads:
    raise CheckpointError(
        f"num_heads={num_heads!r} does not divide the width {width}. The number of heads is not "
        f"stored in any weight shape: pass it with {flag('num_heads')}<n>, or 0 for a published "
        f"architecture's own count ({_releases_text()}).")
  return int(num_heads)


# ------------------------------------------------------------------------ attention heads

class Release(NamedTuple):
  """A published ViT architecture. No weight shape records the head count, so it is known here
  by the shapes that do (docs/checkpoints.md, "Attention heads")."""
  name: str
  width: int
  depth: int
  patch_size: int
  mlp_dim: int
  num_heads: int


# From the official code: ViT-FIQA backbones/__init__.py and evaluation/QualityModel.py
# ("vit_FC": the released checkpoints), insightface recognition/arcface_torch/backbones,
# CVLFace models/vit/__init__.py ("small", "base") = ATTN-FIQA evaluation/QualityModel.py
# ("vits", "vitb").
RELEASES: tuple[Release, ...] = (
    Release("ViT-FIQA ViT-S (the released checkpoints) / arcface_torch vit_s", 512, 12, 9,
            2048, 8),
    Release("arcface_torch vit_t", 256, 12, 9, 1024, 8),
    Release("ViT-FIQA vit_b_qs / arcface_torch vit_b", 512, 24, 9, 2048, 8),
    Release("arcface_torch vit_l", 768, 24, 9, 3072, 8),
    Release("arcface_torch vit_h", 1024, 48, 9, 4096, 8),
    Release("ViT-FIQA vit_s_qs (width 384)", 384, 12, 9, 1536, 6),
    Release("CVLFace ViT-S (ATTN-FIQA vits)", 512, 12, 8, 2560, 8),
    Release("CVLFace ViT-B (ATTN-FIQA vitb)", 512, 24, 8, 1536, 16),
)
# model_config.json: true when a published architecture was converted with another head count
# on purpose (a model trained with it); without it such a count is an error at load.
HEADS_OVERRIDE = "num_heads_override"


def _releases_text() -> str:
  return "; ".join(f"{r.name}: {r.num_heads}" for r in RELEASES
                   if r.name.startswith(("ViT-FIQA ViT-S", "CVLFace")))


def _describe(arch: Mapping[str, Any]) -> str:
  return (f"width {arch['width']}, depth {arch['depth']}, patch {arch['patch_size']}, "
          f"MLP {arch['mlp_dim']}")


def release_of(arch: Mapping[str, Any]) -> Release | None:
  """The published architecture with these shapes (width, depth, patch, MLP width), or None."""
  key = tuple(arch.get(k) for k in ("width", "depth", "patch_size", "mlp_dim"))
  return next((r for r in RELEASES if (r.width, r.depth, r.patch_size, r.mlp_dim) == key), None)


def choose_heads(arch: Mapping[str, Any], num_heads: int | None, source: str
                 ) -> tuple[int, bool]:
  """(heads, override) for a `.pt`: `num_heads` None or 0 = what the architecture says (a
  release's count; 8, with a warning, for one no release has); a count that a release does not
  use is taken, loudly (override True, recorded in model_config.json)."""
  release = release_of(arch)
  if num_heads is None or (not isinstance(num_heads, bool) and num_heads == 0):
    if release is not None:
      return release.num_heads, False
    logging.warning(
        "%s: assuming %d attention heads. No weight records the head count and this "
        "architecture (%s) is no published one; if it was trained with another count, pass "
        "%s<n> (a wrong count gives wrong scores without an error).", source, DEFAULT_HEADS,
        _describe(arch), flag("num_heads"))
    return check_heads(arch["width"], DEFAULT_HEADS), False
  heads = check_heads(arch["width"], num_heads)
  if release is None or heads == release.num_heads:
    return heads, False
  logging.warning(
      "%s has the shapes of the %s (%s), which uses %d attention heads, but is loaded with "
      "%s%d. No weight records the head count: unless this model was trained with %d heads, "
      "its exit and ATTN scores are wrong. Pass %s0 (or %d) for the published count.",
      source, release.name, _describe(arch), release.num_heads, flag("num_heads"), heads, heads,
      flag("num_heads"), release.num_heads)
  return heads, True


_ARCH_INTS = ("width", "depth", "num_heads", "patch_size", "img_size", "mlp_dim", "embed_dim")


def check_recorded(config: Mapping[str, Any], where: str) -> None:
  """The fields of a ViT model_config.json that no variable shape checks (`where` names the
  file): whole-number sizes, a `num_heads` that divides the width and, for a converted
  published architecture, is its count unless the file records an override."""
  bad = [f"{k}={config[k]!r}" for k in _ARCH_INTS if k in config and (
      isinstance(config[k], bool) or not isinstance(config[k], int) or config[k] < 1)]
  if bad:
    raise CheckpointError(f"{where}: {', '.join(bad)} must be whole numbers >= 1; the file was "
                          "edited or damaged. Re-convert from the .pt.")
  heads, width = config.get("num_heads"), config.get("width")
  if heads is None or width is None:
    return                                    # the architecture's defaults (models/vit.py)
  if width % heads:
    raise CheckpointError(f"{where}: num_heads={heads} does not divide the width {width}; the "
                          "file was edited. Re-convert from the .pt (no weight records the head "
                          "count).")
  override = config.get(HEADS_OVERRIDE, False)
  if not isinstance(override, bool):
    raise CheckpointError(f"{where}: {HEADS_OVERRIDE}={override!r} must be true or false")
  release = release_of(config)
  if ("family" in config and release is not None and heads != release.num_heads
      and not override):
    raise CheckpointError(
        f"{where}: num_heads={heads}, but these shapes ({_describe(config)}) are the "
        f"{release.name}, which uses {release.num_heads} heads; with {heads} its scores are "
        f"wrong. Re-convert the .pt with --num_heads=0 (the published count), or, if this "
        f"model was trained with {heads} heads, add \"{HEADS_OVERRIDE}\": true to the file.")


# ------------------------------------------------------------------------ conversion

def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def _float(x: Any) -> np.ndarray:
  x = np.asarray(x)
  return x if x.dtype == np.float32 else x.astype(np.float32)


def state_dict_to_variables(sd: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict:
  """Official state dict → {"params", "batch_stats"} (blocks stacked on axis 0); strict."""
  check_state_dict(expected_shapes(config), sd, hint=(
      f"The model was inferred as mode={config['mode']!r}, depth={config['depth']}, "
      f"width={config['width']}; check that the file is a complete ViT checkpoint."))
  variables: dict = {"params": {}, "batch_stats": {}}
  for leaf in key_map(config):
    if leaf.stacked:
      value = np.stack([layout.to_flax(_float(sd[leaf.torch_key.format(i=i)]), leaf.kind)
                        for i in range(config["depth"])])
    else:
      value = layout.to_flax(_float(sd[leaf.torch_key]), leaf.kind)
    _set(variables[leaf.collection], leaf.path, np.ascontiguousarray(value))
  return variables


def variables_to_state_dict(variables: Mapping, config: Mapping[str, Any]
                            ) -> dict[str, np.ndarray]:
  """{"params", "batch_stats"} → state dict with the official keys (twin loads it strictly)."""
  sd = {}
  for leaf in key_map(config):
    try:
      value = np.asarray(_get(variables[leaf.collection], leaf.path))
    except KeyError:
      raise CheckpointError(f"variables have no {leaf.collection}/{'/'.join(leaf.path)}, "
                            f"which mode {config['mode']!r} needs") from None
    if leaf.stacked:
      for i in range(config["depth"]):
        sd[leaf.torch_key.format(i=i)] = np.ascontiguousarray(layout.to_torch(value[i], leaf.kind))
    else:
      sd[leaf.torch_key] = np.ascontiguousarray(layout.to_torch(value, leaf.kind))
  for module in _bn_modules(config):
    sd[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
  expected = expected_shapes(config)
  check_state_dict(expected, sd, hint="the Flax variables do not match model_config.json "
                   "(were they saved with another config?)")
  return {k: sd[k] for k in expected}   # official key order (Appendix A)


# ------------------------------------------------------------------------ the family object

def vit_config(config: Mapping[str, Any]) -> vit.ViTConfig:
  """model_config dict → vit.ViTConfig (ignores the converter's extra fields)."""
  return models.model_config_object(config)


@dataclasses.dataclass(frozen=True)
class ViTFamily:
  """ViT-FIQA token/crfiqa/full and FR ViTs (insightface arcface_torch, CVLFace) as mode "fr"."""
  name: str = "vit"
  kind = "vit"
  input_scale = "minus1_1"    # (x/255 − 0.5)/0.5, RGB (docs/methods.md)

  def matches(self, sd: Mapping[str, np.ndarray]) -> bool:
    return "patch_embed.proj.weight" in sd and "pos_embed" in sd

  def infer_config(self, sd: Mapping[str, np.ndarray], num_heads: int | None = None,
                   source: str = "the checkpoint", **unused: Any) -> dict[str, Any]:
    """model_config from the shapes; `num_heads` None or 0 = the architecture's (choose_heads)."""
    arch = infer_architecture(sd, num_heads, source)
    cfg = vit_config(arch).to_dict()
    override = {HEADS_OVERRIDE: True} if arch.get(HEADS_OVERRIDE) else {}
    return {"family": self.name, "kind": self.kind, "input_scale": self.input_scale, **cfg,
            **override}

  def expected_shapes(self, config: Mapping[str, Any]) -> dict[str, tuple]:
    return expected_shapes(config)

  def to_flax(self, sd: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> dict:
    return state_dict_to_variables(sd, config)

  def to_torch(self, variables: Mapping, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return variables_to_state_dict(variables, config)


VIT = ViTFamily()
