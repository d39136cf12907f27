"""Face-recognition CNNs for the EDC: insightface iResNet and the CurricularFace/TFace IR nets.

Module names mirror the PyTorch trees, so conversion is rename + transpose (converters/
iresnet_keys.py):
  layout "iresnet" (insightface arcface_torch, ElasticFace, MagFace):
    conv1, bn1, prelu, layer{1..4}/{i}/{bn1, conv1, bn2, prelu, conv2, bn3, downsample/{0,1}},
    bn2, dropout, fc, features (BatchNorm1d with scale and bias)
  layout "ir" (CurricularFace IR-101, face.evoLVe): input_layer/{0,1,2},
    body/{i}/{shortcut_layer/{0,1}, res_layer/{0: BN, 1: conv, 2: PReLU, 3: conv, 4: BN}},
    output_layer/{0: BN2d, 3: Dense, 4: BatchNorm1d without scale/bias}
  layout "ir_tface" (TFace torchkit IR): as "ir" with res_layer/{0 BN, 1 conv, 2 BN, 3 PReLU,
    4 conv, 5 BN}.
Input: float32 [B, 112, 112, 3] NHWC, already normalised the family's way (embed.py does that).
Output: `(embedding, {"embedding": embedding})`, embedding [B, num_features], not L2-normalised —
the same `(output, out)` shape as the ViT in mode "fr".
Inference: `fold_batchnorm(config, variables)` → (`FoldedIResNet`, params) with every eval BN
folded into a conv or the head (what `embed.load_fr_model` returns); `IResNet` stays the training
and conversion model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("iresnet", "ir", "ir_tface")
DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3),
          200: (6, 26, 60, 6)}
WIDTHS = (64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class IResNetConfig:
  """Architecture of one FR CNN; JSON-able (goes into model_config.json)."""
  layout: str = "iresnet"
  layers: tuple[int, ...] = DEPTHS[100]
  widths: tuple[int, ...] = WIDTHS
  num_features: int = 512
  bn_eps: float = 1e-5          # 1e-5 insightface/ElasticFace/IR, 2e-5 MagFace
  img_size: int = 112
  dropout: float = 0.0          # only active with train=True

  def __post_init__(self):
    if self.layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
    if len(self.layers) != 4 or len(self.widths) != 4:
      raise ValueError(f"need 4 stages, got layers={self.layers} widths={self.widths}")
    if self.img_size % 16:
      raise ValueError(f"img_size {self.img_size} must be a multiple of 16 (four stride-2 stages)")

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["layers"], d["widths"] = list(self.layers), list(self.widths)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "IResNetConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    for k in ("layers", "widths"):
      if k in kw:
        kw[k] = tuple(int(v) for v in kw[k])
    return cls(**kw)


def iresnet_config(depth: int = 100, layout: str = "iresnet", **overrides) -> IResNetConfig:
  """iResNet-{18,34,50,100,200} (layout "iresnet") or IR-{50,101,...} (layouts "ir*")."""
  depth = 100 if depth == 101 else depth
  if depth not in DEPTHS:
    raise ValueError(f"unknown depth {depth}; known: {sorted(DEPTHS)} (IR-101 = 100)")
  return IResNetConfig(layout=layout, layers=DEPTHS[depth], **overrides)


def tiny_config(layout: str = "iresnet", layers: Sequence[int] = (2, 2, 2, 2)) -> IResNetConfig:
  """Narrow test model (widths 8..32, 64-d embedding) with the real topology and 112² input."""
  return IResNetConfig(layout=layout, layers=tuple(layers), widths=(8, 16, 24, 32),
                       num_features=64)


class PReLU(nn.Module):
  """Per-channel PReLU (torch nn.PReLU(C)); parameter `negative_slope` [C]."""

  @nn.compact
  def __call__(self, x):
    slope = self.param("negative_slope", nn.initializers.constant(0.25), (x.shape[-1],),
                       jnp.float32)
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def _conv(features: int, kernel: int, stride: int, name: str, dtype,
          use_bias: bool = False) -> nn.Conv:
  # Explicit torch-style padding: "SAME" would pad (0, 1) for stride 2 and shift the grid.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=use_bias, dtype=dtype, name=name)


class IBasicBlock(nn.Module):
  """insightface unit: BN → conv3x3 → BN → PReLU → conv3x3 (stride) → BN, plus the shortcut."""
  features: int
  stride: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: nn.BatchNorm(not train, momentum=0.9, epsilon=self.eps, dtype=self.dtype,
                                   name=name)
    y = bn("bn1")(x)
    y = _conv(self.features, 3, 1, "conv1", self.dtype)(y)
    y = PReLU(name="prelu")(bn("bn2")(y))
    y = bn("bn3")(_conv(self.features, 3, self.stride, "conv2", self.dtype)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _Downsample(self.features, self.stride, self.eps, self.dtype, name="downsample")(x, train)
    return y + x


class _Downsample(nn.Module):
  """torch `downsample = Sequential(conv1x1(stride), BN)` — also the IR `shortcut_layer`."""
  features: int
  stride: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(self.features, 1, self.stride, "0", self.dtype)(x)
    return nn.BatchNorm(not train, momentum=0.9, epsilon=self.eps, dtype=self.dtype, name="1")(x)


class _ResLayer(nn.Module):
  """IR residual branch; `mid_bn` (TFace) adds the BN between the first conv and the PReLU."""
  features: int
  stride: int
  eps: float
  mid_bn: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda name: nn.BatchNorm(not train, momentum=0.9, epsilon=self.eps, dtype=self.dtype,
                                   name=name)
    names = iter(str(i) for i in range(6))
    y = bn(next(names))(x)
    y = _conv(self.features, 3, 1, next(names), self.dtype)(y)
    if self.mid_bn:
      y = bn(next(names))(y)
    y = PReLU(name=next(names))(y)
    y = _conv(self.features, 3, self.stride, next(names), self.dtype)(y)
    return bn(next(names))(y)


class IRUnit(nn.Module):
  """IR unit: res_layer(x) + shortcut, shortcut = subsampling (MaxPool2d(1, s)) or conv1x1+BN."""
  features: int
  stride: int
  eps: float
  mid_bn: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[-1] == self.features:
      shortcut = x[:, ::self.stride, ::self.stride]
    else:
      shortcut = _Downsample(self.features, self.stride, self.eps, self.dtype,
                             name="shortcut_layer")(x, train)
    y = _ResLayer(self.features, self.stride, self.eps, self.mid_bn, self.dtype,
                  name="res_layer")(x, train)
    return y + shortcut


class _Stage(nn.Module):
  """torch `layerK = Sequential(IBasicBlock × units)`; the first unit has stride 2."""
  units: int
  features: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(self.units):
      x = IBasicBlock(self.features, 2 if i == 0 else 1, self.eps, self.dtype, name=str(i))(x, train)
    return x


class _IRBody(nn.Module):
  """torch `body = Sequential(IR units of all four stages)`, numbered 0..N-1 across stages."""
  layers: tuple[int, ...]
  widths: tuple[int, ...]
  eps: float
  mid_bn: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = 0
    for units, width in zip(self.layers, self.widths):
      for i in range(units):
        x = IRUnit(width, 2 if i == 0 else 1, self.eps, self.mid_bn, self.dtype,
                   name=str(unit))(x, train)
        unit += 1
    return x


def _flatten_chw(x):
  """[B, H, W, C] → [B, C·H·W] in torch's NCHW flatten order (the fc weights expect it)."""
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class _IRInput(nn.Module):
  width: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(self.width, 3, 1, "0", self.dtype)(x)
    x = nn.BatchNorm(not train, momentum=0.9, epsilon=self.eps, dtype=self.dtype, name="1")(x)
    return PReLU(name="2")(x)


class _IROutput(nn.Module):
  num_features: int
  eps: float
  dropout: float

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.BatchNorm(not train, momentum=0.9, epsilon=self.eps, name="0")(x.astype(jnp.float32))
    x = nn.Dropout(self.dropout, deterministic=not train)(_flatten_chw(x))
    x = nn.Dense(self.num_features, name="3")(x)
    return nn.BatchNorm(not train, momentum=0.9, epsilon=self.eps, use_scale=False,
                        use_bias=False, name="4")(x)


class IResNet(nn.Module):
  """The whole FR network; see the module docstring for layouts, input and output."""
  config: IResNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    cfg = self.config
    if images.shape[1:] != (cfg.img_size, cfg.img_size, 3):
      raise ValueError(f"expected images [B, {cfg.img_size}, {cfg.img_size}, 3] NHWC, "
                       f"got {images.shape}")
    x = images.astype(self.dtype)
    if cfg.layout == "iresnet":
      embedding = self._iresnet(x, train)
    else:
      embedding = self._ir(x, train)
    return embedding, {"embedding": embedding}

  def _iresnet(self, x, train):
    cfg = self.config
    bn = lambda name, **kw: nn.BatchNorm(not train, momentum=0.9, epsilon=cfg.bn_eps, name=name,
                                         **kw)
    x = _conv(cfg.widths[0], 3, 1, "conv1", self.dtype)(x)
    x = PReLU(name="prelu")(bn("bn1", dtype=self.dtype)(x))
    for stage, (units, width) in enumerate(zip(cfg.layers, cfg.widths)):
      x = _Stage(units, width, cfg.bn_eps, self.dtype, name=f"layer{stage + 1}")(x, train)
    x = bn("bn2")(x.astype(jnp.float32))
    x = nn.Dropout(cfg.dropout, deterministic=not train)(_flatten_chw(x))
    x = nn.Dense(cfg.num_features, name="fc")(x)
    return bn("features")(x)

  def _ir(self, x, train):
    cfg = self.config
    x = _IRInput(cfg.widths[0], cfg.bn_eps, self.dtype, name="input_layer")(x, train)
    x = _IRBody(cfg.layers, cfg.widths, cfg.bn_eps, cfg.layout == "ir_tface", self.dtype,
                name="body")(x, train)
    return _IROutput(cfg.num_features, cfg.bn_eps, cfg.dropout, name="output_layer")(x, train)


# ---------------------------------------------------------------- named points of the tree

def stage_output_paths(config: IResNetConfig) -> tuple[tuple[str, ...], ...]:
  """Module paths whose outputs are the four stage outputs (torch `layer1..layer4`; for the IR
  layouts the last unit of each stage in `body`): GraFIQs' block1..block4 (methods/grafiqs.py)."""
  if config.layout == "iresnet":
    return tuple((f"layer{k + 1}",) for k in range(4))
  ends = np.cumsum(config.layers) - 1
  return tuple(("body", str(int(i))) for i in ends)


def stage_output_shapes(config: IResNetConfig) -> tuple[tuple[int, int, int], ...]:
  """[H, W, C] of each stage output (every stage halves the side)."""
  return tuple((config.img_size >> (k + 1), config.img_size >> (k + 1), config.widths[k])
               for k in range(4))


def head_after_dropout(config: IResNetConfig, variables: Any, x: jax.Array) -> jax.Array:
  """The layers after the dropout on its input x [..., C·H·W] (the CHW flatten of the final BN's
  output): `fc` → `features` ("iresnet"), `output_layer` 3 → 4 (IR). Eval mode, the same Flax
  layers as `IResNet`, so x = that flatten gives the model's embedding. SER-FIQ runs its
  stochastic passes here (methods/serfiq.py)."""
  params, stats = variables["params"], variables["batch_stats"]
  if config.layout == "iresnet":
    dense, norm, affine = params["fc"], ("features",), True
  else:
    dense, norm, affine = params["output_layer"]["3"], ("output_layer", "4"), False
  x = nn.Dense(config.num_features, parent=None).apply({"params": dense}, x)
  bn_params, bn_stats = params, stats
  for name in norm:
    bn_params, bn_stats = bn_params.get(name, {}), bn_stats[name]
  bn = nn.BatchNorm(True, epsilon=config.bn_eps, use_scale=affine, use_bias=affine, parent=None)
  return bn.apply({"params": bn_params, "batch_stats": bn_stats}, x)


# ---------------------------------------------------------------- inference: BatchNorm folded

def _shortcut_kind(layout: str, cin: int, features: int, stride: int) -> str:
  """What the unit adds to its residual branch: "conv" (1x1+BN), "subsample" or "identity"."""
  if layout == "iresnet":
    return "conv" if stride != 1 or cin != features else "identity"
  if cin != features:
    return "conv"
  return "subsample" if stride != 1 else "identity"


def _units(cfg: IResNetConfig):
  """(index in the flat unit sequence, stage, index in stage, cin, features, stride, input size)."""
  i, cin, size = 0, cfg.widths[0], cfg.img_size
  for stage, (units, width) in enumerate(zip(cfg.layers, cfg.widths)):
    for j in range(units):
      stride = 2 if j == 0 else 1
      yield i, stage, j, cin, width, stride, size
      i, cin, size = i + 1, width, size // stride


class _FoldedUnit(nn.Module):
  """conv3x3 + position bias → PReLU → conv3x3 (stride) + bias, plus the shortcut.

  `bias1` is [H, W, C], not [C]: the unit's leading BN shifts its input by a constant before a
  zero-padded conv, so near the border fewer kernel taps see that shift. The map holds exactly
  what those taps contribute (constant inside, different on the one-pixel ring).
  """
  features: int
  stride: int
  shortcut: str
  size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    bias1 = self.param("bias1", nn.initializers.zeros, (self.size, self.size, self.features),
                       jnp.float32)
    y = _conv(self.features, 3, 1, "conv1", self.dtype)(x) + bias1.astype(self.dtype)
    y = PReLU(name="prelu")(y)
    y = _conv(self.features, 3, self.stride, "conv2", self.dtype, use_bias=True)(y)
    if self.shortcut == "conv":
      x = _conv(self.features, 1, self.stride, "shortcut", self.dtype, use_bias=True)(x)
    elif self.shortcut == "subsample":
      x = x[:, ::self.stride, ::self.stride]
    return y + x


class FoldedIResNet(nn.Module):
  """Inference-only twin of `IResNet` with every eval-mode BatchNorm folded (`fold_batchnorm`).

  Same input and output as `IResNet` in eval mode, up to float rounding; one tree for all
  layouts: stem (conv + bias), stem_prelu, unit{0..N-1} (numbered across stages), head (Dense on
  the NHWC flatten: bn2/output BN, the CHW flatten order and the feature BN live in it).
  """
  config: IResNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    cfg = self.config
    if train:
      raise ValueError("FoldedIResNet has no BatchNorm to train; train IResNet and fold after")
    if images.shape[1:] != (cfg.img_size, cfg.img_size, 3):
      raise ValueError(f"expected images [B, {cfg.img_size}, {cfg.img_size}, 3] NHWC, "
                       f"got {images.shape}")
    x = _conv(cfg.widths[0], 3, 1, "stem", self.dtype, use_bias=True)(images.astype(self.dtype))
    x = PReLU(name="stem_prelu")(x)
    for i, _, _, cin, width, stride, size in _units(cfg):
      x = _FoldedUnit(width, stride, _shortcut_kind(cfg.layout, cin, width, stride), size,
                      self.dtype, name=f"unit{i}")(x)
    x = x.astype(jnp.float32).reshape(x.shape[0], -1)
    embedding = nn.Dense(cfg.num_features, name="head")(x)
    return embedding, {"embedding": embedding}


def _np(tree, *path):
  for name in path:
    tree = tree[name]
  return np.asarray(tree, np.float64)


def _bn_affine(params, stats, path: tuple[str, ...], eps: float):
  """Eval BN as y = s·x + t (float64); a BN without scale/bias (IR output) has s from var only."""
  node = params
  for name in path:
    node = node.get(name, {}) if hasattr(node, "get") else {}
  var, mean = _np(stats, *path, "var"), _np(stats, *path, "mean")
  scale = np.asarray(node["scale"], np.float64) if "scale" in node else 1.0
  bias = np.asarray(node["bias"], np.float64) if "bias" in node else 0.0
  s = scale / np.sqrt(var + eps)
  return s, bias - mean * s


def _border_bias(kernel: np.ndarray, shift: np.ndarray, size: int) -> np.ndarray:
  """conv(zero-pad(constant image `shift`)) for a stride-1 'same' conv → [size, size, O]."""
  k = kernel.shape[0]
  taps = np.einsum("hwio,i->hwo", kernel, shift)
  pos = np.arange(size)[:, None] + np.arange(k)[None, :] - k // 2
  valid = ((pos >= 0) & (pos < size)).astype(np.float64)
  return np.einsum("pk,ql,klo->pqo", valid, valid, taps)


def _unit_paths(cfg: IResNetConfig, stage: int, j: int, i: int) -> dict[str, Any]:
  """Where a unit's pieces live in the IResNet tree (None: that layout has no such piece)."""
  if cfg.layout == "iresnet":
    p = (f"layer{stage + 1}", str(j))
    return dict(pre=p + ("bn1",), conv1=p + ("conv1",), mid=p + ("bn2",), prelu=p + ("prelu",),
                conv2=p + ("conv2",), post=p + ("bn3",), sc=p + ("downsample",))
  r = ("body", str(i), "res_layer")
  tface = cfg.layout == "ir_tface"
  return dict(pre=r + ("0",), conv1=r + ("1",), mid=r + ("2",) if tface else None,
              prelu=r + ("3" if tface else "2",), conv2=r + ("4" if tface else "3",),
              post=r + ("5" if tface else "4",), sc=("body", str(i), "shortcut_layer"))


def fold_batchnorm(config: IResNetConfig, variables: Any,
                   dtype: Any = jnp.float32) -> tuple[FoldedIResNet, dict[str, Any]]:
  """`IResNet` eval variables → (`FoldedIResNet`, {"params"}) computing the same embedding.

  Exact algebra in float64, rounded once to float32: a BN after a conv scales the kernel's output
  channels and becomes a bias; a BN before a conv scales its input channels and its shift
  becomes the border-aware bias map of `_FoldedUnit`; the head's BN2d → CHW flatten → Dense → BN1d
  becomes one Dense on the NHWC flatten. For inference only (nothing left to train).
  """
  cfg = config
  params, stats, eps = variables["params"], variables["batch_stats"], cfg.bn_eps
  out: dict[str, Any] = {}

  def post_fold(kernel, s, t, bias=0.0):
    return {"kernel": kernel * s, "bias": bias * s + t}

  if cfg.layout == "iresnet":
    stem = ("conv1",), ("bn1",), ("prelu",)
    head_bn, fc, feat_bn = ("bn2",), ("fc",), ("features",)
  else:
    stem = ("input_layer", "0"), ("input_layer", "1"), ("input_layer", "2")
    head_bn, fc, feat_bn = ("output_layer", "0"), ("output_layer", "3"), ("output_layer", "4")
  out["stem"] = post_fold(_np(params, *stem[0], "kernel"), *_bn_affine(params, stats, stem[1], eps))
  out["stem_prelu"] = {"negative_slope": _np(params, *stem[2], "negative_slope")}

  for i, stage, j, cin, width, stride, size in _units(cfg):
    paths = _unit_paths(cfg, stage, j, i)
    s_pre, t_pre = _bn_affine(params, stats, paths["pre"], eps)
    k1 = _np(params, *paths["conv1"], "kernel")
    s_mid, t_mid = (_bn_affine(params, stats, paths["mid"], eps) if paths["mid"]
                    else (np.ones(width), np.zeros(width)))
    unit = {
        "conv1": {"kernel": k1 * s_pre[:, None] * s_mid},
        "bias1": _border_bias(k1, t_pre, size) * s_mid + t_mid,
        "prelu": {"negative_slope": _np(params, *paths["prelu"], "negative_slope")},
        "conv2": post_fold(_np(params, *paths["conv2"], "kernel"),
                           *_bn_affine(params, stats, paths["post"], eps)),
    }
    if _shortcut_kind(cfg.layout, cin, width, stride) == "conv":
      unit["shortcut"] = post_fold(_np(params, *paths["sc"], "0", "kernel"),
                                   *_bn_affine(params, stats, paths["sc"] + ("1",), eps))
    out[f"unit{i}"] = unit

  s2, t2 = _bn_affine(params, stats, head_bn, eps)
  c, side = cfg.widths[-1], cfg.img_size // 16
  w = _np(params, *fc, "kernel").reshape(c, side, side, -1).transpose(1, 2, 0, 3)  # CHW → HWC
  bias = _np(params, *fc, "bias") + np.einsum("hwcf,c->f", w, t2)
  w = (w * s2[:, None]).reshape(side * side * c, -1)
  out["head"] = post_fold(w, *_bn_affine(params, stats, feat_bn, eps), bias=bias)

  params_f32 = jax.tree.map(lambda v: np.ascontiguousarray(v, dtype=np.float32), out)
  return FoldedIResNet(cfg, dtype=dtype), {"params": params_f32}
