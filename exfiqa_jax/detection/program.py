"""The MTCNN detector as one batched program under `jit` (docs/data.md, "Raw photos: detection
and alignment"): photos of one size in, per photo the faces' boxes, scores and five landmarks
(left eye, right eye, nose, left and right mouth corner, the ArcFace template's order) out.

It follows the facenet-pytorch 2.6.0 MTCNN (`detect_face`, MIT) step by step, with its weights
(convert/mtcnn_keys.py) and its defaults (detection/settings.py). One compiled program per image
size (a "bucket") and batch: the whole batch goes through
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

Differences from the reference (tests/test_detection.py measures them): the networks' float
rounding (~1e-6), products fused into FMAs by XLA (a box coordinate may differ in its last
bit), and ties in score, broken by list position here (the reference's last NMS uses an
unstable sort). Crops hanging over the image edge are clamped as in the reference (not
zero-padded as in the original MTCNN).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from exfiqa_jax.detection.settings import DetectorConfig
from exfiqa_jax.models import mtcnn


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float
                   ) -> list[float]:
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


def _pnet_maps(variables: dict, sat: jax.Array, plan: _Plan, precision: str
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The P-Net over every pyramid level of the batch's tables → probabilities [B, L, P]
  (−inf past a level's end), offsets [B, L, P, 4] and each level's map width [L]."""
  batch = sat.shape[0]
  pnet = mtcnn.PNet(precision)
  probs, regs, widths = [], [], []
  for hs, ws in plan.sizes:
    level = area_resize(sat, plan.height, plan.width, hs, ws)
    reg, prob = pnet.apply(variables, _normalize(level))
    probs.append(prob[..., 1].reshape(batch, -1))
    regs.append(reg.reshape(batch, -1, 4))
    widths.append(prob.shape[2])
  cells = max(p.shape[1] for p in probs)
  probs = jnp.stack([jnp.pad(p, ((0, 0), (0, cells - p.shape[1])), constant_values=-jnp.inf)
                     for p in probs], axis=1)                                # [B, L, P]
  regs = jnp.stack([jnp.pad(r, ((0, 0), (0, cells - r.shape[1]), (0, 0))) for r in regs],
                   axis=1)                                                   # [B, L, P, 4]
  return probs, regs, jnp.asarray(widths, jnp.int32)


def _stage1(probs: jax.Array, regs: jax.Array, *, widths: jax.Array, edges: tuple, k: int,
            config: DetectorConfig):
  """One image's P-Net maps → the squared boxes into the R-Net [max_rnet, 4], their P-Net
  scores, validity, and whether a list cap was hit: top-k cells per level, NMS 0.5 per level,
  0.7 across levels, the P-Net's regression."""
  boxes, scores, regs, valid, counts = _cells(probs, regs, widths, edges, config.thresholds[0],
                                              k)
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


def _stage2(boxes: jax.Array, valid: jax.Array, ok: jax.Array, score: jax.Array,
            reg: jax.Array, *, config: DetectorConfig):
  """One image's R-Net results → the squared boxes into the O-Net [max_onet, 4], their R-Net
  scores, validity, and whether the list cap was hit (P > 0.7, NMS 0.7, regression)."""
  passed = valid & ok & (score > config.thresholds[1])
  order = _priority(score, passed)
  boxes, passed, score, reg = boxes[order], passed[order], score[order], reg[order]
  keep = nms_sorted(boxes, passed, 0.7, "union")
  pick, valid = _compact(keep, config.max_onet)
  return (_rerec(_bbreg(boxes[pick], reg[pick])), score[pick], valid,
          jnp.sum(keep) > config.max_onet)


def _stage3(boxes: jax.Array, valid: jax.Array, ok: jax.Array, score: jax.Array,
            reg: jax.Array, points: jax.Array, *, config: DetectorConfig):
  """One image's O-Net results → the faces [max_faces] by score: boxes, scores, landmarks
  [max_faces, 5, 2], validity, and whether the list cap was hit (P > 0.7, regression, NMS 0.7
  over the smaller box)."""
  passed = valid & ok & (score > config.thresholds[2])
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
  if not plan.scales:
    return _empty_outputs(batch, config)
  sat = summed_area_table(images)
  probs, regs, widths = _pnet_maps(variables["pnet"], sat, plan, config.precision)
  edges = tuple(jnp.asarray(e) for e in cell_edges(plan.scales, max(height, width)))
  k = min(config.max_per_scale, probs.shape[2])
  boxes1, scores1, valid1, overflow = jax.vmap(functools.partial(
      _stage1, widths=widths, edges=edges, k=k, config=config))(probs, regs)
  rnet = mtcnn.RNet(config.precision)
  (reg2, probs2), ran1, dropped1 = _run_pooled(
      lambda x: rnet.apply(variables["rnet"], x), sat, boxes1, valid1, 24,
      pool_size(batch, config.max_rnet, config.rnet_share), height, width)
  score2 = probs2[..., 1]
  boxes2, scores2, valid2, overflow2 = jax.vmap(functools.partial(_stage2, config=config))(
      boxes1, valid1, ran1, score2, reg2)
  onet = mtcnn.ONet(config.precision)
  (reg3, points3, probs3), ran2, dropped2 = _run_pooled(
      lambda x: onet.apply(variables["onet"], x), sat, boxes2, valid2, 48,
      pool_size(batch, config.max_onet, config.onet_share), height, width)
  score3 = probs3[..., 1]
  boxes3, scores3, landmarks3, valid3, overflow3 = jax.vmap(functools.partial(
      _stage3, config=config))(boxes2, valid2, ran2, score3, reg3, points3)
  zero = lambda x, v: jnp.where(v.reshape(v.shape + (1,) * (x.ndim - v.ndim)), x, 0)  # noqa
  return {"boxes": zero(boxes3, valid3), "scores": zero(scores3, valid3),
          "landmarks": zero(landmarks3, valid3), "valid": valid3,
          "overflow": overflow | overflow2 | overflow3 | dropped1 | dropped2,
          "stage1_boxes": zero(boxes1, valid1), "stage1_scores": zero(scores1, valid1),
          "stage1_valid": valid1, "rnet_scores": zero(score2, valid1),
          "stage2_boxes": zero(boxes2, valid2), "stage2_scores": zero(scores2, valid2),
          "stage2_valid": valid2, "onet_scores": zero(score3, valid2)}
