"""Plot helpers every report shares (docs/evaluation.md, "Output files"): a figure on
matplotlib's Agg canvas (no pyplot state), a save that writes a PNG at PNG_DPI and a vector PDF
beside it (atomic and byte-identical on a rerun), one legend shared by all panels below them,
the labelled pAUC-limit line, the note for a curve that stops early, and the attention overlays
(docs/methods.md, "ATTN-FIQA").
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from exfiqa_jax import files

OVERLAY_ALPHA = 0.4                       # as ATTN-FIQA's published overlays (docs/methods.md)
PNG_DPI = 200                             # raster copy; the PDF beside it is vector
PDF_METADATA = {"CreationDate": None}     # no timestamp: a rerun writes the same bytes
PDF_RC = {"pdf.fonttype": 42}   # TrueType subsets, not Type 3 fonts (which venues' checks refuse)
PAD_INCHES = 0.05
MAX_NAMED = 3                             # curve-end notes name at most this many curves


def figure(width: float, height: float):
  """A matplotlib Figure of width × height inches on its own Agg canvas (font sizes in points
  are absolute: the PNG's resolution is PNG_DPI whatever the figure's dpi)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=PNG_DPI)
  FigureCanvasAgg(fig)
  return fig


def pdf_path(path: str) -> str:
  """The PDF that save() writes beside the PNG `path`."""
  return os.path.splitext(path)[0] + ".pdf"


def save(fig, path: str) -> str:
  """`fig` as a PNG at `path` (PNG_DPI) and as a vector PDF at pdf_path(path) with embedded
  TrueType fonts, each atomic (a killed run leaves no half-written file). The layout is
  measured once and both files are cut to it, so they show the same area. Returns `path`."""
  from matplotlib import rc_context
  bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(PAD_INCHES)
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=PNG_DPI, bbox_inches=bbox)
  with files.atomic_path(pdf_path(path)) as tmp, rc_context(PDF_RC):
    fig.savefig(tmp, format="pdf", bbox_inches=bbox, metadata=PDF_METADATA)
  return path


def shared_legend(fig, handles: Sequence[Any], labels: Sequence[str], columns: int = 0) -> None:
  """One legend for every panel, centred below them (outside all axes: it never covers a curve).
  Lays the panels out first, once (no layout engine left on the figure: saving it twice does
  not lay it out again); a tuple handle draws its lines side by side (a range of exits)."""
  from matplotlib.layout_engine import TightLayoutEngine
  from matplotlib.legend_handler import HandlerTuple
  TightLayoutEngine().execute(fig)
  if not handles:
    return
  per_column = 0.8 + 0.053 * max(len(str(label)) for label in labels)   # inches at 7 pt
  fit = max(1, min(len(handles), int(fig.get_figwidth() // per_column)))
  ncol = columns or -(-len(handles) // -(-len(handles) // fit))     # balanced rows
  fig.legend(list(handles), list(labels), loc="upper center", bbox_to_anchor=(0.5, 0.0),
             ncol=ncol, fontsize=7, frameon=False,
             handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)})


def limit_line(ax, limit: float) -> None:
  """The pAUC limit as a dotted vertical line, labelled above the axes (clear of the curves)."""
  ax.axvline(limit, color="0.45", lw=0.8, ls=":", zorder=1)
  ax.annotate(f"pAUC limit {limit:g}", xy=(limit, 1.0), xycoords=ax.get_xaxis_transform(),
              xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=6,
              color="0.35")


def curve_end(x: np.ndarray, y: np.ndarray, n_genuine: np.ndarray | None = None,
              n_impostor: np.ndarray | None = None) -> tuple[float, float, str] | None:
  """(x, y, why) of a curve's last point when it stops before the last discard level (FNMR
  undefined beyond it), else None; why says what the counts at the next level show ("no
  genuine pair left", "no impostor pair left") or "FNMR undefined"."""
  y = np.asarray(y, float)
  ok = np.isfinite(y)
  if not ok.any() or ok[-1]:
    return None
  last = int(np.flatnonzero(ok)[-1])
  why = "FNMR undefined"
  if n_impostor is not None and int(np.asarray(n_impostor)[last + 1]) == 0:
    why = "no impostor pair left"
  if n_genuine is not None and int(np.asarray(n_genuine)[last + 1]) == 0:
    why = "no genuine pair left"
  return float(x[last]), float(y[last]), why


def mark_ends(ax, ends: Sequence[tuple[str, str, tuple[float, float, str]]]) -> str:
  """Marks each curve end (name, colour, curve_end(...)) with × on the curve; returns one note
  line per (why, r) naming the curves, for the panel's x label."""
  by_reason: dict[tuple[str, float], list[str]] = {}
  for name, color, (x, y, why) in ends:
    ax.plot([x], [y], "x", color=color, ms=6, mew=1.6, zorder=5)
    by_reason.setdefault((why, x), []).append(name)
  notes = []
  for (why, x), names in by_reason.items():
    shown = ", ".join(names[:MAX_NAMED]) + (f" +{len(names) - MAX_NAMED} more"
                                           if len(names) > MAX_NAMED else "")
    notes.append(f"× {shown}: {why} beyond r = {x:g}")
  return "\n".join(notes)


def axes_text(ax, xlabel: str, ylabel: str, title: str, note: str = "") -> None:
  """Labels, title (padded for the limit label), ticks and grid of one panel; `note` goes
  under the x label."""
  ax.set_xlabel(xlabel + (f"\n{note}" if note else ""), fontsize=8)
  ax.set_ylabel(ylabel, fontsize=8)
  ax.set_title(title, fontsize=9, pad=12)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)


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
  titled with its quality score, and the colour bar of the heat (one min–max over these maps,
  as attention_heatmaps scales them)."""
  from matplotlib.cm import ScalarMappable
  from matplotlib.colors import Normalize
  over = attention_overlays(images, maps)
  k = len(over)
  cols = max(1, min(k, 8))
  rows = max(1, -(-k // cols))
  fig = figure(1.5 * cols + 0.9, 1.7 * rows + 0.4)
  axes = []
  for i in range(k):
    ax = fig.add_subplot(rows, cols, i + 1)
    ax.imshow(over[i])
    ax.set_axis_off()
    text = f"{float(scores[i]):.3g}"
    if labels is not None:
      text = f"{labels[i]}\n{text}"
    ax.set_title(text, fontsize=7)
    axes.append(ax)
  fig.suptitle(title, fontsize=9)
  if axes:
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), "jet"), ax=axes, fraction=0.05,
                       pad=0.03, shrink=0.85)
    bar.set_ticks([0.0, 0.5, 1.0], labels=["min", "", "max"], fontsize=6)
    bar.set_label(f"attention (overlaid at {OVERLAY_ALPHA:g})", fontsize=6)
  return save(fig, path)
