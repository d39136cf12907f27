"""5-point face alignment to the ArcFace 112×112 template, in plain NumPy.

What the IJB-C scripts do (docs/evaluation.md): a least-squares similarity transform
(Umeyama, = skimage `SimilarityTransform.estimate`) from the 5 detected landmarks to the
ArcFace template, then `cv2.warpAffine(img, M, (112, 112), borderValue=0)` (bilinear,
constant-0 border). Neither skimage nor OpenCV is a dependency here; this module
reproduces both in NumPy. The warp is float bilinear; OpenCV quantises sample positions
to 1/32 pixel, so results differ from cv2 by at most ~1 grey level.
"""
from __future__ import annotations

import numpy as np

# insightface `arcface_src` for a 96×112 crop: left eye, right eye, nose, left/right mouth corner.
ARCFACE_TEMPLATE_96 = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
     [62.7299, 92.2041]], dtype=np.float64)


def arcface_template(size: int = 112) -> np.ndarray:
  """Landmark template [5, 2] (x, y) for a square `size` crop.

  The insightface template is defined for 96×112; for 112×112 every x gets +8.0
  (docs/evaluation.md). Other sizes scale the 112 template (insightface `norm_crop` rule).
  """
  template = ARCFACE_TEMPLATE_96.copy()
  template[:, 0] += 8.0
  if size != 112:
    template *= size / 112.0
  return template


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (rotation, uniform scale, translation) with dst ≈ M @ [src; 1].

  `src`, `dst`: [N, 2] points (N ≥ 2). Returns the affine matrix [2, 3] (float64).
  Umeyama (1991), the algorithm of skimage `SimilarityTransform.estimate`, including its
  reflection handling; degenerate input (all points equal) raises ValueError.
  """
  src = np.asarray(src, dtype=np.float64)
  dst = np.asarray(dst, dtype=np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
    raise ValueError(f"similarity_transform needs two [N, 2] point sets with N >= 2, got "
                     f"{src.shape} and {dst.shape}")
  if not (np.isfinite(src).all() and np.isfinite(dst).all()):
    raise ValueError("similarity_transform: landmarks contain NaN or inf")
  n = src.shape[0]
  src_mean, dst_mean = src.mean(0), dst.mean(0)
  src_c, dst_c = src - src_mean, dst - dst_mean
  cov = dst_c.T @ src_c / n
  d = np.ones(2)
  if np.linalg.det(cov) < 0:
    d[1] = -1.0
  u, s, vt = np.linalg.svd(cov)
  rank = np.linalg.matrix_rank(cov)
  if rank == 0:
    raise ValueError("similarity_transform: degenerate landmarks (all points coincide)")
  if rank == 1:
    if np.linalg.det(u) * np.linalg.det(vt) > 0:
      rotation = u @ vt
    else:
      s_last = d[1]
      d[1] = -1.0
      rotation = u @ np.diag(d) @ vt
      d[1] = s_last
  else:
    rotation = u @ np.diag(d) @ vt
  src_var = src_c.var(0).sum()
  if src_var == 0:
    raise ValueError("similarity_transform: degenerate landmarks (zero spread)")
  scale = (s @ d) / src_var
  matrix = np.zeros((2, 3))
  matrix[:, :2] = scale * rotation
  matrix[:, 2] = dst_mean - scale * rotation @ src_mean
  return matrix


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int] | int = 112,
                border_value: float = 0.0) -> np.ndarray:
  """Bilinear affine warp like `cv2.warpAffine(image, matrix, (W, H), borderValue=0)`.

  `image` [H_in, W_in] or [H_in, W_in, C] (any numeric dtype), `matrix` [2, 3] mapping input
  (x, y) to output (x, y), `size` the output (W, H) or one int for a square. Pixel centres
  are at integer coordinates; a sample's neighbours outside the input count as
  `border_value` (cv2 BORDER_CONSTANT). Returns the input dtype (uint8 is rounded + clipped).
  """
  out_w, out_h = (size, size) if isinstance(size, (int, np.integer)) else size
  image = np.asarray(image)
  squeeze = image.ndim == 2
  src = image[..., None] if squeeze else image
  h, w = src.shape[:2]
  full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
  inverse = np.linalg.inv(full)[:2]
  ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
  sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
  sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
  x0 = np.floor(sx).astype(np.int64)
  y0 = np.floor(sy).astype(np.int64)
  compute = np.float32 if image.dtype == np.uint8 else np.float64  # uint8: rounded anyway
  fx = (sx - x0).astype(compute)[..., None]
  fy = (sy - y0).astype(compute)[..., None]
  # Pad by one border pixel on every side: neighbours just outside read the border value,
  # anything further out is clamped onto the padding (also the border value).
  channels = src.shape[2]
  padded = np.empty((h + 2, w + 2, channels), dtype=np.result_type(src.dtype, compute))
  padded[...] = border_value
  padded[1:-1, 1:-1] = src
  flat = padded.reshape(-1, channels)
  row0 = np.clip(y0 + 1, 0, h + 1) * (w + 2)
  row1 = np.clip(y0 + 2, 0, h + 1) * (w + 2)
  col0 = np.clip(x0 + 1, 0, w + 1)
  col1 = np.clip(x0 + 2, 0, w + 1)
  t00, t01, t10, t11 = flat[row0 + col0], flat[row0 + col1], flat[row1 + col0], flat[row1 + col1]
  top = t00 + fx * (t01 - t00)
  bottom = t10 + fx * (t11 - t10)
  out = top + fy * (bottom - top)
  if squeeze:
    out = out[..., 0]
  if image.dtype == np.uint8:
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out.astype(image.dtype)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
  """uint8 [H, W, 3] image + landmarks [5, 2] (pixels, template order) → [size, size, 3]."""
  landmarks = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
  matrix = similarity_transform(landmarks, arcface_template(size))
  return warp_affine(image, matrix, size)
