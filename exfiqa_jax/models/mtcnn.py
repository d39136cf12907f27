"""MTCNN's three networks (P-Net, R-Net, O-Net) as Flax modules, NHWC, release layer shapes.

The layers of the facenet-pytorch 2.6.0 release (Zhang et al. 2016, the MATLAB/Caffe weights),
which exfiqa_jax/convert/mtcnn_keys.py converts strictly; exfiqa_jax/detection/program.py runs them
(docs/data.md, "Raw photos: detection and alignment"). Every activation is a PReLU with one
slope per channel; max pools round their output size up (torch `ceil_mode=True`).

R-Net and O-Net flatten their last feature map in the release's order: torch permutes NCHW to
(N, W, H, C) before `view`, so a feature map [N, H, W, C] here is transposed to [N, W, H, C]
before the reshape — the dense kernels are then plain transposes of the torch weights.
Inputs are already normalised, (x − 127.5) / 128, float32.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

PRECISIONS = {"highest": lax.Precision.HIGHEST, "default": lax.Precision.DEFAULT}


def _precision(name: str) -> Any:
  if name not in PRECISIONS:
    raise ValueError(f"MTCNN precision must be one of {sorted(PRECISIONS)}, got {name!r}")
  return PRECISIONS[name]


class PReLU(nn.Module):
  """max(0, x) + a · min(0, x) with one learned slope `a` per channel (torch nn.PReLU(C))."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param("alpha", nn.initializers.constant(0.25), (self.features,))
    return jnp.where(x > 0, x, alpha * x)


def max_pool_ceil(x: jax.Array, window: int, stride: int) -> jax.Array:
  """torch MaxPool2d(window, stride, ceil_mode=True) on NHWC: the last window may hang over
  the edge (padded with −inf), but never starts outside the input."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - window) // stride) + 1
    if (out - 1) * stride >= size:
      out -= 1
    pads.append((0, max(0, (out - 1) * stride + window - size)))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                           ((0, 0), pads[0], pads[1], (0, 0)))


def _conv(features: int, kernel: int, name: str, precision: str) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), padding="VALID", name=name,
                 precision=_precision(precision))


def _dense(features: int, name: str, precision: str) -> nn.Dense:
  return nn.Dense(features, name=name, precision=_precision(precision))


def _flatten_release_order(x: jax.Array) -> jax.Array:
  """[N, H, W, C] → [N, W·H·C] in torch's permute(0, 3, 2, 1) order (see the module doc)."""
  return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
  """Proposal network, fully convolutional: [N, H, W, 3] → box offsets [N, h, w, 4] and
  class probabilities [N, h, w, 2] (index 1: face), h = ⌈(H − 2) / 2⌉ − 4 (12×12 cells,
  stride 2)."""
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    p = self.precision
    x = PReLU(10, name="prelu1")(_conv(10, 3, "conv1", p)(x))
    x = max_pool_ceil(x, 2, 2)
    x = PReLU(16, name="prelu2")(_conv(16, 3, "conv2", p)(x))
    x = PReLU(32, name="prelu3")(_conv(32, 3, "conv3", p)(x))
    probs = jax.nn.softmax(_conv(2, 1, "conv4_1", p)(x), axis=-1)
    return _conv(4, 1, "conv4_2", p)(x), probs


class RNet(nn.Module):
  """Refinement network: [N, 24, 24, 3] → box offsets [N, 4], probabilities [N, 2]."""
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    p = self.precision
    x = max_pool_ceil(PReLU(28, name="prelu1")(_conv(28, 3, "conv1", p)(x)), 3, 2)
    x = max_pool_ceil(PReLU(48, name="prelu2")(_conv(48, 3, "conv2", p)(x)), 3, 2)
    x = PReLU(64, name="prelu3")(_conv(64, 2, "conv3", p)(x))
    x = PReLU(128, name="prelu4")(_dense(128, "dense4", p)(_flatten_release_order(x)))
    probs = jax.nn.softmax(_dense(2, "dense5_1", p)(x), axis=-1)
    return _dense(4, "dense5_2", p)(x), probs


class ONet(nn.Module):
  """Output network: [N, 48, 48, 3] → box offsets [N, 4], landmarks [N, 10] (five x, then
  five y, as fractions of the box), probabilities [N, 2]."""
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    p = self.precision
    x = max_pool_ceil(PReLU(32, name="prelu1")(_conv(32, 3, "conv1", p)(x)), 3, 2)
    x = max_pool_ceil(PReLU(64, name="prelu2")(_conv(64, 3, "conv2", p)(x)), 3, 2)
    x = max_pool_ceil(PReLU(64, name="prelu3")(_conv(64, 3, "conv3", p)(x)), 2, 2)
    x = PReLU(128, name="prelu4")(_conv(128, 2, "conv4", p)(x))
    x = PReLU(256, name="prelu5")(_dense(256, "dense5", p)(_flatten_release_order(x)))
    probs = jax.nn.softmax(_dense(2, "dense6_1", p)(x), axis=-1)
    return _dense(4, "dense6_2", p)(x), _dense(10, "dense6_3", p)(x), probs


NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}
INPUT_SIZES = {"pnet": 12, "rnet": 24, "onet": 48}
