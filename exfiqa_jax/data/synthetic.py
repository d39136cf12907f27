"""Synthetic faces: the embedded-default benchmark (no downloads), rendered procedurally.

Every identity is a fixed draw of face parameters (head shape, skin tone, hair colour and style,
eyes, iris colour, brows, nose, mouth, lip colour, cheek marks, glasses, beard); every image of it
varies pose, expression and lighting a little and sits on a near-plain background — little
nuisance, so that what makes a comparison fail is the degradation, not the face (docs/demo.md).

Degradations (`degrade`) come with a recorded severity s in [0, 1] and one kind per image:
blur, noise, downscale (pixelation), occlusion, low light, JPEG artefacts. The damage grows as
s ** `gamma` (GAMMA = 1.0 by default) and is destructive at s = 1 (blur sigma 12 px, 12x
pixelation, noise sigma 0.45, darkening to x0.02 with sensor noise, q = 2 JPEG, most of the face
occluded). With half the images clean, recognition errors concentrate in the worst images — the
situation quality assessment is for. (A steeper curve, s ** 2.5, left mild degradations
invisible and harmless: the quality head could not rank them, Spearman 0.38 against 0.58.)

Splits are identity-disjoint ranges of one identity space: train [0, n_train), val, test after
it. Everything is a pure function of (seed, split, sizes): the same call renders the same bytes.
Rendering is jitted JAX on [N, 3, H, W]; the degradations are jitted JAX on NHWC, each run on
its own subset of rows only (≈ 600-700 images/s rendered and degraded on 2 cores); JPEG goes
through PIL.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

SIZE = 112
DEGRADATIONS = ("blur", "noise", "downscale", "occlusion", "low_light", "jpeg")
SPLITS = ("train", "val", "test")
GAMMA = 1.0          # damage = severity ** GAMMA (the demo's tuning: docs/demo.md, README)
CLEAN_FRACTION = 0.5  # share of undegraded images in a degraded split / training batch
_JPEG = DEGRADATIONS.index("jpeg")


# ------------------------------------------------------------------------------ parameters
def identity_params(seed: int, ids: Sequence[int]) -> dict[str, np.ndarray]:
  """Face parameters of global identities `ids` (each from its own stream: stable whatever the
  split sizes). Coordinates: x, y in [-1, 1] over the 112² crop, eyes near y = -0.1."""
  rows = []
  for i in ids:
    r = np.random.default_rng([seed, 7919, int(i)])
    skin = _skin_tone(r)
    hair = r.uniform(0.02, 0.95, 3) if r.random() < 0.6 else np.full(3, r.uniform(0.03, 0.6)) * (
        np.array([1.0, 0.8, 0.6]))
    rows.append(np.concatenate([
        [r.uniform(0.66, 0.84), r.uniform(0.86, 1.02), r.uniform(0.05, 0.16)],    # head ax ay cy
        skin, hair,
        [r.uniform(-0.78, -0.42), r.uniform(-0.4, 0.6), r.uniform(0.0, 1.0)],    # hairline,
                                                                                  # curve, sides
        [r.uniform(0.24, 0.36), r.uniform(-0.16, -0.04), r.uniform(0.09, 0.15),   # eye dx, y, w
         r.uniform(0.045, 0.075), r.uniform(0.35, 0.6)],                          # eye h, iris r
        r.uniform(0.05, 0.8, 3),                                                  # iris colour
        [r.uniform(0.1, 0.2), r.uniform(0.02, 0.05), r.uniform(-0.35, 0.35)],     # brow gap,
                                                                                  # thick, tilt
        [r.uniform(0.22, 0.38), r.uniform(0.05, 0.11), r.uniform(0.06, 0.13)],    # nose y, w, l
        [r.uniform(0.5, 0.66), r.uniform(0.14, 0.3), r.uniform(0.025, 0.06)],     # mouth y, w, h
        np.clip(skin * r.uniform(0.35, 0.7) + r.uniform(0.05, 0.3) * np.array([1, 0, 0]), 0, 1),
        [float(r.random() < 0.5), r.uniform(-0.5, 0.5), r.uniform(0.0, 0.45),     # mark on, x, y
         r.uniform(0.025, 0.06)],
        [float(r.random() < 0.35)], r.uniform(0.0, 0.9, 3),                       # glasses, colour
        [float(r.random() < 0.25), r.uniform(0.3, 0.9)],                          # beard, density
    ]))
  return _unpack(np.asarray(rows, np.float32))


_FIELDS = (("head", 3), ("skin", 3), ("hair", 3), ("hairstyle", 3), ("eye", 5), ("iris", 3),
           ("brow", 3), ("nose", 3), ("mouth", 3), ("lip", 3), ("mark", 4), ("glasses", 1),
           ("glass_colour", 3), ("beard", 2))


def _unpack(a: np.ndarray) -> dict[str, np.ndarray]:
  out, k = {}, 0
  for name, n in _FIELDS:
    out[name] = a[:, k:k + n]
    k += n
  return out


def _skin_tone(r: np.random.Generator) -> np.ndarray:
  t = r.uniform(0.0, 1.0)                      # dark ... light
  base = np.array([0.33, 0.2, 0.13]) + t * np.array([0.6, 0.58, 0.5])
  return np.clip(base + r.normal(0, 0.03, 3), 0.05, 0.98)


def image_variation(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
  """Per-image nuisance, deliberately weak: pose, expression, lighting, background."""
  return {
      "pose": np.stack([rng.normal(0, 2.0, n) * math.pi / 180,          # rotation
                        1 + rng.uniform(-0.04, 0.04, n),                  # scale
                        rng.normal(0, 0.015, n), rng.normal(0, 0.015, n)], 1),  # shift
      "expression": np.stack([rng.uniform(0.75, 1.0, n),                  # eye openness
                              rng.normal(0, 0.04, n),                     # smile
                              rng.uniform(0.8, 1.2, n)], 1),              # mouth height
      "light": np.stack([rng.uniform(0, 2 * math.pi, n), rng.uniform(0.0, 0.12, n),
                         rng.uniform(0.92, 1.06, n)], 1),                 # direction, depth, gain
      "background": np.clip(rng.uniform(0.55, 0.8, (n, 1)) + rng.normal(0, 0.03, (n, 3)), 0, 1),
  }


# ------------------------------------------------------------------------------ rendering
def _ellipse(x, y, cx, cy, ax, ay, edge):
  """Soft mask of an axis-aligned ellipse; `edge` in normalised units (≈ 1.5 px)."""
  d = jnp.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
  return jnp.clip((1.0 - d) * jnp.minimum(ax, ay) / edge + 0.5, 0.0, 1.0)


def _over(img, mask, colour):
  """Paints `colour` [N, 3] over img [N, 3, H, W] with alpha mask [N, H, W]."""
  m = mask[:, None]
  return img * (1 - m) + colour[:, :, None, None] * m


@jax.jit
def _render(p, v):
  n = p["head"].shape[0]
  edge = 1.5 / (SIZE / 2)
  g = (jnp.arange(SIZE, dtype=jnp.float32) + 0.5) / (SIZE / 2) - 1.0
  gy, gx = jnp.meshgrid(g, g, indexing="ij")
  # pose: face coordinates of every pixel (inverse similarity)
  rot, scale, tx, ty = (v["pose"][:, i, None, None] for i in range(4))
  xs, ys = gx[None] - tx, gy[None] - ty
  x = (jnp.cos(rot) * xs + jnp.sin(rot) * ys) / scale
  y = (-jnp.sin(rot) * xs + jnp.cos(rot) * ys) / scale
  c = lambda a, i: a[:, i, None, None]                                  # noqa: E731
  img = jnp.broadcast_to(v["background"][:, :, None, None], (n, 3, SIZE, SIZE))
  ax, ay, cy = c(p["head"], 0), c(p["head"], 1), c(p["head"], 2)
  hairline, curve, side = c(p["hairstyle"], 0), c(p["hairstyle"], 1), c(p["hairstyle"], 2)
  # long hair behind the head
  back = _ellipse(x, y, 0.0, cy - 0.05, ax * 1.16, ay * 1.08, edge)
  back = back * jnp.clip((-0.2 + 1.3 * side - y) / edge, 0, 1)
  img = _over(img, back, p["hair"] * 0.8)
  # head with weak directional light
  head = _ellipse(x, y, 0.0, cy, ax, ay, edge)
  phi, depth = c(v["light"], 0), c(v["light"], 1)
  shade = 1.0 + depth * (jnp.cos(phi) * x + jnp.sin(phi) * y) - 0.15 * (x / ax) ** 4
  skin = p["skin"][:, :, None, None] * shade[:, None]
  img = img * (1 - head[:, None]) + skin * head[:, None]
  # hair on top: inside a slightly larger head ellipse, above a curved hairline
  top = _ellipse(x, y, 0.0, cy - 0.04, ax * 1.07, ay * 1.06, edge)
  line = hairline + curve * x ** 2
  sides = (jnp.clip((jnp.abs(x) - ax * 0.86) / edge, 0, 1)
           * jnp.clip((-0.35 + side - y) / edge, 0, 1))
  img = _over(img, top * jnp.maximum(jnp.clip((line - y) / edge, 0, 1), sides), p["hair"])
  # beard
  beard = head * jnp.clip((y - (c(p["mouth"], 0) - 0.12)) / 0.05, 0, 1) * c(p["beard"], 0)
  img = _over(img, beard * c(p["beard"], 1), p["hair"] * 0.7)
  # eyes: sclera, iris, pupil; brows; glasses
  dx, ey, ew, eh, ir = (c(p["eye"], i) for i in range(5))
  openness = c(v["expression"], 0)
  gap, thick, tilt = c(p["brow"], 0), c(p["brow"], 1), c(p["brow"], 2)
  for sign in (-1.0, 1.0):
    ex = sign * dx
    img = _over(img, _ellipse(x, y, ex, ey, ew, eh * openness, edge), jnp.full((n, 3), 0.93))
    img = _over(img, _ellipse(x, y, ex, ey, ir * eh * 1.6, ir * eh * 1.6, edge)
                * _ellipse(x, y, ex, ey, ew, eh * openness, edge), p["iris"])
    img = _over(img, _ellipse(x, y, ex, ey, 0.4 * ir * eh * 1.6, 0.4 * ir * eh * 1.6, edge)
                * _ellipse(x, y, ex, ey, ew, eh * openness, edge), jnp.full((n, 3), 0.05))
    brow = _ellipse(x, y - sign * tilt * (x - ex) * 0.5, ex, ey - gap, ew * 1.15, thick, edge)
    img = _over(img, brow, p["hair"] * 0.6)
    ring = _ellipse(x, y, ex, ey, ew * 1.45, eh * 3.2, edge)
    inner = _ellipse(x, y, ex, ey, ew * 1.45 - 0.025, eh * 3.2 - 0.025, edge)
    img = _over(img, (ring - inner).clip(0, 1) * c(p["glasses"], 0), p["glass_colour"])
  bridge = (jnp.clip((0.035 - jnp.abs(y - ey + eh)) / edge, 0, 1)
            * jnp.clip((dx - ew * 1.4 - jnp.abs(x)) / edge, 0, 1))
  img = _over(img, bridge * c(p["glasses"], 0), p["glass_colour"])
  # nose: a darker ridge and two nostrils
  ny, nw, nl = (c(p["nose"], i) for i in range(3))
  img = _over(img, 0.45 * _ellipse(x, y, 0.0, ny - nl * 0.5, nw * 0.45, nl, edge),
              p["skin"] * 0.75)
  for sign in (-1.0, 1.0):
    img = _over(img, _ellipse(x, y, sign * nw * 0.55, ny + nl * 0.35, nw * 0.28, nw * 0.18, edge),
                p["skin"] * 0.35)
  # mouth with a smile
  my, mw, mh = (c(p["mouth"], i) for i in range(3))
  smile = c(v["expression"], 1)
  mouth = _ellipse(x, y + smile * (1 - (x / mw) ** 2), 0.0, my, mw, mh * c(v["expression"], 2),
                   edge)
  img = _over(img, mouth, p["lip"])
  # cheek mark
  on, mx, mky, mr = (c(p["mark"], i) for i in range(4))
  img = _over(img, on * _ellipse(x, y, mx, mky, mr, mr, edge), p["skin"] * 0.4)
  img = jnp.clip(img * c(v["light"], 2)[:, None], 0.0, 1.0)
  return jnp.round(jnp.transpose(img, (0, 2, 3, 1)) * 255.0).astype(jnp.uint8)


def render(seed: int, identities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Clean images uint8 [N, 112, 112, 3] of global identities `identities`, nuisance from rng."""
  identities = np.asarray(identities)
  n = len(identities)
  unique, inverse = np.unique(identities, return_inverse=True)
  var = image_variation(rng, n)
  pad = np.concatenate([np.arange(n), np.zeros(_bucket(n) - n, int)])   # few compiled shapes
  params = {k: a[inverse[pad]] for k, a in identity_params(seed, unique).items()}
  var = {k: np.asarray(a[pad], np.float32) for k, a in var.items()}
  return np.asarray(_render(params, var))[:n]


# ------------------------------------------------------------------------------ degradations
def sample_degradations(rng: np.random.Generator, n: int,
                        clean_fraction: float = CLEAN_FRACTION
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(severity float32 [n] in [0, 1], kind int32 [n]); a `clean_fraction` share has s = 0."""
  severity = rng.uniform(0.0, 1.0, n).astype(np.float32)
  severity[rng.random(n) < clean_fraction] = 0.0
  return severity, rng.integers(0, len(DEGRADATIONS), n).astype(np.int32)


def _gaussian_rows(sigma):
  """Per-image [N, S, S] Gaussian blur operators, rows renormalised at the borders."""
  i = jnp.arange(SIZE, dtype=jnp.float32)
  d2 = (i[:, None] - i[None, :]) ** 2
  s = jnp.maximum(sigma, 1e-3)[:, None, None]
  w = jnp.exp(-0.5 * d2[None] / s ** 2)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def _pixelate_rows(factor):
  """Per-image [N, S, S] operators: area-average to S/factor cells, nearest back up."""
  cells = jnp.maximum(jnp.round(SIZE / factor), 1.0)[:, None, None]
  i = (jnp.arange(SIZE, dtype=jnp.float32) + 0.5)[None, :, None]
  j = (jnp.arange(SIZE, dtype=jnp.float32) + 0.5)[None, None, :]
  same = jnp.floor(i * cells / SIZE) == jnp.floor(j * cells / SIZE)
  w = same.astype(jnp.float32)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def _is(kind, severity, name):
  return (kind == DEGRADATIONS.index(name)) & (severity > 0)


@functools.partial(jax.jit, static_argnames=("gamma",))
def _linear(img, severity, kind, gamma):
  """Blur and pixelation as per-image separable operators A·img·Aᵀ; img uint8 [N, S, S, 3]."""
  t = severity ** gamma
  eye = jnp.broadcast_to(jnp.eye(SIZE, dtype=jnp.float32), (img.shape[0], SIZE, SIZE))
  op = jnp.where(_is(kind, severity, "blur")[:, None, None], _gaussian_rows(0.3 + 11.7 * t), eye)
  op = jnp.where(_is(kind, severity, "downscale")[:, None, None], _pixelate_rows(1.0 + 11.0 * t),
                 op)
  out = jnp.einsum("nij,njkc,nlk->nilc", op, img.astype(jnp.float32), op)
  return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("gamma",))
def _pointwise(img, severity, kind, occluder, key, gamma):
  """Occlusion, low light and noise; img uint8 [N, S, S, 3]."""
  n = img.shape[0]
  t = (severity ** gamma)[:, None, None, None]
  x = img.astype(jnp.float32) / 255.0
  # occlusion: a coloured, textured rectangle over the face, area growing with t
  g = (jnp.arange(SIZE, dtype=jnp.float32) + 0.5) / (SIZE / 2) - 1.0
  half = 0.25 + 0.6 * t[:, :, :, 0]
  cx = occluder[:, 0, None, None] * (1 - half)
  cy = occluder[:, 1, None, None] * (1 - half)
  box = (jnp.abs(g[None, None, :] - cx) < half * 1.1) & (jnp.abs(g[None, :, None] - cy) < half)
  k1, k2 = jax.random.split(key)
  coarse = jax.random.normal(k1, (n, SIZE // 8, SIZE // 8, 3))
  texture = occluder[:, None, None, 2:5] + 0.1 * jnp.repeat(jnp.repeat(coarse, 8, 1), 8, 2)
  occlude = box & _is(kind, severity, "occlusion")[:, None, None]
  x = jnp.where(occlude[..., None], texture, x)
  # low light: darkening to x0.02 with sensor noise growing as the light falls (a normalising
  # network is blind to plain darkening until quantisation; the noise is what really hurts)
  dark = _is(kind, severity, "low_light")[:, None, None, None]
  x = jnp.where(dark, x * (1.0 - 0.98 * t), x)
  noise_sd = (jnp.where(_is(kind, severity, "noise")[:, None, None, None], 0.02 + 0.43 * t, 0.0)
              + jnp.where(dark, 0.05 * t, 0.0))
  x = x + noise_sd * jax.random.normal(k2, x.shape)
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def _bucket(n: int) -> int:
  """Padded batch sizes (powers of two from 16, then multiples of 512): few compilations."""
  return max(16, 1 << (n - 1).bit_length()) if n <= 512 else -(-n // 512) * 512


def _apply_subset(fn, images: np.ndarray, rows: np.ndarray, *per_row, **static) -> None:
  """images[rows] = fn(images[rows], *per_row[rows]) with rows padded to a bucket size."""
  if not len(rows):
    return
  pad = np.concatenate([rows, np.full(_bucket(len(rows)) - len(rows), rows[0])])
  out = fn(images[pad], *(a[pad] for a in per_row), **static)
  images[rows] = np.asarray(out)[:len(rows)]


def jpeg_quality(strength: float) -> int:
  """JPEG quality 95 at strength 0 falling steeply (flat cartoon faces survive q ≈ 40 intact)."""
  return int(round(2 + 93 * (1.0 - strength) ** 3))


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
  return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def degrade(images: np.ndarray, severity: np.ndarray, kind: np.ndarray,
            rng: np.random.Generator, gamma: float = GAMMA) -> np.ndarray:
  """Degraded copies of uint8 [N, 112, 112, 3] images; severity 0 leaves an image unchanged.
  Only the degraded rows are computed (each operator on its own subset)."""
  images = np.asarray(images)
  severity = np.asarray(severity, np.float32)
  kind = np.asarray(kind, np.int32)
  if images.dtype != np.uint8 or images.shape[1:] != (SIZE, SIZE, 3):
    raise ValueError(f"degrade expects uint8 [N, {SIZE}, {SIZE}, 3], got {images.dtype} "
                     f"{images.shape}")
  if not (len(images) == len(severity) == len(kind)):
    raise ValueError(f"{len(images)} images, {len(severity)} severities, {len(kind)} kinds")
  if np.any(~np.isfinite(severity)) or np.any((severity < 0) | (severity > 1)):
    raise ValueError("severity must lie in [0, 1]")
  if np.any((kind < 0) | (kind >= len(DEGRADATIONS))):
    raise ValueError(f"kind must index DEGRADATIONS {DEGRADATIONS}")
  n = len(images)
  occluder = np.concatenate([rng.uniform(-0.5, 0.5, (n, 2)), rng.uniform(0, 1, (n, 3))],
                            1).astype(np.float32)
  key = jax.random.key(int(rng.integers(0, 2 ** 31 - 1)))
  out = np.array(images)
  names = np.asarray(DEGRADATIONS)[kind]
  on = severity > 0
  linear = np.flatnonzero(on & np.isin(names, ("blur", "downscale")))
  _apply_subset(_linear, out, linear, severity, kind, gamma=float(gamma))
  pointwise = np.flatnonzero(on & np.isin(names, ("occlusion", "low_light", "noise")))
  if len(pointwise):
    _apply_subset(functools.partial(_pointwise, key=key), out, pointwise, severity, kind,
                  occluder, gamma=float(gamma))
  for i in np.flatnonzero(on & (kind == _JPEG)):
    out[i] = _jpeg(out[i], jpeg_quality(float(severity[i]) ** gamma))
  return out


# ------------------------------------------------------------------------------ data sets
@dataclasses.dataclass(frozen=True)
class SplitSizes:
  """Identities per split (disjoint ranges, in this order) and images per identity."""
  train: int = 200
  val: int = 20
  test: int = 100
  per_identity: int = 10

  def identity_range(self, split: str) -> range:
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    start = {"train": 0, "val": self.train, "test": self.train + self.val}[split]
    return range(start, start + getattr(self, split))


def config_sizes(data_config, split_per_identity: int | None = None) -> SplitSizes:
  """The identity split of a training config's data section (config.train.data; train / val /
  test identities are disjoint ranges), `split_per_identity` images per identity if given."""
  return SplitSizes(
      train=int(data_config.num_identities), val=int(data_config.eval_identities),
      test=int(data_config.get("test_identities", SplitSizes().test)),
      per_identity=int(split_per_identity or data_config.images_per_identity))


@dataclasses.dataclass
class FaceSet:
  """One rendered split: images uint8 [N, 112, 112, 3] with per-image ids and degradation."""
  images: np.ndarray
  label: np.ndarray          # [N] 0..identities-1 within the split
  identity: np.ndarray       # [N] global identity id
  severity: np.ndarray       # [N] float32 in [0, 1] (0 = clean)
  kind: np.ndarray           # [N] index into DEGRADATIONS (meaningless where severity = 0)
  names: list[str]


def make_split(seed: int, split: str, sizes: SplitSizes = SplitSizes(), degraded: bool = True,
               clean_fraction: float = CLEAN_FRACTION, gamma: float = GAMMA,
               chunk: int = 512) -> FaceSet:
  """Renders a split deterministically; `degraded=False` gives clean images (severity 0), as
  training with online re-degradation wants."""
  ids = np.repeat(np.asarray(sizes.identity_range(split)), sizes.per_identity)
  label = np.repeat(np.arange(getattr(sizes, split)), sizes.per_identity).astype(np.int32)
  rng = np.random.default_rng([seed, SPLITS.index(split), 104729])
  severity, kind = sample_degradations(rng, len(ids), clean_fraction if degraded else 1.0)
  images = np.empty((len(ids), SIZE, SIZE, 3), np.uint8)
  for lo in range(0, len(ids), chunk):
    hi = min(lo + chunk, len(ids))
    images[lo:hi] = render(seed, ids[lo:hi], rng)
    if degraded:
      images[lo:hi] = degrade(images[lo:hi], severity[lo:hi], kind[lo:hi], rng, gamma)
  names = [f"{split}/id{g:05d}/{k:04d}.png" for k, g in enumerate(ids)]
  return FaceSet(images, label, ids.astype(np.int64), severity, kind, names)


def make_pairs(label: np.ndarray, seed: int, impostors_per_genuine: float = 10.0
               ) -> tuple[np.ndarray, np.ndarray]:
  """All genuine pairs of a split and a seeded sample of impostor pairs (no duplicates):
  (pairs int64 [P, 2], is_genuine bool [P]), genuine first."""
  label = np.asarray(label)
  a, b = np.triu_indices(len(label), k=1)
  same = label[a] == label[b]
  gen = np.stack([a[same], b[same]], 1)
  imp_all = np.flatnonzero(~same)
  k = min(len(imp_all), int(round(impostors_per_genuine * len(gen))))
  pick = np.sort(np.random.default_rng([seed, 15485863]).choice(imp_all, k, replace=False))
  imp = np.stack([a[pick], b[pick]], 1)
  if not len(gen) or not len(imp):
    raise ValueError("a pair list needs at least two images of one identity and two identities")
  pairs = np.concatenate([gen, imp]).astype(np.int64)
  return pairs, np.concatenate([np.ones(len(gen), bool), np.zeros(len(imp), bool)])
