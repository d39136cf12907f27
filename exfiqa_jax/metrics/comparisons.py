"""The inputs of the EDC: pair quality, cosine comparison scores, IJB-C templates and the seeded
`random` reference quality.

Pair quality is min(q_a, q_b) (max for uncertainty scores); comparison scores are cosines of
L2-normalised embeddings, on device in fixed-shape chunks; IJB-C templates average each media's
images, sum the media and L2-normalise (docs/evaluation.md, "IJB-C templates").
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax.metrics.arrays import is_tracer


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = 1e-12) -> jnp.ndarray:
  """x / max(‖x‖, eps) along `axis` (the one normalisation of embeddings and class centres)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def random_quality(num_images: int, seed: int) -> np.ndarray:
  """The seeded `random` baseline column [I] (uniform, no ties): the reference every EDC of a
  quality score is read against (evaluation, training monitor)."""
  return np.random.default_rng([int(seed), 0x5EED]).random(num_images).astype(np.float32)


def pair_quality(quality_a, quality_b, uncertainty: bool = False):
  """min(q_a, q_b) (max for uncertainty scores such as PFE, docs/evaluation.md)."""
  xp = jnp if is_tracer(quality_a, quality_b) else np
  return xp.maximum(quality_a, quality_b) if uncertainty else xp.minimum(quality_a, quality_b)


def check_pairs(pairs, num_rows: int, what: str = "image"):
  """pairs as [P, 2] integer indices into `num_rows` rows: a float, bool or out-of-range index
  (negative included: it would silently take the last rows) is a ValueError. Traced pairs
  (under jit) are checked for shape and dtype only; see `image_to_pair_quality`."""
  traced = is_tracer(pairs)
  if not traced:
    pairs = np.asarray(pairs)
  if pairs.ndim != 2 or pairs.shape[1] != 2:
    raise ValueError(f"pairs must be [P, 2] {what} indices, got shape {tuple(pairs.shape)}")
  if not (jnp.issubdtype(pairs.dtype, jnp.integer) or (not traced and pairs.size == 0)):
    raise ValueError(f"pairs must be integer {what} indices, got dtype {pairs.dtype} (cast "
                     "with .astype(int) only if the values are whole numbers)")
  if not traced and pairs.size and (pairs.min() < 0 or pairs.max() >= num_rows):
    raise ValueError(f"pair indices must be in [0, {num_rows}) ({num_rows} {what}s), got range "
                     f"[{pairs.min()}, {pairs.max()}]")
  return pairs if traced else pairs.astype(np.int64, copy=False)


def image_to_pair_quality(image_quality, pairs, uncertainty: bool = False):
  """image_quality [S, I] (or [I]), pairs [P, 2] image indices → pair quality [S, P] (or [P]).

  Indices must be integers in [0, I) (ValueError otherwise, also under jit when the pairs are
  concrete). Pairs that are themselves traced cannot be checked on the host: an out-of-range
  index then gives a NaN pair quality instead of a clamped or wrapped one."""
  traced_q = is_tracer(image_quality)
  q = image_quality if traced_q else np.asarray(image_quality)
  if q.ndim < 1:
    raise ValueError(f"image_quality must be [I] or [S, I], got shape {tuple(q.shape)}")
  pairs = check_pairs(pairs, q.shape[-1])
  if is_tracer(pairs):
    n = q.shape[-1]
    q = jnp.asarray(q, jnp.float32)

    def take(idx):
      idx = jnp.where((idx < 0) | (idx >= n), n, idx)       # out of range → fill (NaN)
      return jnp.take(q, idx, axis=-1, mode="fill", fill_value=jnp.nan)
    return pair_quality(take(pairs[:, 0]), take(pairs[:, 1]), uncertainty)
  return pair_quality(q[..., pairs[:, 0]], q[..., pairs[:, 1]], uncertainty)


@jax.jit
def _cosine_chunk(feats, pairs):
  return jnp.sum(feats[pairs[:, 0]] * feats[pairs[:, 1]], axis=-1)


def pair_scores(embeddings, pairs, flip_embeddings=None, chunk_size: int = 1 << 15) -> np.ndarray:
  """Cosine comparison scores [P] for pairs [P, 2] of rows of embeddings [I, E], on device in
  chunks (fixed chunk shape: one compile). With flip_embeddings, the cosine of
  concat(L2n(e), L2n(e_flip)) = mean of the two cosines (CR-FIQA extract_emb.py, docs/evaluation.md)."""
  feats = l2_normalize(jnp.asarray(embeddings, jnp.float32))
  if flip_embeddings is not None:
    feats = l2_normalize(jnp.concatenate(
        [feats, l2_normalize(jnp.asarray(flip_embeddings, jnp.float32))], axis=-1))
  if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
    raise ValueError(f"chunk_size must be a whole number ≥ 1, got {chunk_size!r}")
  if is_tracer(pairs):
    raise TypeError("pair_scores runs on the host in fixed chunks; pass concrete pairs (numpy), "
                    "not traced ones")
  pairs = check_pairs(pairs, feats.shape[0], "embedding row")
  out = np.empty(pairs.shape[0], np.float32)
  chunk_size = max(1, min(chunk_size, pairs.shape[0]))
  for lo in range(0, pairs.shape[0], chunk_size):
    part = pairs[lo:lo + chunk_size].astype(np.int32)
    k = part.shape[0]
    if k < chunk_size:
      part = np.concatenate([part, np.zeros((chunk_size - k, 2), np.int32)])
    out[lo:lo + k] = np.asarray(_cosine_chunk(feats, jnp.asarray(part)))[:k]
  return out


@functools.partial(jax.jit, static_argnames=("num_groups", "num_templates"))
def aggregate_templates_dense(features, group_index, group_template, num_groups: int,
                              num_templates: int):
  """Segment ops (docs/evaluation.md): features [I, E]; group_index [I] = (template, media) group of
  each image; group_template [M] = template of each group → L2n(sum over media(mean over the
  media's images)) [T, E]."""
  f = jnp.asarray(features, jnp.float32)
  sums = jax.ops.segment_sum(f, group_index, num_groups)
  counts = jax.ops.segment_sum(jnp.ones((f.shape[0],), jnp.float32), group_index, num_groups)
  media = sums / jnp.maximum(counts, 1.0)[:, None]
  return l2_normalize(jax.ops.segment_sum(media, group_template, num_templates))


@functools.partial(jax.jit, static_argnames=("num_templates", "uncertainty"))
def template_quality_dense(image_quality, template_index, num_templates: int,
                           uncertainty: bool = False):
  """image_quality [..., I] → template quality [..., T]: min over images (max if uncertainty)."""
  q = jnp.moveaxis(jnp.asarray(image_quality, jnp.float32), -1, 0)
  if uncertainty:
    out = jax.ops.segment_max(q, template_index, num_templates)
  else:
    out = jax.ops.segment_min(q, template_index, num_templates)
  return jnp.moveaxis(out, 0, -1)


@dataclasses.dataclass(frozen=True)
class TemplateIndex:
  """Dense ids for raw IJB-C template/media ids (host side, once per dataset)."""
  templates: np.ndarray       # [T] raw template ids, sorted
  template_index: np.ndarray  # [I] dense template of each image
  group_index: np.ndarray     # [I] dense (template, media) group of each image
  group_template: np.ndarray  # [M] dense template of each group

  @classmethod
  def build(cls, template_ids, media_ids) -> "TemplateIndex":
    t = np.asarray(template_ids)
    m = np.asarray(media_ids)
    if t.shape != m.shape or t.ndim != 1:
      raise ValueError(f"template_ids {t.shape} and media_ids {m.shape} must be equal-length 1-D")
    templates, t_idx = np.unique(t, return_inverse=True)
    groups, g_idx = np.unique(np.stack([t_idx, m]), axis=1, return_inverse=True)
    return cls(templates, t_idx.astype(np.int32), g_idx.reshape(-1).astype(np.int32),
               groups[0].astype(np.int32))

  def pair_rows(self, template_pairs) -> np.ndarray:
    """Raw template-id pairs [P, 2] → dense rows [P, 2] (ValueError on unknown ids)."""
    tp = np.asarray(template_pairs)
    rows = np.searchsorted(self.templates, tp)
    rows = np.minimum(rows, self.templates.size - 1)
    if not np.all(self.templates[rows] == tp):
      raise ValueError("template pairs name templates that have no images in the image list")
    return rows.astype(np.int32)


def aggregate_templates(features, template_ids, media_ids) -> tuple[np.ndarray, TemplateIndex]:
  """IJB-C template features [T, E] (rows in sorted template-id order) and the index used."""
  index = TemplateIndex.build(template_ids, media_ids)
  out = aggregate_templates_dense(features, jnp.asarray(index.group_index),
                                  jnp.asarray(index.group_template), int(index.group_template.size),
                                  int(index.templates.size))
  return np.asarray(out), index


def template_quality(image_quality, index: TemplateIndex, uncertainty: bool = False) -> np.ndarray:
  """Template quality [..., T] = min over the template's images (max for uncertainty scores)."""
  return np.asarray(template_quality_dense(image_quality, jnp.asarray(index.template_index),
                                           int(index.templates.size), uncertainty))
