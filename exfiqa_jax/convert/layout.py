"""Weight layouts: PyTorch stores a conv kernel as [O, I, H, W] and a linear weight as [out, in];
Flax as [H, W, I, O] and [in, out]. One table, both directions (docs/checkpoints.md)."""
from __future__ import annotations

import numpy as np

# kind -> (torch -> flax axes, flax -> torch axes); every other kind is stored as is
_AXES = {"conv": ((2, 3, 1, 0), (3, 2, 0, 1)), "linear": ((1, 0), (1, 0))}


def kind_of(ndim: int) -> str:
  """The layout kind of a leaf by its rank: 4 = conv kernel, 2 = linear weight, else as is."""
  return {4: "conv", 2: "linear"}.get(ndim, "same")


def to_flax(x: np.ndarray, kind: str) -> np.ndarray:
  return np.transpose(x, _AXES[kind][0]) if kind in _AXES else x


def to_torch(x: np.ndarray, kind: str) -> np.ndarray:
  return np.transpose(x, _AXES[kind][1]) if kind in _AXES else x


def to_flax_by_rank(x: np.ndarray) -> np.ndarray:
  """`to_flax` with the kind read from the rank (iResNet leaves: every 4-D leaf is a conv)."""
  return to_flax(x, kind_of(np.ndim(x)))


def to_torch_by_rank(x: np.ndarray) -> np.ndarray:
  return to_torch(x, kind_of(np.ndim(x)))
