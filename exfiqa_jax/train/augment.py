"""The official "gridsample" training augmentation (docs/methods.md) as one jittable JAX function.

Per sample: with probability `gridsample_prob` (0.6) the gridsample pipeline, otherwise only a
horizontal flip (p 0.5). Gridsample (AdaFace/CVLFace `GridSampleAugmenter`, VF config values):
  1. similarity warp to 112² (cv2.warpPerspective of the CVLFace matrix: scale U[0.8, 1.2],
     rotation U[-20°, 20°] with prob 0.2, hflip 0.5, patch centre moved by
     px·sign·(56/scale - 56 + U[0, 0.1]·56)), bilinear, black border;
  2. cutout with prob 0.2: 5 % CoarseDropout (12-20 holes of 16×16 zeros), 95 % a
     RandomResizedCrop region (scale 0.2-1, ratio 3/4-4/3) kept on a black canvas;
  3. blur with prob 0.2: 8/10 down-up resize (side ratio U[0.2, 1]), 1/10 average blur
     k in 1..9, 1/10 Gaussian sigma U[0, 4];
  4. photometric RandAugment, 2 ops from {Identity, Brightness, Saturate, Contrast, Sharpness,
     Equalize, Grayscale} (Equalize/Grayscale re-drawn up to twice), magnitude bin U{5..22} of
     31 over [0, 0.9], random sign, factor 1 ± m (PIL semantics).
Output: float32 RGB in [-1, 1] ((x/255 - 0.5)/0.5).

Every per-sample random choice comes from the one key passed in (so a training step is a pure
function of (seed, step)). Blurs and resizes are separable linear operators built per sample as
a [112, 112] matrix A and applied as A · img · Aᵀ — one code path under vmap, no dynamic shapes.

Simplifications (documented, deliberate):
- Interpolations: cv2 cubic/Lanczos resizes are replaced by bilinear; INTER_AREA upscaling by
  bilinear; cv2's 1/32 fixed-point bilinear weights by exact float weights.
- The Gaussian blur kernel is truncated at radius min(ceil(3σ), 16) (imgaug derives the cv2
  kernel size slightly differently); borders reflect-101 like cv2.
- RandomResizedCrop draws 10 candidate boxes at once and takes the first valid one (torchvision
  loops); fallback is the whole image, as torchvision for these ratios.
- Images are rounded to uint8 levels after each stage (like the PIL/cv2 pipeline), but PIL's
  integer L conversion is done in float then rounded.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from exfiqa_jax.data import preprocess

N_OPS = 7  # Identity, Brightness, Saturate, Contrast, Sharpness, Equalize, Grayscale
_SIGNED = jnp.array([False, True, True, True, True, False, False])


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Defaults are the official VF `gridaug_params` (configs/ms1mv2_vit_s_qs.py)."""
  gridsample_prob: float = 0.6
  scale_min: float = 0.8
  scale_max: float = 1.2
  rot_prob: float = 0.2
  max_rot: float = 20.0
  hflip_prob: float = 0.5
  extra_offset: float = 0.1
  cutout_prob: float = 0.2
  blur_prob: float = 0.2
  blur_magnitude: float = 1.0
  photometric_num_ops: int = 2
  photometric_magnitude: int = 14
  photometric_magnitude_offset: int = 9
  photometric_num_magnitude_bins: int = 31

  @classmethod
  def from_config(cls, c: Any) -> "AugmentConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    d = dict(c) if not hasattr(c, "to_dict") else c.to_dict()
    unknown = set(d) - names - {"enabled"}
    if unknown:
      raise ValueError(f"unknown augmentation options {sorted(unknown)}; known: {sorted(names)}")
    return cls(**{k: v for k, v in d.items() if k in names})


def _q(x: jax.Array) -> jax.Array:
  """Back to uint8 levels (the reference pipeline stores uint8 between stages)."""
  return jnp.clip(jnp.round(x), 0.0, 255.0)


# ---------------------------------------------------------------------------- geometry
def warp_matrix(scale, angle_deg, hflip, px, py, signx, signy, extra, size: int) -> jax.Array:
  """CVLFace `generate_transform_cv2` for a square size×size input and output: [3, 3] src->dst."""
  c = float(size // 2)
  a = jnp.deg2rad(angle_deg)
  ca, sa = jnp.cos(-a), jnp.sin(-a)
  one, zero = jnp.ones(()), jnp.zeros(())

  def m(rows):
    return jnp.stack([jnp.stack(r) for r in rows])

  t_neg_c = m([[one, zero, -c * one], [zero, one, -c * one], [zero, zero, one]])
  rot = m([[ca, -sa, zero], [sa, ca, zero], [zero, zero, one]])
  t_pos_c = m([[one, zero, c * one], [zero, one, c * one], [zero, zero, one]])
  pad = ((size // 2) / scale - c + extra * c)
  tx = c + pad * signx * px
  ty = c + pad * signy * py
  t_patch = m([[one, zero, -tx], [zero, one, -ty], [zero, zero, one]])
  s = m([[scale, zero, zero], [zero, scale, zero], [zero, zero, one]])
  f = jnp.where(hflip, -1.0, 1.0)
  flip = m([[f, zero, zero], [zero, one, zero], [zero, zero, one]])
  to_out = m([[one, zero, size / 2 * one], [zero, one, size / 2 * one], [zero, zero, one]])
  return to_out @ flip @ s @ t_patch @ t_pos_c @ rot @ t_neg_c


def warp_image(img: jax.Array, src_to_dst: jax.Array) -> jax.Array:
  """cv2.warpPerspective(img, M, (W, H), INTER_LINEAR, borderValue=0) for img [H, W, C] float."""
  h, w, _ = img.shape
  inv = jnp.linalg.inv(src_to_dst)
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  pts = jnp.stack([xs, ys, jnp.ones_like(xs)], -1) @ inv.T
  sx, sy = pts[..., 0] / pts[..., 2], pts[..., 1] / pts[..., 2]
  x0, y0 = jnp.floor(sx), jnp.floor(sy)
  wx, wy = sx - x0, sy - y0
  out = 0.0
  for dy, wgt_y in ((0, 1.0 - wy), (1, wy)):
    for dx, wgt_x in ((0, 1.0 - wx), (1, wx)):
      xi, yi = (x0 + dx).astype(jnp.int32), (y0 + dy).astype(jnp.int32)
      inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      v = img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
      out = out + jnp.where(inside[..., None], v, 0.0) * (wgt_y * wgt_x)[..., None]
  return out


# ------------------------------------------------------------------------------ cutout
def _cutout(key, img: jax.Array) -> jax.Array:
  """95 %: keep a RandomResizedCrop box on black; 5 %: 12-20 zero holes of 16×16."""
  h, w, _ = img.shape
  k = jax.random.split(key, 8)
  # RandomResizedCrop box: 10 candidates, first valid wins, else the whole image.
  area = h * w * jax.random.uniform(k[0], (10,), minval=0.2, maxval=1.0)
  log_r = jax.random.uniform(k[1], (10,), minval=math.log(3 / 4), maxval=math.log(4 / 3))
  ar = jnp.exp(log_r)
  bw = jnp.round(jnp.sqrt(area * ar)).astype(jnp.int32)
  bh = jnp.round(jnp.sqrt(area / ar)).astype(jnp.int32)
  ok = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
  first = jnp.argmax(ok)
  any_ok = jnp.any(ok)
  bw = jnp.where(any_ok, bw[first], w)
  bh = jnp.where(any_ok, bh[first], h)
  i = jnp.floor(jax.random.uniform(k[2]) * (h - bh + 1)).astype(jnp.int32)
  j = jnp.floor(jax.random.uniform(k[3]) * (w - bw + 1)).astype(jnp.int32)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  keep_box = (rows >= i) & (rows < i + bh) & (cols >= j) & (cols < j + bw)
  # CoarseDropout: 12..20 holes, 16×16, top-left uniform over valid positions.
  n_holes = jax.random.randint(k[4], (), 12, 21)
  hy = jax.random.randint(k[5], (20,), 0, h - 16 + 1)
  hx = jax.random.randint(k[6], (20,), 0, w - 16 + 1)
  active = jnp.arange(20) < n_holes
  in_hole = ((rows[None] >= hy[:, None, None]) & (rows[None] < hy[:, None, None] + 16)
             & (cols[None] >= hx[:, None, None]) & (cols[None] < hx[:, None, None] + 16)
             & active[:, None, None])
  keep_holes = ~jnp.any(in_hole, axis=0)
  coarse = jax.random.uniform(k[7]) < 0.05
  keep = jnp.where(coarse, keep_holes, keep_box)
  return img * keep[..., None]


# -------------------------------------------------------------------------------- blur
def _reflect101(idx: jax.Array, n: int) -> jax.Array:
  idx = jnp.abs(idx)
  return jnp.where(idx > n - 1, 2 * (n - 1) - idx, idx)


def _conv_matrix(weights: jax.Array, offsets: jax.Array, n: int) -> jax.Array:
  """[n, n] operator: out[x] = sum_o weights[o] * in[reflect101(x + o)]."""
  x = jnp.arange(n)
  idx = _reflect101(x[None, :] + offsets[:, None], n)          # [O, n]
  onehot = jax.nn.one_hot(idx, n, dtype=jnp.float32)            # [O, n, n]
  return jnp.einsum("o,oxy->xy", weights, onehot)


def box_matrix(k: jax.Array, n: int) -> jax.Array:
  """cv2.blur with a k×k box (anchor k//2), reflect-101 borders, k in 1..9."""
  offsets = jnp.arange(-4, 5)
  lo = -(k // 2)
  hi = k - 1 - k // 2
  wts = jnp.where((offsets >= lo) & (offsets <= hi), 1.0 / k, 0.0)
  return _conv_matrix(wts, offsets, n)


def gaussian_matrix(sigma: jax.Array, n: int) -> jax.Array:
  """Separable Gaussian, radius min(ceil(3 sigma), 16); sigma < 0.01 is the identity."""
  offsets = jnp.arange(-16, 17)
  radius = jnp.minimum(jnp.ceil(3.0 * sigma), 16.0)
  s = jnp.maximum(sigma, 1e-3)
  wts = jnp.where(jnp.abs(offsets) <= radius, jnp.exp(-0.5 * (offsets / s) ** 2), 0.0)
  wts = wts / jnp.sum(wts)
  ident = (offsets == 0).astype(jnp.float32)
  return _conv_matrix(jnp.where(sigma < 0.01, ident, wts), offsets, n)


def _interp_rows(src_pos: jax.Array, n_src: jax.Array, size: int) -> jax.Array:
  """Rows of linear interpolation weights at positions src_pos (clamped to [0, n_src-1])."""
  pos = jnp.clip(src_pos, 0.0, (n_src - 1).astype(jnp.float32))
  i0 = jnp.floor(pos).astype(jnp.int32)
  i1 = jnp.minimum(i0 + 1, n_src - 1)
  w1 = pos - i0
  return (jax.nn.one_hot(i0, size) * (1.0 - w1)[:, None] + jax.nn.one_hot(i1, size) * w1[:, None])


def resize_matrix(small: jax.Array, down_mode: jax.Array, up_mode: jax.Array, n: int) -> jax.Array:
  """cv2 resize n -> small -> n as one [n, n] operator (rows of the small image beyond `small`
  are zero). down_mode / up_mode: 0 nearest, 1 linear, 2 area (area only for the down step)."""
  j = jnp.arange(n, dtype=jnp.float32)       # small-image index (only j < small used)
  x = jnp.arange(n, dtype=jnp.float32)       # full-image index
  small_f = small.astype(jnp.float32)
  r = n / small_f                            # > 1
  # down: D [n(small), n(full)]
  d_near = jax.nn.one_hot(jnp.minimum(jnp.floor(j * r), n - 1).astype(jnp.int32), n)
  d_lin = _interp_rows((j + 0.5) * r - 0.5, jnp.asarray(n), n)
  lo = jnp.maximum(j[:, None] * r, x[None, :])
  hi = jnp.minimum((j[:, None] + 1) * r, x[None, :] + 1)
  d_area = jnp.maximum(hi - lo, 0.0) / r
  down = jnp.select([down_mode == 0, down_mode == 1], [d_near, d_lin], d_area)
  down = down * (j < small_f)[:, None]
  # up: U [n(full), n(small)]
  u_near = jax.nn.one_hot(jnp.minimum(jnp.floor(x / r), small_f - 1).astype(jnp.int32), n)
  u_lin = _interp_rows((x + 0.5) / r - 0.5, small, n)
  up = jnp.where(up_mode == 0, u_near, u_lin)
  return up @ down


_CV2_TO_MODE = jnp.array([0, 1, 2, 1, 1])   # NEAREST, LINEAR, AREA, CUBIC≈linear, LANCZOS4≈linear


def _blur(key, img: jax.Array, magnitude: float) -> jax.Array:
  n = img.shape[0]
  k = jax.random.split(key, 6)
  method = jax.random.randint(k[0], (), 0, 10)          # 0 avg, 1 gaussian, 2..9 resize
  box_k = jax.random.randint(k[1], (), 1, max(int(10 * magnitude), 2))
  sigma = jax.random.uniform(k[2]) * 4.0 * magnitude
  side = jax.random.uniform(k[3], minval=1.0 - 0.8 * magnitude, maxval=1.0)
  small = jnp.maximum((side * n).astype(jnp.int32), 1)
  interp = jax.random.randint(k[4], (2,), 0, 5)
  a = jnp.select([method == 0, method == 1],
                 [box_matrix(box_k, n), gaussian_matrix(sigma, n)],
                 resize_matrix(small, _CV2_TO_MODE[interp[0]],
                               jnp.minimum(_CV2_TO_MODE[interp[1]], 1), n))
  return jnp.einsum("ij,jkc,lk->ilc", a, img, a, precision=jax.lax.Precision.HIGHEST)


# ------------------------------------------------------------------------- photometric
def _gray(img: jax.Array) -> jax.Array:
  """PIL "L": 0.299 R + 0.587 G + 0.114 B, rounded -> [H, W, 1]."""
  return jnp.round(img @ jnp.array([0.299, 0.587, 0.114]))[..., None]


def _blend(degenerate, img, factor):
  return _q(degenerate + factor * (img - degenerate))


def _sharpness_degenerate(img: jax.Array) -> jax.Array:
  """PIL SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]]/13), border pixels unchanged."""
  p = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
  h, w, _ = img.shape
  acc = 4.0 * img
  for dy in range(3):
    for dx in range(3):
      acc = acc + p[dy:dy + h, dx:dx + w]
  smooth = _q(acc / 13.0)
  border = jnp.zeros((h, w), bool).at[0].set(True).at[-1].set(True).at[:, 0].set(True).at[
      :, -1].set(True)
  return jnp.where(border[..., None], img, smooth)


def equalize_channel(ch: jax.Array) -> jax.Array:
  """PIL ImageOps.equalize for one uint8-valued channel [H, W]."""
  idx = ch.astype(jnp.int32).reshape(-1)
  hist = jnp.zeros(256, jnp.int32).at[idx].add(1)
  last = jnp.max(jnp.where(hist > 0, jnp.arange(256), -1))
  nonzero = jnp.sum(hist > 0)
  step = (jnp.sum(hist) - hist[last]) // 256
  csum = jnp.cumsum(hist) - hist
  lut = jnp.clip((step // 2 + csum) // jnp.maximum(step, 1), 0, 255)
  lut = jnp.where((nonzero <= 1) | (step == 0), jnp.arange(256), lut)
  return lut[idx].reshape(ch.shape).astype(ch.dtype)


def apply_op(img: jax.Array, op: jax.Array, magnitude: jax.Array) -> jax.Array:
  """One PhotometricRandAugment op on a [H, W, 3] image with uint8 levels (float)."""
  f = 1.0 + magnitude
  gray = _gray(img)
  outs = [
      img,                                                               # Identity
      _q(img * f),                                                       # Brightness
      _blend(gray, img, f),                                              # Saturate
      _blend(jnp.floor(jnp.mean(gray) + 0.5), img, f),                   # Contrast
      _blend(_sharpness_degenerate(img), img, f),                        # Sharpness
      jax.vmap(equalize_channel, in_axes=2, out_axes=2)(img),           # Equalize
      jnp.broadcast_to(gray, img.shape),                                 # Grayscale
  ]
  return jnp.select([op == i for i in range(N_OPS - 1)], outs[:-1], outs[-1])


def _sample_op(key, cfg: AugmentConfig) -> tuple[jax.Array, jax.Array]:
  k = jax.random.split(key, 5)
  op = jax.random.randint(k[0], (), 0, N_OPS)
  for kk in (k[1], k[2]):                      # Equalize/Grayscale are re-drawn (twice at most)
    op = jnp.where(op >= 5, jax.random.randint(kk, (), 0, N_OPS), op)
  lo = cfg.photometric_magnitude - cfg.photometric_magnitude_offset
  hi = cfg.photometric_magnitude + cfg.photometric_magnitude_offset
  idx = jnp.clip(jax.random.randint(k[3], (), lo, hi), 0, cfg.photometric_num_magnitude_bins - 1)
  mag = idx * 0.9 / (cfg.photometric_num_magnitude_bins - 1)
  negative = _SIGNED[op] & jax.random.bernoulli(k[4])
  return op, jnp.where(negative, -mag, mag)


# ---------------------------------------------------------------------------- pipeline
def augment_image(key: jax.Array, image: jax.Array, cfg: AugmentConfig) -> jax.Array:
  """One image [H, W, 3] with values 0..255 -> augmented float [H, W, 3] in 0..255."""
  img = image.astype(jnp.float32)
  n = img.shape[0]
  k = jax.random.split(key, 16)
  if cfg.gridsample_prob <= 0:   # flip only (CR-FIQA): the same draw as below, no dead branch
    return jnp.where(jax.random.uniform(k[13]) < 0.5, img[:, ::-1], img)
  # gridsample branch
  scale = jax.random.uniform(k[0], minval=cfg.scale_min, maxval=cfg.scale_max)
  angle = jnp.where(jax.random.uniform(k[1]) < cfg.rot_prob,
                    jax.random.uniform(k[2], minval=-cfg.max_rot, maxval=cfg.max_rot), 0.0)
  hflip = jax.random.uniform(k[3]) < cfg.hflip_prob
  px, py = jax.random.uniform(k[4]), jax.random.uniform(k[5])
  signs = jnp.where(jax.random.bernoulli(k[6], shape=(2,)), -1.0, 1.0)
  extra = jax.random.uniform(k[7], maxval=cfg.extra_offset)
  m = warp_matrix(scale, angle, hflip, px, py, signs[0], signs[1], extra, n)
  g = _q(warp_image(img, m))
  g = jnp.where(jax.random.uniform(k[8]) < cfg.cutout_prob, _cutout(k[9], g), g)
  g = jnp.where(jax.random.uniform(k[10]) < cfg.blur_prob, _q(_blur(k[11], g, cfg.blur_magnitude)),
                g)
  for kk in jax.random.split(k[12], cfg.photometric_num_ops):
    op, mag = _sample_op(kk, cfg)
    g = apply_op(g, op, mag)
  # flip-only branch
  plain = jnp.where(jax.random.uniform(k[13]) < 0.5, img[:, ::-1], img)
  return jnp.where(jax.random.uniform(k[14]) < cfg.gridsample_prob, g, plain)


def augment_batch(key: jax.Array, images: jax.Array, cfg: AugmentConfig | None) -> jax.Array:
  """images uint8/float [B, H, W, 3] in 0..255 -> float32 [B, H, W, 3] in [-1, 1].

  cfg None: no augmentation, only the [-1, 1] scaling. Each sample uses fold_in(key, index).
  """
  x = images.astype(jnp.float32)
  if cfg is not None:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(x.shape[0]))
    x = jax.vmap(lambda kk, im: augment_image(kk, im, cfg))(keys, x)
  return preprocess.normalize(x)
