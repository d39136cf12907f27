"""Face alignment: Umeyama similarity and the cv2-style bilinear warp against independent references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exfiqa_jax.data import align


def _similarity(scale, angle, tx, ty):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def _apply(matrix, points):
  return points @ matrix[:, :2].T + matrix[:, 2]


def test_template_is_insightface_arcface_112():
  # insightface `arcface_dst` for 112x112 (norm_crop), written out independently.
  expected = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                       [41.5493, 92.3655], [70.7299, 92.2041]])
  np.testing.assert_allclose(align.arcface_template(112), expected, atol=1e-12)
  np.testing.assert_allclose(align.arcface_template(224), expected * 2, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_known_similarity_is_recovered(seed):
  rng = np.random.default_rng(seed)
  truth = _similarity(rng.uniform(0.3, 3.0), rng.uniform(-np.pi, np.pi), *rng.uniform(-50, 50, 2))
  src = rng.uniform(0, 200, (5, 2))
  matrix = align.similarity_transform(src, _apply(truth, src))
  np.testing.assert_allclose(matrix, truth, atol=1e-9)


def test_least_squares_matches_closed_form_on_noisy_points():
  # Independent reference: linear least squares in the (a, b, tx, ty) parametrisation
  # x' = a x - b y + tx, y' = b x + a y + ty (the unconstrained optimum is a similarity).
  rng = np.random.default_rng(7)
  src = rng.uniform(0, 150, (5, 2))
  dst = _apply(_similarity(0.7, 0.4, 12.0, -3.0), src) + rng.normal(0, 2.0, (5, 2))
  rows, rhs = [], []
  for (x, y), (u, v) in zip(src, dst):
    rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    rhs += [u, v]
  a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
  expected = np.array([[a, -b, tx], [b, a, ty]])
  np.testing.assert_allclose(align.similarity_transform(src, dst), expected, atol=1e-9)


def test_degenerate_landmarks_raise():
  with pytest.raises(ValueError, match="degenerate"):
    align.similarity_transform(np.ones((5, 2)), align.arcface_template())
  with pytest.raises(ValueError, match="NaN"):
    align.similarity_transform(np.full((5, 2), np.nan), align.arcface_template())


def _torch_warp(image, matrix, out_w, out_h):
  """Independent reference: torch grid_sample (bilinear, zero padding, align_corners=True)."""
  h, w = image.shape[:2]
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
  sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
  sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
  grid = np.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], -1)[None]
  inp = torch.from_numpy(image.astype(np.float64).transpose(2, 0, 1)[None])
  out = torch.nn.functional.grid_sample(inp, torch.from_numpy(grid), mode="bilinear",
                                        padding_mode="zeros", align_corners=True)
  return out[0].numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("seed", range(3))
def test_warp_matches_grid_sample(seed):
  rng = np.random.default_rng(seed)
  image = rng.uniform(1, 255, (57, 64, 3))  # float input: no rounding
  # A transform that maps part of the output outside the input (border handling counts).
  matrix = _similarity(rng.uniform(0.8, 1.6), rng.uniform(-0.6, 0.6), *rng.uniform(-10, 20, 2))
  ours = align.warp_affine(image, matrix, (48, 40))
  ref = _torch_warp(image, matrix, 48, 40)
  assert (ref == 0).any() and (ref > 0).mean() > 0.3  # both regions exercised
  np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_warp_of_linear_ramp_is_exact():
  # Bilinear interpolation reproduces a linear function exactly inside the image.
  h, w = 80, 90
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
  ramp = np.stack([2 * xs + 3 * ys + 1, xs - ys + 100, 0.5 * xs + 7], -1)
  matrix = _similarity(1.3, 0.3, -5.0, 8.0)
  out = align.warp_affine(ramp, matrix, 64)
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  oy, ox = np.mgrid[0:64, 0:64].astype(np.float64)
  sx = inverse[0, 0] * ox + inverse[0, 1] * oy + inverse[0, 2]
  sy = inverse[1, 0] * ox + inverse[1, 1] * oy + inverse[1, 2]
  inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
  expected = np.stack([2 * sx + 3 * sy + 1, sx - sy + 100, 0.5 * sx + 7], -1)
  assert inside.mean() > 0.5
  np.testing.assert_allclose(out[inside], expected[inside], atol=1e-9)
  far = (sx < -1) | (sx > w) | (sy < -1) | (sy > h)
  assert far.any() and (out[far] == 0).all()


def test_align_face_puts_landmarks_on_template():
  # Draw bright dots at known landmarks of an image made by a known similarity; after alignment
  # the dots must sit on the template points.
  rng = np.random.default_rng(3)
  truth = _similarity(1.7, 0.25, 30.0, 12.0)   # template -> image
  landmarks = _apply(truth, align.arcface_template())
  image = rng.integers(0, 60, (260, 260, 3)).astype(np.uint8)
  for x, y in np.rint(landmarks).astype(int):
    image[y - 2:y + 3, x - 2:x + 3] = 255
  aligned = align.align_face(image, landmarks)
  assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
  back = align.similarity_transform(landmarks, align.arcface_template())
  np.testing.assert_allclose(back, np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2], atol=1e-9)
  for x, y in np.rint(align.arcface_template()).astype(int):
    assert aligned[y, x].min() > 200
