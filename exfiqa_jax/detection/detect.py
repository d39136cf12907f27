"""Face detection for raw photos: MTCNN batched under `jit`, then the five landmarks for
exfiqa_jax/data/align.py (docs/data.md, "Raw photos: detection and alignment").

Every quality model expects an aligned 112×112 crop; this module finds the faces and their five
landmarks (left eye, right eye, nose, left and right mouth corner, the ArcFace template's order)
in photos of any size. It follows the facenet-pytorch 2.6.0 MTCNN (`detect_face`, MIT) step by
step, with its weights (convert/mtcnn_keys.py) and its defaults: minimum face 20 px, pyramid
factor 0.709, thresholds 0.6 / 0.7 / 0.7.

One compiled program per image size (a "bucket") and batch: the whole batch goes through
  1. the image pyramid: scales 12/20 · 0.709^k while the short side stays ≥ 12 px; each level
     is the image resampled to (⌊h·s + 1⌋, ⌊w·s + 1⌋) with area interpolation (torch
     `interpolate(mode="area")`, i.e. adaptive average pooling) computed from an int32 summed
     area table — the window sums are exact integers, divided by the window height and then its
     width as torch does, so every level equals the reference's bit for bit;
  2. the P-Net over every level; cells with P(face) ≥ 0.6 become 12×12 boxes (stride 2),
     at most `max_per_scale` per level (top-k, ties in raster order); NMS IoU 0.5 per level,
     then 0.7 across levels (at most `max_candidates`); the P-Net's box regression, squared;
  3. the R-Net on 24×24 area-resampled crops (at most `max_rnet` boxes per photo), P > 0.7,
     NMS 0.7, regression, squared; the O-Net on 48×48 crops (at most `max_onet`), P > 0.7,
     landmarks,
     regression, NMS 0.7 over the smaller box ("Min", the MATLAB +1 pixel convention).
Every list has a fixed size with a validity mask; NMS is the exact greedy result, computed as
the fixed point of "kept unless a kept, higher-ranked box overlaps it" (a few K×K steps instead
of K sequential ones). The R-Net and O-Net run on crops pooled over the batch: `rnet_share` /
`onet_share` crops per photo on average, taken round robin by rank, while one photo may use up
to its whole list — most photos need far fewer boxes than a crowded one, and padding every photo
to the crowded case would spend most of the refinement on empty slots. When a cap or the pool is
exceeded, `overflow` is set for that photo: the faces found are still real, but a face the
reference would have kept may be missing; raise the caps (config.data.detector.*).

Differences from the reference (tests/test_detect.py measures them): the networks' float
rounding (~1e-6), products fused into FMAs by XLA (a box coordinate may differ in its last
bit), and ties in score, broken by list position here (the reference's last NMS uses an
unstable sort). Crops hanging over the image edge are clamped as in the reference (not
zero-padded as in the original MTCNN).

On the host: `Detector.detect(photos)` groups photos by size (the only host-side logic),
pads each group's batch to a power of two, and returns per-photo faces sorted by confidence;
`select_faces` picks the primary face (size and centrality, facenet-pytorch's
"center_weighted_size") or keeps all; `detect_and_align` returns aligned crops and a record of
where every crop came from.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from exfiqa_jax.data import align as align_lib
from exfiqa_jax.data import preprocess
from exfiqa_jax.models import mtcnn

FACE_MODES = ("primary", "largest", "probability", "all")
ALIGN_MODES = ("none", "detect")
CENTER_WEIGHT = 2.0     # facenet-pytorch select_boxes(center_weight=2.0)


class NoFaceError(preprocess.ImageError):
  """A photo in which the detector found no face (listed in no_face.txt, never dropped
  silently)."""
  no_face = True


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """MTCNN settings (the reference's defaults) and the fixed list sizes per image."""
  min_face_size: float = 20.0
  factor: float = 0.709
  thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
  max_per_scale: int = 512      # P-Net cells kept per pyramid level (top-k)
  max_candidates: int = 1024    # boxes after the per-level NMS, into the cross-level NMS
  max_rnet: int = 512           # boxes into the R-Net per photo
  max_onet: int = 128           # boxes into the O-Net per photo
  max_faces: int = 32           # faces returned per photo
  rnet_share: int = 192         # R-Net crops per photo of a batch, pooled (see `pool_size`)
  onet_share: int = 16          # O-Net crops per photo of a batch, pooled
  precision: str = "highest"    # conv/dense precision (models/mtcnn.py)

  def __post_init__(self):
    if not (self.min_face_size > 0 and 0 < self.factor < 1):
      raise ValueError(f"detector needs min_face_size > 0 and 0 < factor < 1, got "
                       f"{self.min_face_size}, {self.factor}")
    if len(self.thresholds) != 3:
      raise ValueError(f"detector thresholds are three numbers, got {self.thresholds}")
    caps = (self.max_per_scale, self.max_candidates, self.max_rnet, self.max_onet,
            self.max_faces, self.rnet_share, self.onet_share)
    if min(caps) < 1:
      raise ValueError(f"detector list sizes must be >= 1, got {caps}")

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "thresholds": list(self.thresholds)}


def pyramid_scales(height: int, width: int, min_face_size: float = 20.0,
                   factor: float = 0.709) -> list[float]:
  """The reference's scales, in the same float arithmetic (12/min_face · factor^k while
  min(h, w) · scale ≥ 12)."""
  m = 12.0 / min_face_size
  minl = min(height, width) * m
  scales, scale = [], m
  while minl >= 12:
    scales.append(scale)
    scale *= factor
    minl *= factor
  return scales


def pyramid_sizes(height: int, width: int, scales: Sequence[float]) -> list[tuple[int, int]]:
  return [(int(height * s + 1), int(width * s + 1)) for s in scales]


# ------------------------------------------------------------------------------------------
# Device functions (per image unless noted; vmapped over the batch)
# ------------------------------------------------------------------------------------------
def _opaque(x: jax.Array) -> jax.Array:
  """Stops XLA from rewriting a division by a constant into a multiplication by its
  reciprocal (which changes the last bit, and at integer boundaries the floor)."""
  return lax.optimization_barrier(x)


def summed_area_table(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] → int32 [B, H+1, W+1, 3], S[y, x] = sum of pixels above-left. Sums
  wrap around past 2^31 on huge photos, but every window sum (a difference of four entries)
  is below 2^31 and comes out exact in two's complement."""
  s = jnp.cumsum(jnp.cumsum(images.astype(jnp.int32), axis=1), axis=2)
  return jnp.pad(s, ((0, 0), (1, 0), (1, 0), (0, 0)))


def _windows(size_in: int | jax.Array, size_out: int, start: int | jax.Array = 0):
  """Adaptive-pooling windows [start_i, end_i) of torch (floor and ceil of i·in/out)."""
  i = jnp.arange(size_out)
  lo = start + (i * size_in) // size_out
  hi = start + ((i + 1) * size_in + size_out - 1) // size_out
  return lo, hi


def _window_sums(sat: jax.Array, r0, r1, c0, c1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Exact int32 sums of every window [r0_i, r1_i) × [c0_j, c1_j) of one image's table
  [H+1, W+1, 3], with the window heights and widths as float32 [out_h, out_w, 3] arrays."""
  s = (sat[r1[:, None], c1[None, :]] - sat[r0[:, None], c1[None, :]]
       - sat[r1[:, None], c0[None, :]] + sat[r0[:, None], c0[None, :]])
  kh = jnp.broadcast_to((r1 - r0).astype(jnp.float32)[:, None, None], s.shape)
  kw = jnp.broadcast_to((c1 - c0).astype(jnp.float32)[None, :, None], s.shape)
  return s, kh, kw


def _means(sums: jax.Array, kh: jax.Array, kw: jax.Array) -> jax.Array:
  """sums / height / width in torch's order. Called on whole (batched) arrays, outside any
  vmap: every operand is then a real array behind a barrier, and XLA cannot turn a division
  by a broadcast into a multiplication by its reciprocal (a last-bit change)."""
  kh, kw = _opaque(kh), _opaque(kw)
  return _opaque(sums.astype(jnp.float32) / kh) / kw


def area_resize(sat: jax.Array, height: int, width: int, out_h: int, out_w: int) -> jax.Array:
  """Tables [B, H+1, W+1, 3] → float32 [B, out_h, out_w, 3], torch interpolate(mode="area")
  (adaptive average pooling), bit for bit."""
  r0, r1 = _windows(height, out_h)
  c0, c1 = _windows(width, out_w)
  sums, kh, kw = jax.vmap(lambda t: _window_sums(t, r0, r1, c0, c1))(sat)
  return _means(sums, kh, kw)


def _normalize(x: jax.Array) -> jax.Array:
  return (x - 127.5) * 0.0078125


def _iou_matrix(boxes: jax.Array, mode: str) -> jax.Array:
  """[K, 4] → [K, K] overlap. "union": torchvision (areas without +1, IoU); "min": the
  reference's numpy NMS (MATLAB +1 pixel, intersection over the smaller area)."""
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  one = 1.0 if mode == "min" else 0.0
  area = (x2 - x1 + one) * (y2 - y1 + one)
  w = jnp.maximum(0.0, jnp.minimum(x2[:, None], x2[None, :])
                  - jnp.maximum(x1[:, None], x1[None, :]) + one)
  h = jnp.maximum(0.0, jnp.minimum(y2[:, None], y2[None, :])
                  - jnp.maximum(y1[:, None], y1[None, :]) + one)
  inter = w * h
  if mode == "min":
    return inter / jnp.minimum(area[:, None], area[None, :])
  return inter / (area[:, None] + area[None, :] - inter)


def nms_sorted(boxes: jax.Array, valid: jax.Array, threshold: float, mode: str = "union"
               ) -> jax.Array:
  """Greedy NMS over boxes already in priority order: keep [K] bool. A box is dropped when a
  kept box before it overlaps it by more than `threshold` — iterated to the fixed point,
  which is the sequential greedy answer (entry i is final after i steps)."""
  k = boxes.shape[0]
  later = jnp.arange(k)[None, :] > jnp.arange(k)[:, None]
  over = (_iou_matrix(boxes, mode) > threshold) & later

  def step(keep):
    return valid & ~jnp.any(over & keep[:, None], axis=0)

  def cond(state):
    keep, previous = state
    return jnp.any(keep != previous)

  first = step(valid)
  keep, _ = lax.while_loop(cond, lambda s: (step(s[0]), s[0]), (first, valid))
  return keep


def _priority(score: jax.Array, valid: jax.Array) -> jax.Array:
  """Indices ordering valid entries by score (descending), ties by position, invalid last —
  torch's stable descending sort."""
  key = jnp.where(valid, -score, jnp.inf)
  return jnp.argsort(key, stable=True)


def _compact(keep: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Positions of the first `size` kept entries, in order, and their validity (padded)."""
  n = keep.shape[0]
  order = jnp.argsort(~keep, stable=True)
  valid = keep[order]
  if n >= size:
    return order[:size], valid[:size]
  return jnp.pad(order, (0, size - n)), jnp.pad(valid, (0, size - n))


def _rerec(boxes: jax.Array) -> jax.Array:
  """Boxes → squares of the longer side around the same centre (reference `rerec`)."""
  x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
  h, w = y2 - y1, x2 - x1
  side = jnp.maximum(w, h)
  nx1 = x1 + w * 0.5 - side * 0.5
  ny1 = y1 + h * 0.5 - side * 0.5
  return jnp.stack([nx1, ny1, nx1 + side, ny1 + side], axis=1)


def _bbreg(boxes: jax.Array, reg: jax.Array) -> jax.Array:
  """The R-/O-Net box regression (reference `bbreg`, widths with +1)."""
  w = boxes[:, 2] - boxes[:, 0] + 1
  h = boxes[:, 3] - boxes[:, 1] + 1
  size = jnp.stack([w, h, w, h], axis=1)
  return boxes + reg * size


def _crop_windows(boxes: jax.Array, height: int, width: int):
  """Reference `pad`: truncated box corners clamped to the image, rows [y − 1, ey) and
  columns [x − 1, ex); ok where the crop is not empty."""
  b = jnp.trunc(jnp.clip(boxes, -1e7, 1e7)).astype(jnp.int32)
  x = jnp.maximum(b[:, 0], 1)
  y = jnp.maximum(b[:, 1], 1)
  ex = jnp.minimum(b[:, 2], width)
  ey = jnp.minimum(b[:, 3], height)
  ok = (ey > y - 1) & (ex > x - 1)
  r0 = jnp.where(ok, y - 1, 0)
  c0 = jnp.where(ok, x - 1, 0)
  r1 = jnp.where(ok, ey, 1)
  c1 = jnp.where(ok, ex, 1)
  return r0, r1, c0, c1, ok


def crops(sat: jax.Array, image: jax.Array, boxes: jax.Array, size: int, height: int,
          width: int) -> tuple[jax.Array, jax.Array]:
  """Tables [B, H+1, W+1, 3], photo index [P] and boxes [P, 4] → normalised area-resampled
  crops [P, size, size, 3] (reference `imresample` of `imgs[:, y-1:ey, x-1:ex]`), ok [P]."""
  r0, r1, c0, c1, ok = _crop_windows(boxes, height, width)
  flat = sat.reshape(-1, sat.shape[-1])
  row = width + 1

  def one(b, a, e, c, d):
    lo_r, hi_r = _windows(e - a, size, a)
    lo_c, hi_c = _windows(d - c, size, c)
    base = b * (height + 1) * row

    def at(r, q):
      return flat[base + r[:, None] * row + q[None, :]]

    s = at(hi_r, hi_c) - at(lo_r, hi_c) - at(hi_r, lo_c) + at(lo_r, lo_c)
    kh = jnp.broadcast_to((hi_r - lo_r).astype(jnp.float32)[:, None, None], s.shape)
    kw = jnp.broadcast_to((hi_c - lo_c).astype(jnp.float32)[None, :, None], s.shape)
    return s, kh, kw

  sums, kh, kw = jax.vmap(one)(image, r0, r1, c0, c1)
  return _normalize(_means(sums, kh, kw)), ok


def pool_size(batch: int, per_photo: int, share: int) -> int:
  """Crops one network call holds for a batch: every photo's share, but at least one photo's
  whole list (a single crowded photo never loses boxes to the pool), at most every list."""
  return min(batch * per_photo, max(batch * share, per_photo))


def _pool(valid: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
  """Flat indices into [B, K] of at most `size` valid entries, round robin over the photos by
  rank (every photo's best box first, then every second-best, ...), and which are valid."""
  b, k = valid.shape
  rank = jnp.arange(k)[None, :] * b + jnp.arange(b)[:, None]
  order = jnp.argsort(jnp.where(valid, rank, b * k).reshape(-1))[:size]
  return order, valid.reshape(-1)[order]


def _run_pooled(apply: Callable, sat: jax.Array, boxes: jax.Array, valid: jax.Array,
                size: int, pool: int, height: int, width: int):
  """The R-/O-Net over the pooled crops of boxes [B, K, 4] (valid [B, K]) → per entry: the
  network's outputs scattered back ([B, K, ...], zeros where it did not run), ran [B, K] (it
  ran and the crop was not empty), and per photo whether the pool dropped a valid box."""
  b, k = valid.shape
  order, taken = _pool(valid, pool)
  inputs, ok = crops(sat, order // k, boxes.reshape(-1, 4)[order], size, height, width)
  outputs = apply(inputs)
  scattered = tuple(jnp.zeros((b * k,) + o.shape[1:], o.dtype).at[order].set(o).reshape(
      (b, k) + o.shape[1:]) for o in outputs)
  ran = jnp.zeros((b * k,), bool).at[order].set(taken & ok).reshape(b, k)
  dropped = jnp.zeros((b * k,), bool).at[order].set(taken).reshape(b, k)
  return scattered, ran, jnp.any(valid & ~dropped, axis=1)


def cell_edges(scales: Sequence[float], size: int) -> tuple[np.ndarray, np.ndarray]:
  """Box edges of P-Net cells 0..size−1 at every scale: ⌊(2i + 1)/s⌋ and ⌊(2i + 12)/s⌋ in
  float32 as the reference computes them ([L, size] each). Tables built on the host: on the
  device, XLA may turn the division into a multiplication by 1/s, which moves some edges by a
  pixel."""
  i = np.arange(size, dtype=np.float32)[None, :]
  s = np.asarray(scales, np.float32)[:, None]
  return np.floor((2 * i + 1) / s), np.floor((2 * i + 12) / s)


def _cells(probs: jax.Array, regs: jax.Array, widths: jax.Array, edges: tuple, threshold: float,
           k: int):
  """One image's P-Net maps of every level, flattened and stacked ([L, P] probabilities,
  −inf past a level's end; [L, P, 4] offsets) → each level's top-k cells as boxes
  (reference `generateBoundingBox`), sorted by score with ties in raster order, and each
  level's count above the threshold. One top-k and one NMS over all levels keep the program
  (and its compile time) small."""
  above = probs >= threshold
  values, index = lax.top_k(jnp.where(above, probs, -jnp.inf), k)
  order = jax.vmap(lambda i, v: jnp.lexsort((i, -v)))(index, values)   # ties: raster order
  values = jnp.take_along_axis(values, order, axis=1)
  index = jnp.take_along_axis(index, order, axis=1)
  valid = values >= threshold
  pw = widths[:, None]
  x, y = index % pw, index // pw
  low, high = edges
  boxes = jnp.stack([jnp.take_along_axis(low, x, axis=1), jnp.take_along_axis(low, y, axis=1),
                     jnp.take_along_axis(high, x, axis=1), jnp.take_along_axis(high, y, axis=1)],
                    axis=-1)
  regs = jnp.take_along_axis(regs, index[..., None], axis=1)
  return boxes, values, regs, valid, jnp.sum(above, axis=1)


@dataclasses.dataclass(frozen=True)
class _Plan:
  height: int
  width: int
  scales: tuple[float, ...]
  sizes: tuple[tuple[int, int], ...]


def _plan(height: int, width: int, config: DetectorConfig) -> _Plan:
  scales = pyramid_scales(height, width, config.min_face_size, config.factor)
  return _Plan(height, width, tuple(scales), tuple(pyramid_sizes(height, width, scales)))


def _empty_outputs(batch: int, config: DetectorConfig) -> dict[str, jax.Array]:
  f, r, o = config.max_faces, config.max_rnet, config.max_onet
  z = lambda *s: jnp.zeros((batch,) + s, jnp.float32)   # noqa: E731
  b = lambda *s: jnp.zeros((batch,) + s, bool)           # noqa: E731
  return {"boxes": z(f, 4), "scores": z(f), "landmarks": z(f, 5, 2), "valid": b(f),
          "overflow": b(), "stage1_boxes": z(r, 4), "stage1_scores": z(r), "stage1_valid": b(r),
          "rnet_scores": z(r), "stage2_boxes": z(o, 4), "stage2_scores": z(o),
          "stage2_valid": b(o), "onet_scores": z(o)}


def detect_batch_fn(variables: dict, images: jax.Array, config: DetectorConfig
                    ) -> dict[str, jax.Array]:
  """The whole detector on uint8 [B, H, W, 3] RGB (traced; `Detector` jits it per bucket).

  Returns per image: boxes [F, 4] (x1, y1, x2, y2), scores [F], landmarks [F, 5, 2] (x, y),
  valid [F] — sorted by score —, overflow []; and the stages for tests: stage1_* (the squared
  P-Net boxes entering the R-Net, P-Net scores), rnet_scores, stage2_* (boxes entering the
  O-Net, R-Net scores), onet_scores.
  """
  batch, height, width = images.shape[:3]
  plan = _plan(height, width, config)
  t1, t2, t3 = config.thresholds
  if not plan.scales:
    return _empty_outputs(batch, config)
  sat = summed_area_table(images)
  pnet = mtcnn.PNet(config.precision)
  probs, regs, widths = [], [], []
  for hs, ws in plan.sizes:
    level = area_resize(sat, height, width, hs, ws)
    reg, prob = pnet.apply(variables["pnet"], _normalize(level))
    probs.append(prob[..., 1].reshape(batch, -1))
    regs.append(reg.reshape(batch, -1, 4))
    widths.append(prob.shape[2])
  cells = max(p.shape[1] for p in probs)
  probs = jnp.stack([jnp.pad(p, ((0, 0), (0, cells - p.shape[1])), constant_values=-jnp.inf)
                     for p in probs], axis=1)                                # [B, L, P]
  regs = jnp.stack([jnp.pad(r, ((0, 0), (0, cells - r.shape[1]), (0, 0))) for r in regs],
                   axis=1)                                                   # [B, L, P, 4]
  widths = jnp.asarray(widths, jnp.int32)
  edges = tuple(jnp.asarray(e) for e in cell_edges(plan.scales, max(height, width)))
  k = min(config.max_per_scale, cells)

  def stage1(probs, regs):
    boxes, scores, regs, valid, counts = _cells(probs, regs, widths, edges, t1, k)
    overflow = jnp.any(counts > k)
    keep = jax.vmap(lambda b, v: nms_sorted(b, v, 0.5, "union"))(boxes, valid)
    boxes, scores, regs, keep = (x.reshape((-1,) + x.shape[2:])
                                 for x in (boxes, scores, regs, keep))   # levels in order
    overflow |= jnp.sum(keep) > config.max_candidates
    order = _priority(scores, keep)[:config.max_candidates]
    boxes, scores, regs, keep = boxes[order], scores[order], regs[order], keep[order]
    keep = nms_sorted(boxes, keep, 0.7, "union")
    overflow |= jnp.sum(keep) > config.max_rnet
    pick, valid = _compact(keep, config.max_rnet)
    boxes, scores, regs = boxes[pick], scores[pick], regs[pick]
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    boxes = _rerec(boxes + regs * jnp.stack([w, h, w, h], axis=1))
    return boxes, scores, valid, overflow

  boxes1, scores1, valid1, overflow = jax.vmap(stage1)(probs, regs)
  rnet = mtcnn.RNet(config.precision)
  (reg2, probs2), ran1, dropped1 = _run_pooled(
      lambda x: rnet.apply(variables["rnet"], x), sat, boxes1, valid1, 24,
      pool_size(batch, config.max_rnet, config.rnet_share), height, width)
  score2 = probs2[..., 1]

  def stage2(boxes, valid, ok, score, reg):
    passed = valid & ok & (score > t2)
    order = _priority(score, passed)
    boxes, passed, score, reg = boxes[order], passed[order], score[order], reg[order]
    keep = nms_sorted(boxes, passed, 0.7, "union")
    pick, valid = _compact(keep, config.max_onet)
    return (_rerec(_bbreg(boxes[pick], reg[pick])), score[pick], valid,
            jnp.sum(keep) > config.max_onet)

  boxes2, scores2, valid2, overflow2 = jax.vmap(stage2)(boxes1, valid1, ran1, score2, reg2)
  onet = mtcnn.ONet(config.precision)
  (reg3, points3, probs3), ran2, dropped2 = _run_pooled(
      lambda x: onet.apply(variables["onet"], x), sat, boxes2, valid2, 48,
      pool_size(batch, config.max_onet, config.onet_share), height, width)
  score3 = probs3[..., 1]

  def stage3(boxes, valid, ok, score, reg, points):
    passed = valid & ok & (score > t3)
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    px = w[:, None] * points[:, :5] + boxes[:, 0:1] - 1
    py = h[:, None] * points[:, 5:] + boxes[:, 1:2] - 1
    landmarks = jnp.stack([px, py], axis=-1)
    boxes = _bbreg(boxes, reg)
    order = _priority(score, passed)
    boxes, passed, score, landmarks = boxes[order], passed[order], score[order], landmarks[order]
    keep = nms_sorted(boxes, passed, 0.7, "min")
    pick, valid = _compact(keep, config.max_faces)
    return (boxes[pick], score[pick], landmarks[pick], valid,
            jnp.sum(keep) > config.max_faces)

  boxes3, scores3, landmarks3, valid3, overflow3 = jax.vmap(stage3)(
      boxes2, valid2, ran2, score3, reg3, points3)
  zero = lambda x, v: jnp.where(v.reshape(v.shape + (1,) * (x.ndim - v.ndim)), x, 0)  # noqa
  return {"boxes": zero(boxes3, valid3), "scores": zero(scores3, valid3),
          "landmarks": zero(landmarks3, valid3), "valid": valid3,
          "overflow": overflow | overflow2 | overflow3 | dropped1 | dropped2,
          "stage1_boxes": zero(boxes1, valid1), "stage1_scores": zero(scores1, valid1),
          "stage1_valid": valid1, "rnet_scores": zero(score2, valid1),
          "stage2_boxes": zero(boxes2, valid2), "stage2_scores": zero(scores2, valid2),
          "stage2_valid": valid2, "onet_scores": zero(score3, valid2)}


# ------------------------------------------------------------------------------------------
# Host side: buckets, selection, alignment
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Faces:
  """The faces of one photo, by decreasing confidence: boxes [n, 4] (x1, y1, x2, y2, pixels),
  scores [n], landmarks [n, 5, 2] (x, y); overflow: a list cap was hit (docs/data.md)."""
  boxes: np.ndarray
  scores: np.ndarray
  landmarks: np.ndarray
  overflow: bool = False
  stages: dict[str, np.ndarray] | None = None

  def __len__(self) -> int:
    return len(self.scores)


@functools.lru_cache(maxsize=None)
def _jitted(config: DetectorConfig) -> Callable:
  """One jitted detector per configuration, shared by every Detector (compiled once per
  batch and photo size)."""
  return jax.jit(functools.partial(detect_batch_fn, config=config))


def _next_pow2(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()


class Detector:
  """MTCNN with the facenet-pytorch weights, one jitted program per (batch, height, width).

  `weights`: None = the installed facenet-pytorch, or its wheel file / a folder with the
  three .pt files (convert/mtcnn_keys.py). `batch_size`: photos per call (padded to powers of
  two up to it; spread over the local devices).
  """

  def __init__(self, config: DetectorConfig | None = None,
               weights: str | os.PathLike | None = None, batch_size: int = 16):
    from exfiqa_jax.convert import mtcnn_keys
    self.config = config or DetectorConfig()
    self.weights = os.fspath(weights) if weights else ""
    self.batch_size = max(1, int(batch_size))
    devices = jax.local_devices()
    self._mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
    self._sharding = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec("batch"))
    self.variables = jax.device_put(mtcnn_keys.load_variables(self.weights or None),
                                    jax.sharding.NamedSharding(self._mesh,
                                                               jax.sharding.PartitionSpec()))
    self._fn = _jitted(self.config)

  def _padded(self, n: int) -> int:
    devices = len(self._mesh.devices.ravel())
    size = min(self.batch_size, _next_pow2(n))
    return max(size, n) if devices == 1 else -(-max(size, n) // devices) * devices

  def detect_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [B, H, W, 3] RGB photos of one size → the arrays of `detect_batch_fn` (numpy)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"photos must be uint8 [B, H, W, 3] RGB, got {images.dtype} "
                       f"{list(images.shape)}")
    n = len(images)
    size = self._padded(n)
    if size > n:
      images = np.concatenate([images, np.zeros((size - n,) + images.shape[1:], np.uint8)])
    out = self._fn(self.variables, jax.device_put(images, self._sharding))
    return {k: np.asarray(v)[:n] for k, v in jax.device_get(out).items()}

  def detect(self, photos: Sequence[np.ndarray], stages: bool = False) -> list[Faces]:
    """Photos of any sizes (uint8 [H, W, 3] RGB each; greyscale [H, W] is repeated) → one
    `Faces` per photo, in order. Photos are grouped by size, `batch_size` at a time."""
    photos = [as_rgb(p) for p in photos]
    results: list[Faces | None] = [None] * len(photos)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, photo in enumerate(photos):
      buckets.setdefault(photo.shape[:2], []).append(i)
    for indices in buckets.values():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        out = self.detect_batch(np.stack([photos[i] for i in chunk]))
        for row, i in enumerate(chunk):
          results[i] = _faces(out, row, stages)
    return results


def _faces(out: dict[str, np.ndarray], row: int, stages: bool) -> Faces:
  valid = out["valid"][row]
  extra = None
  if stages:
    extra = {k: out[k][row] for k in out if k.startswith(("stage", "rnet", "onet"))}
  return Faces(out["boxes"][row][valid], out["scores"][row][valid],
               out["landmarks"][row][valid], bool(out["overflow"][row]), extra)


def as_rgb(photo: np.ndarray) -> np.ndarray:
  photo = np.asarray(photo)
  if photo.ndim == 2:
    photo = np.repeat(photo[..., None], 3, axis=-1)
  if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] not in (3, 4):
    raise ValueError(f"a photo must be uint8 [H, W, 3] RGB (or [H, W] greyscale), got "
                     f"{photo.dtype} {list(photo.shape)}")
  return np.ascontiguousarray(photo[..., :3])


def check_face_mode(face: str) -> str:
  if face not in FACE_MODES:
    raise ValueError(f"face must be one of {FACE_MODES}, got {face!r}")
  return face


def check_align_mode(align: str) -> str:
  if align not in ALIGN_MODES:
    raise ValueError(f"align must be one of {ALIGN_MODES} ('none': the images are aligned "
                     f"112x112 crops already; 'detect': raw photos), got {align!r}")
  return align


def face_order(faces: Faces, height: int, width: int, face: str = "primary") -> np.ndarray:
  """Indices of `faces` in preference order for the `face` mode: "primary" = area minus
  2 × squared distance of the box centre from the photo centre (facenet-pytorch
  "center_weighted_size": big and central wins), "largest", "probability" (= the detector's
  order), "all" (every face, primary first)."""
  check_face_mode(face)
  if not len(faces):
    return np.zeros((0,), np.int64)
  b = faces.boxes.astype(np.float64)
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  if face == "probability":
    return np.arange(len(faces))
  if face == "largest":
    return np.argsort(-area, kind="stable")
  centre = np.stack([(b[:, 0] + b[:, 2]) / 2 - width / 2, (b[:, 1] + b[:, 3]) / 2 - height / 2],
                    axis=1)
  return np.argsort(-(area - CENTER_WEIGHT * (centre ** 2).sum(1)), kind="stable")


def select_faces(faces: Faces, height: int, width: int, face: str = "primary") -> np.ndarray:
  """The faces to keep: the first of `face_order` (or all of them for face="all")."""
  order = face_order(faces, height, width, face)
  return order if face == "all" else order[:1]


@dataclasses.dataclass
class AlignedFaces:
  """Aligned crops of the faces found in a list of photos, with where each came from.

  crops uint8 [N, size, size, 3]; per crop: image [N] (index of its photo), face [N] (its rank
  in the photo's `face_order`), num_faces [N] (faces found in that photo), score [N],
  box [N, 4], landmarks [N, 5, 2]; no_face: indices of photos without any face; overflow:
  indices of photos where a detector list cap was hit.
  """
  crops: np.ndarray
  image: np.ndarray
  face: np.ndarray
  num_faces: np.ndarray
  score: np.ndarray
  box: np.ndarray
  landmarks: np.ndarray
  no_face: list[int]
  overflow: list[int]

  def columns(self) -> dict[str, np.ndarray]:
    """The per-crop columns scores.csv appends (see `face_columns`)."""
    return face_columns(self.face, self.num_faces, self.score, self.box, self.landmarks)


def face_columns(face: np.ndarray, num_faces: np.ndarray, score: np.ndarray, box: np.ndarray,
                 landmarks: np.ndarray) -> dict[str, np.ndarray]:
  """{name: [N]} in scores.csv order: face, num_faces, det_score, box_x1, box_y1, box_x2,
  box_y2, lm1_x, lm1_y, ..., lm5_x, lm5_y (docs/data.md)."""
  cols = {"face": np.asarray(face), "num_faces": np.asarray(num_faces),
          "det_score": np.asarray(score)}
  box, landmarks = np.asarray(box).reshape(-1, 4), np.asarray(landmarks).reshape(-1, 5, 2)
  for k, name in enumerate(("box_x1", "box_y1", "box_x2", "box_y2")):
    cols[name] = box[:, k]
  for p in range(5):
    cols[f"lm{p + 1}_x"] = landmarks[:, p, 0]
    cols[f"lm{p + 1}_y"] = landmarks[:, p, 1]
  return cols


@dataclasses.dataclass(frozen=True)
class FaceRecord:
  """One face to crop: which photo, its rank, the photo's face count, and the detection."""
  image: int
  face: int
  num_faces: int
  score: float
  box: np.ndarray
  landmarks: np.ndarray


def face_records(detections: Sequence[Faces | None], shapes: Sequence[tuple[int, int]],
                 face: str = "primary") -> tuple[list[FaceRecord], list[int]]:
  """Per-photo detections → (the faces to crop, in photo order; photos with no face).
  A `None` detection (unreadable photo) is in neither list."""
  records, no_face = [], []
  for i, (faces, shape) in enumerate(zip(detections, shapes)):
    if faces is None:
      continue
    if not len(faces):
      no_face.append(i)
      continue
    for rank, j in enumerate(select_faces(faces, shape[0], shape[1], face)):
      records.append(FaceRecord(i, rank, len(faces), float(faces.scores[j]),
                                faces.boxes[j].copy(), faces.landmarks[j].copy()))
  return records, no_face


def aligned_faces(photos: Sequence[np.ndarray], records: Sequence[FaceRecord],
                  no_face: Sequence[int], overflow: Sequence[int] = (),
                  size: int = preprocess.IMAGE_SIZE) -> AlignedFaces:
  crops = np.stack([align_lib.align_face(as_rgb(photos[r.image]), r.landmarks, size)
                    for r in records]) if records else np.zeros((0, size, size, 3), np.uint8)
  return AlignedFaces(
      crops=crops, image=np.asarray([r.image for r in records], np.int64),
      face=np.asarray([r.face for r in records], np.int64),
      num_faces=np.asarray([r.num_faces for r in records], np.int64),
      score=np.asarray([r.score for r in records], np.float32),
      box=np.asarray([r.box for r in records], np.float32).reshape(-1, 4),
      landmarks=np.asarray([r.landmarks for r in records], np.float32).reshape(-1, 5, 2),
      no_face=list(no_face), overflow=list(overflow))


_DETECTORS: dict[tuple, Detector] = {}


def get_detector(config: DetectorConfig | None = None, weights: str | os.PathLike | None = None,
                 batch_size: int = 16) -> Detector:
  """A cached `Detector` (its compiled programs are reused across calls)."""
  key = (config or DetectorConfig(), os.fspath(weights) if weights else "", int(batch_size))
  if key not in _DETECTORS:
    _DETECTORS[key] = Detector(key[0], key[1] or None, key[2])
  return _DETECTORS[key]


def detect_and_align(photos: Sequence[np.ndarray], face: str = "primary",
                     detector: Detector | None = None, size: int = preprocess.IMAGE_SIZE
                     ) -> AlignedFaces:
  """Raw photos (uint8 RGB, any sizes) → aligned crops of their faces (the primary face of
  each photo by default; face="all": every face) with boxes, landmarks, confidences, and the
  photos with no face. The crops are `align.align_face` of the detected landmarks."""
  check_face_mode(face)
  detector = detector or get_detector()
  photos = [as_rgb(p) for p in photos]
  detections = detector.detect(photos)
  records, no_face = face_records(detections, [p.shape[:2] for p in photos], face)
  overflow = [i for i, d in enumerate(detections) if d.overflow]
  return aligned_faces(photos, records, no_face, overflow, size)


# ------------------------------------------------------------------------------------------
# Files: decode at full size, detect in size buckets, align on demand
# ------------------------------------------------------------------------------------------
def read_photo(path: str | os.PathLike, label: str | None = None) -> np.ndarray:
  """A photo file → uint8 [H, W, 3] RGB at its own size, turned upright by its EXIF
  orientation (phone photos are stored sideways; MTCNN finds upright faces). ImageError when
  undecodable."""
  from PIL import ImageOps
  label = label or os.fspath(path)
  image = preprocess.open_rgb(path, label)
  try:
    image = ImageOps.exif_transpose(image)
  except Exception:  # noqa: BLE001  a damaged EXIF block: keep the stored orientation
    pass
  if min(image.size) < 12:
    raise preprocess.ImageError(f"image {label} is {image.size[0]}x{image.size[1]}: too small "
                                "to hold a detectable face")
  return np.asarray(image, dtype=np.uint8)


def detect_files(paths: Sequence[str], detector: Detector, chunk: int = 64,
                 workers: int = 4, progress: Callable[[int], None] | None = None
                 ) -> tuple[list[Faces | None], list[tuple[int, int] | None], dict[int, str]]:
  """Detections of every file: (Faces or None when unreadable, (H, W) or None, {index:
  error}). Files are decoded `chunk` at a time in threads, then detected in size buckets."""
  import concurrent.futures
  detections: list[Faces | None] = [None] * len(paths)
  shapes: list[tuple[int, int] | None] = [None] * len(paths)
  errors: dict[int, str] = {}

  def read(i):
    try:
      return read_photo(paths[i])
    except preprocess.ImageError as e:
      return e

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    for start in range(0, len(paths), chunk):
      indices = list(range(start, min(start + chunk, len(paths))))
      photos = list(pool.map(read, indices))
      good = [(i, p) for i, p in zip(indices, photos) if not isinstance(p, Exception)]
      for i, p in zip(indices, photos):
        if isinstance(p, Exception):
          errors[i] = str(p)
      found = detector.detect([p for _, p in good])
      for (i, p), faces in zip(good, found):
        detections[i], shapes[i] = faces, p.shape[:2]
      if progress is not None:
        progress(len(indices))
  return detections, shapes, errors


def aligned_reader(paths: Sequence[str], records: Sequence[FaceRecord],
                   channel_order: str = "rgb", size: int = preprocess.IMAGE_SIZE):
  """A pipeline reader (exfiqa_jax/data/pipeline.py) whose row k is the aligned crop of
  `records[k]`: its photo decoded again and warped with the detected landmarks."""
  preprocess.check_channel_order(channel_order)

  def read(rows):
    out = np.zeros((len(rows), size, size, 3), np.uint8)
    errors: list[str | None] = [None] * len(rows)
    for k, row in enumerate(rows):
      record = records[int(row)]
      try:
        crop = align_lib.align_face(read_photo(paths[record.image]), record.landmarks, size)
      except (preprocess.ImageError, ValueError) as e:
        errors[k] = str(e)
        continue
      out[k] = crop[..., ::-1] if channel_order == "bgr" else crop
    return out, errors

  return read


# ------------------------------------------------------------------------------------------
# Jobs: rows to score from a list of raw photos
# ------------------------------------------------------------------------------------------
def config_from(data: Any) -> DetectorConfig:
  """A DetectorConfig from a job's `config.data.detector` (ConfigDict or dict; absent = the
  reference's defaults)."""
  fields = {f.name for f in dataclasses.fields(DetectorConfig)}
  given = dict(data.get("detector", None) or {}) if data is not None else {}
  unknown = sorted(set(given) - fields)
  if unknown:
    raise ValueError(f"unknown detector setting(s) {unknown}; known: {sorted(fields)}")
  if "thresholds" in given:
    given["thresholds"] = tuple(float(t) for t in given["thresholds"])
  return DetectorConfig(**given)


def align_identity(data: Any) -> dict[str, Any]:
  """What detected rows depend on (docs/caching.md), without loading the weights."""
  from exfiqa_jax import identity
  from exfiqa_jax.convert import mtcnn_keys
  weights = data.get("detector_weights", "") or mtcnn_keys.installed_data_dir() or ""
  return {"align": "detect", "face": check_face_mode(data.get("face", "primary")),
          "detector": config_from(data).to_dict(),
          "weights": identity.file_identity(weights) if weights else ""}


@dataclasses.dataclass
class PhotoRows:
  """What a job scores when its inputs are raw photos: one row per selected face.

  reader: a pipeline reader of the aligned crops; names [R]: each row's photo name;
  records [R]; no_face / overflow: names of photos without a face / with a list cap hit;
  unreadable: {photo index: error} for photos that could not be decoded.
  """
  reader: Callable
  names: list[str]
  records: list[FaceRecord]
  no_face: list[str]
  overflow: list[str]
  unreadable: dict[int, str]

  def columns(self, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The appended per-row columns (see AlignedFaces.columns) of the rows kept."""
    r = self.records
    cols = face_columns(np.asarray([x.face for x in r], np.int64),
                        np.asarray([x.num_faces for x in r], np.int64),
                        np.asarray([x.score for x in r], np.float32),
                        np.asarray([x.box for x in r], np.float32),
                        np.asarray([x.landmarks for x in r], np.float32))
    return {k: v if keep is None else v[keep] for k, v in cols.items()}


_RECORD_WIDTH = 1 + 4 + 10     # score, box, landmarks


def _gather_hosts(detections: list[Faces | None], shapes: list[tuple[int, int] | None],
                  total: int, max_faces: int
                  ) -> tuple[list[Faces | None], list[tuple[int, int] | None]]:
  """Process p detected photos p, p + P, ...; → every photo's detections and size on every
  process (one all-gather of fixed-size arrays)."""
  from jax.experimental import multihost_utils
  hosts, me = jax.process_count(), jax.process_index()
  per_host = -(-total // hosts)
  table = np.zeros((per_host, max_faces, _RECORD_WIDTH), np.float32)
  meta = np.full((per_host, 4), -1, np.int32)     # count (-1: unreadable/padding), overflow, H, W
  for slot, i in enumerate(range(me, total, hosts)):
    faces = detections[i]
    if faces is None:
      continue
    n = len(faces)
    meta[slot] = (n, int(faces.overflow), *shapes[i])
    table[slot, :n] = np.concatenate([faces.scores[:, None], faces.boxes,
                                      faces.landmarks.reshape(n, 10)], axis=1)
  table, meta = (np.asarray(x) for x in multihost_utils.process_allgather((table, meta)))
  out: list[Faces | None] = [None] * total
  out_shapes: list[tuple[int, int] | None] = [None] * total
  for host in range(hosts):
    for slot, i in enumerate(range(host, total, hosts)):
      n, overflow, h, w = (int(v) for v in meta[host, slot])
      if n < 0:
        continue
      rec = table[host, slot, :n]
      out[i] = Faces(rec[:, 1:5], rec[:, 0], rec[:, 5:].reshape(-1, 5, 2), bool(overflow))
      out_shapes[i] = (h, w)
  return out, out_shapes


def photo_rows(paths: Sequence[str], names: Sequence[str], data: Any, channel_order: str = "rgb",
               size: int = preprocess.IMAGE_SIZE, progress: Callable[[int], None] | None = None
               ) -> PhotoRows:
  """Detects the faces of every photo (each process its share, then shared with all) and
  returns the rows to score: the primary face of each photo, or every face (`data.face`)."""
  face = check_face_mode(data.get("face", "primary"))
  config = config_from(data)
  detector = get_detector(config, data.get("detector_weights", "") or None,
                          int(data.get("detect_batch_size", 16)))
  total, hosts = len(paths), jax.process_count()
  mine = list(range(jax.process_index(), total, hosts))
  found, shapes, errors = detect_files([paths[i] for i in mine], detector,
                                       workers=int(data.get("decode_threads", 4)),
                                       progress=progress)
  detections: list[Faces | None] = [None] * total
  photo_shapes: list[tuple[int, int] | None] = [None] * total
  unreadable = {}
  for local, i in enumerate(mine):
    detections[i], photo_shapes[i] = found[local], shapes[local]
    if local in errors:
      unreadable[i] = errors[local]
  if hosts > 1:
    detections, photo_shapes = _gather_hosts(detections, photo_shapes, total,
                                             config.max_faces)
    for i in range(total):
      if detections[i] is None and i not in unreadable:
        unreadable[i] = "unreadable (reported by another host)"
  records, no_face = face_records(detections, [s or (0, 0) for s in photo_shapes], face)
  overflow = [names[i] for i, d in enumerate(detections) if d is not None and d.overflow]
  return PhotoRows(aligned_reader(paths, records, channel_order, size),
                   [names[r.image] for r in records], records, [names[i] for i in no_face],
                   overflow, unreadable)


# ------------------------------------------------------------------------------------------
# Builders: identity folders of raw photos (data/builders/image_folder.py, option align=detect)
# ------------------------------------------------------------------------------------------
def _aligned_png(path: str, landmarks: np.ndarray, name: str) -> bytes:
  from exfiqa_jax.data.builders import base
  try:
    return base.encode_png(align_lib.align_face(read_photo(path, name), landmarks))
  except ValueError as e:
    raise preprocess.ImageError(f"cannot align {name}: {e}") from e


def _no_face(name: str) -> bytes:
  raise NoFaceError(f"no face detected in {name}")


def align_entries(entries: Sequence[Any], detector: Detector | None = None,
                  face: str = "primary") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Builder entries (base.ImageEntry with a file path as source) → the same entries reading
  the aligned crop of their primary face instead (photos without a face raise NoFaceError
  when read: the builder leaves them out and lists them in no_face.txt), plus record arrays
  det_score [N], det_box [N, 4], det_landmarks [N, 5, 2] and metadata for exfiqa_info.json."""
  if face == "all":
    raise ValueError("a builder keeps one face per image; use face='primary', 'largest' or "
                     "'probability'")
  detector = detector or get_detector()
  paths = [os.fspath(e.source) for e in entries]
  detections, shapes, errors = detect_files(paths, detector)
  records, _ = face_records(detections, [s or (0, 0) for s in shapes], face)
  by_image = {r.image: r for r in records}
  score = np.zeros((len(entries),), np.float32)
  box = np.zeros((len(entries), 4), np.float32)
  landmarks = np.zeros((len(entries), 5, 2), np.float32)
  for i, entry in enumerate(entries):
    record = by_image.get(i)
    if record is not None:
      score[i], box[i], landmarks[i] = record.score, record.box, record.landmarks
      entry.source = functools.partial(_aligned_png, paths[i], record.landmarks, entry.name)
    elif i not in errors:     # unreadable files keep their path: the builder reports them
      entry.source = functools.partial(_no_face, entry.name)
  metadata = {"align": {"align": "detect", "face": face, "detector": detector.config.to_dict(),
                        "num_no_face": len(entries) - len(records) - len(errors),
                        "num_overflow": sum(bool(d and d.overflow) for d in detections)}}
  return {"det_score": score, "det_box": box, "det_landmarks": landmarks}, metadata
