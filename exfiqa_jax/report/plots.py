"""Plot helpers every report shares: a figure on matplotlib's Agg canvas (no pyplot state), an
atomic PNG save, and the attention overlays (docs/methods.md, "ATTN-FIQA").
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from exfiqa_jax import files

OVERLAY_ALPHA = 0.4                       # as ATTN-FIQA's published overlays (docs/methods.md)


def figure(width: float, height: float):
  """A matplotlib Figure of width × height inches at 100 dpi, on its own Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def save(fig, path: str) -> str:
  """`fig` as a PNG at `path` (atomic: a killed run leaves no half-written file)."""
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", bbox_inches="tight")
  return path


def attention_heatmaps(maps: np.ndarray, size: int = 112) -> np.ndarray:
  """Per-patch maps [K, N] → heat in [0, 1] [K, size, size] (docs/methods.md): reshape to the
  patch grid, min-max with ONE global min/max over all K maps (+1e-8), clip, bilinear resize."""
  maps = np.asarray(maps, np.float32)
  k, n = maps.shape
  grid = int(round(math.sqrt(n)))
  if grid * grid != n:
    raise ValueError(f"{n} values per map is not a square patch grid")
  lo, hi = float(maps.min()), float(maps.max())
  norm = np.clip((maps - lo) / (hi - lo + 1e-8), 0.0, 1.0).reshape(k, grid, grid)
  return np.stack([np.asarray(Image.fromarray(m, mode="F").resize((size, size), Image.BILINEAR))
                   for m in norm]) if k else np.zeros((0, size, size), np.float32)


def attention_overlays(images: np.ndarray, maps: np.ndarray, alpha: float = OVERLAY_ALPHA
                       ) -> np.ndarray:
  """uint8 RGB [K, S, S, 3] and per-patch maps [K, N] → uint8 overlays [K, S, S, 3]:
  (1 − alpha)·image + alpha·jet(heat)."""
  from matplotlib import colormaps
  images = np.asarray(images)
  heat = attention_heatmaps(maps, images.shape[1])
  jet = colormaps["jet"](heat)[..., :3] * 255.0
  out = (1.0 - alpha) * images.astype(np.float64) + alpha * jet
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def plot_attention(path: str, images: np.ndarray, maps: np.ndarray, scores: np.ndarray,
                   title: str, labels: Sequence[str] | None = None) -> str:
  """A row of overlays (images sorted by the caller, e.g. highest then lowest quality), each
  titled with its quality score."""
  over = attention_overlays(images, maps)
  k = len(over)
  cols = min(k, 8)
  rows = max(1, -(-k // cols))
  fig = figure(1.5 * cols, 1.7 * rows + 0.4)
  for i in range(k):
    ax = fig.add_subplot(rows, cols, i + 1)
    ax.imshow(over[i])
    ax.set_axis_off()
    text = f"{float(scores[i]):.3g}"
    if labels is not None:
      text = f"{labels[i]}\n{text}"
    ax.set_title(text, fontsize=7)
  fig.suptitle(title, fontsize=9)
  return save(fig, path)
