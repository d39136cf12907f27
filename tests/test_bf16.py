"""bfloat16 inference (`compute_dtype`, docs/accelerators.md) against float32, on the CPU.

Stated tolerance: every exit score, fusion and ATTN score within 2 % of the largest |float32
value| of its [N, L] array (TOLERANCE), and a Spearman rank correlation ≥ 0.99 of exit_L (the
final score) across images. Measured here: ≤ 0.9 % (tiny token/crfiqa models) and 0.2 % / 0.6 %
(exit / ATTN, random-weight ViT-S on 32 images), Spearman ≥ 0.997.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import eval_ijbc, score as score_config
from exfiqa_jax import inference
from exfiqa_jax.tasks import score
from exfiqa_jax.testing import worlds

TOLERANCE = 0.02            # of max |float32| over the array
MIN_SPEARMAN = 0.99


def _images(n: int = 32, seed: int = 0) -> np.ndarray:
  """Images with a spread of contrast, so that the scores differ between images."""
  rng = np.random.default_rng(seed)
  bases = rng.integers(0, 256, (8, 112, 112, 3)).astype(np.float32)
  contrast = np.linspace(0.05, 1.0, n)[:, None, None, None]
  noisy = 128 + (bases[np.arange(n) % 8] - 128) * contrast + rng.normal(0, 10, (n, 112, 112, 3))
  return np.clip(noisy, 0, 255).astype(np.uint8)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("bf16")
  return {mode: worlds.save_vit(root / mode, mode, seed)
          for mode, seed in (("token", 1), ("crfiqa", 2))}


@pytest.mark.parametrize("mode", ["token", "crfiqa"])
def test_bf16_scores_within_tolerance(models, mode):
  f32 = inference.load(models[mode], batch_size=16)
  b16 = inference.load(models[mode], batch_size=16, dtype="bfloat16")
  assert (f32.dtype, b16.dtype) == ("float32", "bfloat16")
  images = _images()
  ref, out = f32.score(images), b16.score(images)
  for key in ("exit_scores", "ex_fiqa_f", "ex_fiqa_fw", "attn_scores"):
    assert out[key].dtype == np.float32, key           # heads and statistics come back in f32
    err = float(np.max(np.abs(out[key] - ref[key])))
    bound = TOLERANCE * float(np.max(np.abs(ref[key])))
    assert err <= bound, (mode, key, err, bound)
    assert err > 0, (mode, key)                        # bf16 really ran
  assert _spearman(ref["exit_scores"][:, -1], out["exit_scores"][:, -1]) >= MIN_SPEARMAN


def test_bf16_matmuls_float32_norms_and_heads(models):
  """The program's matmuls take bf16 operands, its LayerNorms and the quality head f32."""
  model = inference.load(models["token"], batch_size=8, dtype="bfloat16")
  jaxpr = jax.make_jaxpr(model._forward(False, model.num_exits))(
      model.variables, np.zeros((8, 112, 112, 3), np.uint8))
  dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name in ("dot_general",
                                                                      "conv_general_dilated")]
  dtypes = [tuple(str(v.aval.dtype) for v in e.invars) for e in dots]
  assert sum(d == ("bfloat16", "bfloat16") for d in dtypes) >= 6      # patch, qkv, attn, proj, mlp
  assert ("float32", "float32") in dtypes                               # head_qs
  out = jax.eval_shape(model._forward(False, model.num_exits), model.variables,
                       jax.ShapeDtypeStruct((8, 112, 112, 3), np.uint8))
  assert out["exit_scores"].dtype == out["attn_scores"].dtype == np.float32


def _equations(jaxpr):
  """Every equation, inside jit / scan bodies too (their params hold a ClosedJaxpr)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None:
        yield from _equations(getattr(inner, "jaxpr", inner))


def test_compute_dtype_is_part_of_the_score_identity(models, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for i, image in enumerate(_images(5)):
    Image.fromarray(image).save(images / f"{i}.png")
  config = score_config.get_config("size=tiny")
  config.quality_model.path, config.images = models["token"], str(images)
  config.output, config.progress = str(tmp_path / "out"), False
  first = score.run(config)
  config.compute_dtype = "bfloat16"
  second = score.run(config)
  assert not second["cached"]                          # another dtype: scored again
  assert score.run(config)["cached"]
  f32 = np.load(os.path.join(tmp_path, "out", "scores.npz"))["exit_scores"]
  assert f32.shape == (5, 3) and first["count"] == 5
  config.compute_dtype = "float16"
  with pytest.raises(ValueError, match="--config.compute_dtype="):
    score.run(config)


def test_configs_default_to_float32():
  assert score_config.get_config().compute_dtype == "float32"
  assert eval_ijbc.get_config().compute_dtype == "float32"
