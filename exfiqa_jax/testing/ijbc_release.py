"""A synthetic IJB-C-shaped release at any size fraction (bench/ijbc_scale.py, tests).

Writes what the IJB-C builder reads (exfiqa_jax/data/builders/ijbc.py, docs/data.md):

  <root>/loose_crop/<k>.jpg                 k = 1..I, loose crops of varying size
  <root>/meta/ijbc_name_5pts_score.txt      name + 5 landmarks (where the face really is) + faceness
  <root>/meta/ijbc_face_tid_mid.txt         name template_id media_id (same order)
  <root>/meta/ijbc_template_pair_label.txt  template_id_1 template_id_2 label

with the counts of the real release scaled by `fraction` (469,375 face lines, 23,124 templates,
3,531 subjects, 15,658,489 template pairs of which 19,557 genuine) and its structure: each
template mixes several media (stills, and runs of video frames that share a media id), the media
ids of a subject are shared by its templates, templates of a subject are compared with each other
(genuine) and with other subjects' (impostor). The pair count scales linearly with the fraction;
below full size the f·23,124 templates cannot hold 677 distinct partners each, so the impostor
list then repeats template pairs (every stage's cost depends on the number of lines, not on their
uniqueness). Content is synthetic (a per-subject pattern plus noise, placed by a random
similarity), everything deterministic in `seed`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os

import numpy as np
from PIL import Image

from exfiqa_jax import files
from exfiqa_jax.data import align

FULL = dict(images=469_375, templates=23_124, subjects=3_531, pairs=15_658_489, genuine=19_557)
NEW_MEDIA = 0.35      # chance that an image of a template starts a new media (mean run ≈ 2.9)
MEDIA_POOL = 10       # media ids per subject, drawn by its templates (shared across templates)


@dataclasses.dataclass(frozen=True)
class Structure:
  """The release's tables: per image its template id and media id; the pair list."""
  template_id: np.ndarray     # [I] raw template id of each face line
  media_id: np.ndarray        # [I]
  subject: np.ndarray         # [I] subject of each line (content only; not in the meta files)
  pair_a: np.ndarray          # [P] raw template ids
  pair_b: np.ndarray
  label: np.ndarray           # [P] 1 genuine, 0 impostor

  @property
  def num_images(self) -> int:
    return int(self.template_id.size)


def counts(fraction: float) -> dict[str, int]:
  """The real release's counts × fraction (at least 2 templates in 2 subjects, 4 images)."""
  f = float(fraction)
  if not 0 < f <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  out = {k: int(round(v * f)) for k, v in FULL.items()}
  out["templates"] = max(out["templates"], 4)
  out["subjects"] = min(max(out["subjects"], 2), out["templates"] // 2)
  out["images"] = max(out["images"], 2 * out["templates"])
  out["genuine"] = max(out["genuine"], 1)
  out["pairs"] = max(out["pairs"], 2 * out["genuine"], 8)
  return out


def structure(fraction: float, seed: int = 0) -> Structure:
  """Templates, media and pairs at `fraction` of the real size (vectorised, O(I + P))."""
  c = counts(fraction)
  rng = np.random.default_rng(seed)
  t, s, n = c["templates"], c["subjects"], c["images"]
  subject_of = np.arange(t) * s // t                  # contiguous, ≈ 6.5 templates per subject
  tids = np.sort(rng.choice(4 * t, t, replace=False)) + 1    # raw ids, sparse like the real ones
  weights = rng.lognormal(0.0, 1.0, t)               # heavy tail of images per template
  per_template = 1 + rng.multinomial(n - t, weights / weights.sum())
  template = np.repeat(np.arange(t), per_template)
  first = np.zeros(n, bool)
  first[np.concatenate([[0], np.cumsum(per_template)[:-1]])] = True
  new_media = first | (rng.random(n) < NEW_MEDIA)
  run = np.cumsum(new_media) - 1                      # one media run = a still or video frames
  run_subject = subject_of[template[new_media]]
  run_media = run_subject * MEDIA_POOL + rng.integers(0, MEDIA_POOL, run_subject.size)
  media = 1000 + run_media[run]
  # Genuine: pairs of templates of one subject; impostor: templates of different subjects.
  same = [(a, b) for subj_start, subj_stop in _runs(subject_of)
          for a in range(subj_start, subj_stop) for b in range(a + 1, subj_stop)]
  same = np.asarray(same, np.int64).reshape(-1, 2)
  g = min(c["genuine"], len(same))
  genuine = same[np.sort(rng.choice(len(same), g, replace=False))]
  m = c["pairs"] - g
  a = rng.integers(0, t, m)
  b = (a + rng.integers(1, t, m)) % t
  clash = subject_of[a] == subject_of[b]
  while clash.any():                                  # redraw partners until subjects differ
    b[clash] = (a[clash] + rng.integers(1, t, int(clash.sum()))) % t
    clash = subject_of[a] == subject_of[b]
  pairs = np.concatenate([genuine, np.stack([a, b], 1)])
  label = np.concatenate([np.ones(g, np.int8), np.zeros(m, np.int8)])
  order = np.lexsort((pairs[:, 1], pairs[:, 0]))      # the real list is sorted by template
  pairs, label = pairs[order], label[order]
  return Structure(tids[template], media.astype(np.int64), subject_of[template],
                   tids[pairs[:, 0]], tids[pairs[:, 1]], label)


def _runs(sorted_values: np.ndarray):
  """(start, stop) of each run of equal values."""
  edges = np.flatnonzero(np.diff(sorted_values)) + 1
  starts = np.concatenate([[0], edges])
  stops = np.concatenate([edges, [sorted_values.size]])
  return zip(starts.tolist(), stops.tolist())


def subject_bases(count: int, seed: int) -> np.ndarray:
  """`count` smooth 112×112 RGB patterns (float32), one per subject class."""
  rng = np.random.default_rng(seed + 1)
  ys, xs = np.mgrid[0:112, 0:112] / 112
  out = np.empty((count, 112, 112, 3), np.float32)
  for i in range(count):
    f = rng.uniform(2, 9, 3)
    p = rng.uniform(0, 6, 2)
    out[i] = 128 + 90 * np.stack([np.sin(xs * f[0] + p[0]), np.cos(ys * f[1] + p[1]),
                                  np.sin((xs + ys) * f[2])], -1)
  return out


def _crop(base: np.ndarray, seed: int) -> tuple[bytes, np.ndarray]:
  """One loose crop (JPEG bytes) and its 5 landmarks: the aligned face scaled and placed on a
  larger canvas, the landmarks following it."""
  rng = np.random.default_rng(seed)
  face = np.clip(base + rng.normal(0, 16, base.shape) + rng.uniform(-30, 30), 0, 255)
  scale = rng.uniform(1.0, 1.5)
  side = int(round(112 * scale))
  canvas = (int(side * rng.uniform(1.1, 1.5)), int(side * rng.uniform(1.1, 1.5)))
  offset = np.array([rng.integers(0, canvas[0] - side + 1), rng.integers(0, canvas[1] - side + 1)])
  image = Image.new("RGB", canvas, tuple(int(v) for v in rng.integers(0, 255, 3)))
  image.paste(Image.fromarray(face.astype(np.uint8)).resize((side, side), Image.BILINEAR),
              tuple(int(v) for v in offset))
  landmarks = align.arcface_template() * (side / 112.0) + offset
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=90)
  return buffer.getvalue(), landmarks


def write_release(root: str | os.PathLike, fraction: float, seed: int = 0, workers: int = 2,
                  num_bases: int = 64) -> dict[str, int]:
  """Writes the release under `root` (see the module docstring); returns its counts (images,
  templates, media, pairs, genuine, bytes). Deterministic: the same files for the same
  arguments, whatever `workers`."""
  root = os.fspath(root)
  st = structure(fraction, seed)
  crops, meta = os.path.join(root, "loose_crop"), os.path.join(root, "meta")
  os.makedirs(crops, exist_ok=True)
  os.makedirs(meta, exist_ok=True)
  bases = subject_bases(num_bases, seed)
  names = [f"{k + 1}.jpg" for k in range(st.num_images)]

  def one(k: int) -> np.ndarray:
    data, landmarks = _crop(bases[st.subject[k] % num_bases], seed * 1_000_003 + k)
    with open(os.path.join(crops, names[k]), "wb") as f:
      f.write(data)
    return landmarks

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    landmarks = np.stack(list(pool.map(one, range(st.num_images), chunksize=256)))
  faceness = np.round(np.random.default_rng(seed + 2).uniform(0.5, 1.0, st.num_images), 4)
  with open(os.path.join(meta, "ijbc_name_5pts_score.txt"), "w", encoding="utf-8") as f:
    for name, lm, fs in zip(names, landmarks.reshape(-1, 10), faceness):
      f.write(name + " " + " ".join(f"{v:.4f}" for v in lm) + f" {fs:.4f}\n")
  with open(os.path.join(meta, "ijbc_face_tid_mid.txt"), "w", encoding="utf-8") as f:
    f.writelines(f"{n} {t} {m}\n" for n, t, m in zip(names, st.template_id.tolist(),
                                                       st.media_id.tolist()))
  table = np.stack([st.pair_a, st.pair_b, st.label.astype(np.int64)], 1)
  with open(os.path.join(meta, "ijbc_template_pair_label.txt"), "w", encoding="utf-8") as f:
    for lo in range(0, len(table), 1 << 20):       # blocks: the full list is 15.7M lines
      f.write("".join(f"{a} {b} {g}\n" for a, b, g in table[lo:lo + (1 << 20)].tolist()))
  size = files.folder_bytes(root)
  return {"images": st.num_images, "templates": int(np.unique(st.template_id).size),
          "media": int(np.unique(np.stack([st.template_id, st.media_id]), axis=1).shape[1]),
          "pairs": int(st.label.size), "genuine": int(st.label.sum()), "bytes": int(size)}
