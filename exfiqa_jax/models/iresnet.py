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
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

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


def _conv(features: int, kernel: int, stride: int, name: str, dtype) -> nn.Conv:
  # Explicit torch-style padding: "SAME" would pad (0, 1) for stride 2 and shift the grid.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, name=name)


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
