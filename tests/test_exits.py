"""Fixed early exits and the adaptive cascade (exfiqa_jax/models/exits.py) against the full pass.

The independent reference is the full-depth model's own output (every exit in one pass): a
fixed-exit program must give its first k columns, the cascade must give, per image, the full
pass's score at the first exit whose threshold it crosses (computed here with a plain NumPy loop).
Tolerance: 1e-5 between programs of our own code (observed ≤ 3e-8: the same layers, only the
matmul batch shapes differ); thresholds sit at midpoints between sorted scores (gaps ≫ 1e-5),
so no decision can flip on rounding. GFLOPs: the poster's numbers to 2 decimals.
"""
from __future__ import annotations

import functools
import json
import math

import jax
import numpy as np
import pytest
from PIL import Image

from configs import eval_verification
from configs import score as score_config
from exfiqa_jax import checkpoints, inference, models
from exfiqa_jax.evaluation import benchmarks, pipeline, stages
from exfiqa_jax.models import exits, vit
from exfiqa_jax.tasks import score
from exfiqa_jax.testing.subproc import run_python

ATOL = 1e-5
DEPTH = 4
EXITS = (1, 3, 4)


def random_variables(cfg: vit.ViTConfig, seed: int = 0):
  """Non-trivial random weights (unit-variance linears, BN stats ≠ identity): scores spread
  O(1), so exits really differ and threshold gaps dwarf rounding."""
  module = vit.VisionTransformer(cfg)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(seed),    # shapes: every value
                             np.zeros((1, 112, 112, 3), np.float32))  # is filled below
  rng = np.random.default_rng(seed)

  def fill(path, x):
    keys = [getattr(p, "key", "") for p in path]
    shape = x.shape[1:] if "blocks" in keys else x.shape
    noise = rng.standard_normal(x.shape).astype(np.float32)
    if keys[-1] == "kernel":
      return noise / np.sqrt(np.prod(shape[:-1]))
    if keys[-1] == "var":
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if keys[-1] == "scale":
      return 1.0 + 0.2 * noise
    return 0.2 * noise

  return module, jax.tree_util.tree_map_with_path(fill, variables)


@functools.lru_cache(maxsize=None)
def shared_model(mode: str, seed: int = 0, batch_size: int = 8) -> inference.QualityModel:
  """One model per (mode, seed, batch) for the cascade checks: its compiled programs serve
  every check (a test must not change it)."""
  return quality_model(mode, seed, batch_size)


def quality_model(mode: str, seed: int = 0, batch_size: int = 8, depth: int = DEPTH):
  cfg = vit.tiny_config(mode, depth=depth)
  module, variables = random_variables(cfg, seed)
  return inference.QualityModel(module, variables, cfg.to_dict(), batch_size=batch_size)


def random_images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def _midpoint(values: np.ndarray, frac: float) -> float:
  """A threshold between two sorted values near the `frac` quantile (never on a score)."""
  v = np.sort(values)
  i = int(np.clip(round(frac * len(v)), 1, len(v) - 1))
  return float((v[i - 1] + v[i]) / 2)


def reference_cascade(exit_scores: np.ndarray, t: exits.CascadeThresholds):
  """Per image, from the full pass: the first exit that decides, its score, the decision."""
  n = len(exit_scores)
  out_exit, out_score, out_accept = np.zeros(n, int), np.zeros(n), np.zeros(n, bool)
  for i in range(n):
    for s, e in enumerate(t.exits):
      v = exit_scores[i, e - 1]
      if s == len(t.exits) - 1:
        out_exit[i], out_score[i], out_accept[i] = e, v, v >= t.tau
      elif v < t.reject[s] or v > t.accept[s]:
        out_exit[i], out_score[i], out_accept[i] = e, v, v > t.accept[s]
      else:
        continue
      break
  return out_exit, out_score, out_accept


def check_cascade_against_full_pass(mode: str, cases, seed: int = 0, batch_size: int = 8
                                    ) -> list[dict]:
  """Cases (set size, ladder) with random quantile thresholds: the cascade equals the reference
  per image, every image is decided exactly once, and each segment ran exactly the images that
  reached it. Also used by the 8-device subprocess."""
  model = shared_model(mode, seed, batch_size)
  all_images = random_images(max(n for n, _ in cases), seed + 1)
  full = model.score(all_images)["exit_scores"]
  rng = np.random.default_rng(seed)
  stats = []
  for n, ladder in cases:
    images, scores = all_images[:n], full[:n]
    reject, accept = [], []
    for e in EXITS[:-1]:
      lo, hi = sorted(rng.uniform(0.1, 0.45, 2))
      reject.append(_midpoint(full[:, e - 1], lo))
      accept.append(_midpoint(full[:, e - 1], 1 - hi))
    t = exits.CascadeThresholds(EXITS, tuple(reject), tuple(accept),
                                _midpoint(full[:, -1], 0.5))
    got = model.cascade(images, t, ladder)
    ref_exit, ref_score, ref_accept = reference_cascade(scores, t)
    assert got.score.shape == got.exit.shape == got.accept.shape == got.gflops.shape == (n,)
    assert got.score.dtype == np.float32 and got.exit.dtype == np.int32
    assert got.accept.dtype == bool and got.gflops.dtype == np.float64
    np.testing.assert_array_equal(got.exit, ref_exit)
    np.testing.assert_allclose(got.score, ref_score, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(got.accept, ref_accept)
    np.testing.assert_array_equal(got.gflops, exits.cascade_gflops(model.model_config, EXITS,
                                                                   got.exit))
    st = model.cascade_engine(EXITS).last_stats
    reached = [int(np.sum(ref_exit >= e)) for e in EXITS]
    assert st["rows"] == reached, (st, reached)
    assert all(p >= r for p, r in zip(st["padded_rows"], st["rows"]))
    assert all(b % jax.device_count() == 0 for b in st["buckets"])
    stats.append(st)
  return stats


@pytest.fixture(scope="module", params=["token", "crfiqa"])
def model_and_full(request):
  model = shared_model(request.param)
  images = random_images(13, seed=3)
  module, variables = model.module, model.variables
  embed_all = jax.jit(lambda v, x: module.apply(v, x, return_all_embeddings=True)[1])
  out = embed_all(variables, (images.astype(np.float32) / 255 - 0.5) / 0.5)
  return model, images, model.score(images), np.asarray(out["embeddings"])


# ------------------------------------------------------------------------------------------
# Fixed exits
# ------------------------------------------------------------------------------------------
def test_score_at_exit_k_equals_first_columns_of_the_full_pass(model_and_full):
  model, images, full, embeddings = model_and_full
  for k in range(1, DEPTH + 1):
    got = model.score(images, exit=k)
    assert got["exit_scores"].shape == got["attn_scores"].shape == (len(images), k)
    np.testing.assert_allclose(got["exit_scores"], full["exit_scores"][:, :k], atol=ATOL)
    np.testing.assert_allclose(got["attn_scores"], full["attn_scores"][:, :k], atol=ATOL)
    s = full["exit_scores"][:, :k].astype(np.float64)
    np.testing.assert_allclose(got["ex_fiqa_f"], s.mean(1), atol=ATOL)
    np.testing.assert_allclose(got["ex_fiqa_fw"], s @ (np.arange(1, k + 1) / (k * (k + 1) / 2)),
                               atol=ATOL)
    np.testing.assert_allclose(got["embedding"], embeddings[:, k - 1], atol=ATOL)
    # the program really is truncated: block parameters cut to k
    assert jax.tree.leaves(model.variables_at(k)["params"]["blocks"])[0].shape[0] == k
  for same in (0, None, DEPTH):
    np.testing.assert_array_equal(model.score(images, exit=same)["exit_scores"],
                                  full["exit_scores"])


def test_fr_mode_attention_up_to_block_k():
  cfg = vit.tiny_config("fr", depth=3, has_mask_token=False)
  module, variables = random_variables(cfg, 1)
  model = inference.QualityModel(module, variables, cfg.to_dict(), batch_size=8)
  images = random_images(5, 2)
  full = model.score(images)
  got = model.score(images, exit=2)
  assert set(got) == {"attn_scores", "embedding"}
  np.testing.assert_allclose(got["attn_scores"], full["attn_scores"][:, :2], atol=ATOL)
  with pytest.raises(ValueError, match="no exit scores"):
    model.cascade(images, exits.CascadeThresholds.full_depth((1, 3), 0.0))


def test_exit_outside_the_model_is_a_clear_error(model_and_full):
  model, images, _, _ = model_and_full
  for bad in (-1, DEPTH + 1, 2.5, True, "3"):
    with pytest.raises(ValueError, match=rf"a fixed exit is one of 1\.\.{DEPTH}") as e:
      model.score(images, exit=bad)
    assert str(e.value).startswith(f"exit={bad!r}: ")       # the API's argument


# ------------------------------------------------------------------------------------------
# Cascade
# ------------------------------------------------------------------------------------------
def test_cascade_without_early_decisions_is_the_full_pass(model_and_full):
  model, images, full, _ = model_and_full
  last = full["exit_scores"][:, -1]
  t = exits.CascadeThresholds.full_depth(EXITS, _midpoint(last, 0.4))
  got = model.cascade(images, t)
  np.testing.assert_allclose(got.score, last, atol=ATOL, rtol=0)
  np.testing.assert_array_equal(got.exit, np.full(len(images), DEPTH))
  np.testing.assert_array_equal(got.accept, last >= t.tau)
  np.testing.assert_array_equal(got.accept, got.score >= t.tau)


def test_cascade_stopping_everyone_at_exit_k_is_the_truncated_program(model_and_full):
  model, images, _, _ = model_and_full
  n_early = len(EXITS) - 1
  for s, e in enumerate(EXITS[:-1]):
    for accept_all in (False, True):
      stop = -math.inf if accept_all else math.inf   # reject: score < +inf; accept: > -inf
      reject = tuple(stop if i == s else -math.inf for i in range(n_early))
      accept = tuple(stop if i == s else math.inf for i in range(n_early))
      got = model.cascade(images, exits.CascadeThresholds(EXITS, reject, accept, 0.0))
      truncated = model.score(images, exit=e)["exit_scores"][:, -1]
      np.testing.assert_allclose(got.score, truncated, atol=ATOL, rtol=0)
      np.testing.assert_array_equal(got.exit, np.full(len(images), e))
      assert got.accept.all() == accept_all and got.accept.any() == accept_all
      np.testing.assert_allclose(got.gflops, models.program_gflops(model.model_config, e, s + 1))


def test_bucketing_never_drops_or_duplicates_one_device():
  stats = check_cascade_against_full_pass(
      "token", [(1, None), (5, None), (8, None), (23, None), (19, (3, 6))])
  stats += check_cascade_against_full_pass("crfiqa", [(13, None)], seed=1)
  assert stats[-2]["buckets"] == (3, 6) and stats[-1]["buckets"] == (1, 2, 4, 8)
  assert any(p > r for st in stats for p, r in zip(st["padded_rows"], st["rows"]))  # partial


def test_bucketing_and_streaming_never_drop_or_duplicate_eight_devices():
  out = run_python("""
    import jax
    from tests.test_exits import check_cascade_against_full_pass, check_stream_against_per_batch
    assert jax.device_count() == 8
    st = check_cascade_against_full_pass("token", [(3, None), (29, None), (21, (3, 20))],
                                         batch_size=16)
    print("buckets", st[0]["buckets"], st[-1]["buckets"])
    seen = check_stream_against_per_batch("token", 3, (None, (3, 20)), batch_size=16)
    print("streams", len(seen), sorted({b for _, _, b in seen}))
  """, devices=8)
  assert "buckets (8, 16) (8, 24)" in out and "streams 3" in out


def check_stream_against_per_batch(mode: str, cases: int, ladders, seed: int = 0,
                                   batch_size: int = 8) -> list[tuple]:
  """Random stream lengths and chunkings over the bucket `ladders` (those the bucketing checks
  compiled): the stream (survivors carried across chunks) gives per image what the per-chunk
  cascade and the full-pass reference give, in input order, each image once, and never more
  program calls per segment than the per-chunk runs. Also used by the 8-device subprocess."""
  model = shared_model(mode, seed, batch_size)
  rng = np.random.default_rng(seed)
  all_images = random_images(30, seed + 1)
  full = model.score(all_images)["exit_scores"]
  t = exits.CascadeThresholds(EXITS, tuple(_midpoint(full[:, e - 1], 0.3) for e in EXITS[:-1]),
                              tuple(_midpoint(full[:, e - 1], 0.7) for e in EXITS[:-1]),
                              _midpoint(full[:, -1], 0.5))
  seen = []
  for _ in range(cases):
    n = int(rng.integers(1, 31))
    ladder = ladders[int(rng.integers(len(ladders)))]
    cuts = np.sort(rng.choice(np.arange(1, n), min(n - 1, int(rng.integers(0, 5))),
                              replace=False)) if n > 1 else np.zeros(0, int)
    chunks = np.split(np.arange(n), cuts)
    engine = model.cascade_engine(EXITS)
    stream = model.cascade_stream(t, ladder)
    parts, returned = [], []
    for c in chunks:
      parts.append(stream.push(all_images[c]))
      returned.append(stream.returned)
    parts.append(stream.flush())
    got = exits.CascadeResult(*(np.concatenate(a) for a in zip(*parts)))
    per_batch, calls = [], np.zeros(len(EXITS), int)
    for c in chunks:
      per_batch.append(model.cascade(all_images[c], t, ladder))
      calls += engine.last_stats["calls"]
    per_batch = exits.CascadeResult(*(np.concatenate(a) for a in zip(*per_batch)))
    ref_exit, ref_score, ref_accept = reference_cascade(full[:n], t)
    assert len(got.exit) == n and stream.returned == stream.pushed == n
    assert returned == sorted(returned) and returned[-1] <= n
    for r in (got, per_batch):
      np.testing.assert_array_equal(r.exit, ref_exit)
      np.testing.assert_array_equal(r.accept, ref_accept)
      np.testing.assert_allclose(r.score, ref_score, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(got.gflops, per_batch.gflops)
    assert stream.stats["rows"] == [int(np.sum(ref_exit >= e)) for e in EXITS]
    assert np.all(np.asarray(stream.stats["calls"]) <= calls), (stream.stats, calls)
    seen.append((n, len(chunks), stream.stats["buckets"]))
  return seen


def test_stream_equals_the_per_batch_cascade_in_input_order_one_device():
  seen = check_stream_against_per_batch("token", 5, (None, (3, 6)))
  assert any(k > 1 for _, k, _ in seen) and {b for _, _, b in seen} == {(1, 2, 4, 8), (3, 6)}


def test_thresholds_validate_and_round_trip_through_strict_json():
  t = exits.CascadeThresholds((3, 6, 12), (-math.inf, 0.5), (2.0, math.inf), 1.25)
  text = json.dumps(t.to_dict(), allow_nan=False)
  assert exits.CascadeThresholds.from_dict(json.loads(text)) == t
  with pytest.raises(ValueError, match="one reject and one accept"):
    exits.CascadeThresholds((3, 12), (0.0, 1.0), (1.0,), 0.0)
  with pytest.raises(ValueError, match="reject > accept"):
    exits.CascadeThresholds((3, 12), (2.0,), (1.0,), 0.0)
  with pytest.raises(ValueError, match="increasing"):
    exits.CascadeThresholds((6, 3, 12), (0.0, 0.0), (1.0, 1.0), 0.0)
  with pytest.raises(ValueError, match="NaN"):
    exits.CascadeThresholds((3, 12), (math.nan,), (1.0,), 0.0)
  with pytest.raises(ValueError, match="ending at the depth 12"):
    t.check(12) is None and exits.CascadeThresholds.full_depth((3, 6), 0.0).check(12)
  assert exits.default_exits(12) == (3, 6, 9, 12) and exits.default_exits(3) == (1, 2, 3)
  assert exits.bucket_ladder(64, num_devices=1) == (1, 2, 4, 8, 16, 32, 64)
  assert exits.bucket_ladder(24, (5, 12, 24), num_devices=8) == (8, 16, 24)


# ------------------------------------------------------------------------------------------
# GFLOPs (the one formula: models.gflops / models.program_gflops)
# ------------------------------------------------------------------------------------------
def test_gflops_reproduce_the_poster_and_the_cascade_cost():
  c_cfg, t_cfg = vit.vit_s_config("crfiqa"), vit.vit_s_config("token")
  c, c_fuse = models.gflops(c_cfg)
  t, t_fuse = models.gflops(t_cfg)
  assert (round(c[6], 2), round(t[5], 2), round(c[11], 2), round(t[11], 2)) == \
      (6.75, 5.76, 11.49, 11.49)
  assert round(c_fuse, 2) == 12.33
  c7, c7_fuse = models.gflops(c_cfg.to_dict(), exit=7)
  np.testing.assert_array_equal(c7, c[:7])
  head = (c_fuse - c[-1]) / 11                        # 11 extra heads in the all-exit fusion
  assert round(head, 3) == 0.076
  np.testing.assert_allclose(c7_fuse, c[6] + 6 * head)
  cost = exits.cascade_gflops(c_cfg, (3, 6, 9, 12), np.array([3, 6, 9, 12, 3]))
  np.testing.assert_allclose(cost, [c[2], c[5] + head, c[8] + 2 * head, c[11] + 3 * head, c[2]])
  with pytest.raises(ValueError, match="not cascade exits"):
    exits.cascade_gflops(c_cfg, (3, 6, 9, 12), np.array([4]))
  with pytest.raises(ValueError, match="exit must be in 1..12"):
    models.gflops(c_cfg, exit=13)


# ------------------------------------------------------------------------------------------
# Tasks: score --config.exit=k, the eval pipeline's quality stage
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("exits")
  model = quality_model("token", seed=4)
  path = checkpoints.save_model(str(root / "model"), jax.device_get(model.variables),
                                model.model_config)
  faces = root / "faces"
  faces.mkdir()
  images = random_images(5, seed=5)
  for i, im in enumerate(images):
    Image.fromarray(im).save(faces / f"{i:03d}.png")
  return {"path": path, "faces": str(faces), "images": images, "model": model}


def test_score_task_with_exit_writes_only_exits_1_to_k(model_dir, tmp_path):
  config = score_config.get_config("size=tiny")
  config.quality_model.path = model_dir["path"]
  config.images = model_dir["faces"]
  config.output = str(tmp_path)
  config.exit = 2
  first = score.run(config)
  with open(first["scores"]) as f:
    header, *rows = [line.strip().split(",") for line in f]
  assert header == ["image", "exit_1", "exit_2", "ex_fiqa_f", "ex_fiqa_fw", "attn_1", "attn_2"]
  want = model_dir["model"].score(model_dir["images"], exit=2)
  np.testing.assert_allclose(np.asarray([r[1:3] for r in rows], float), want["exit_scores"],
                             atol=ATOL)
  with np.load(first["npz"]) as npz:
    assert npz["exit_scores"].shape == (5, 2) and int(npz["exit"]) == 2
  assert score.run(config)["cached"]
  config.exit = 0                      # a different exit is not "already done"
  again = score.run(config)
  assert not again["cached"]
  with np.load(again["npz"]) as npz:
    assert npz["exit_scores"].shape == (5, DEPTH)


def test_eval_quality_stage_runs_the_truncated_program(model_dir, tmp_path):
  config = eval_verification.get_config("size=tiny")
  assert config.exit == 0
  config.quality_model.path = model_dir["path"]
  config.output = str(tmp_path)
  images = model_dir["images"]
  bench = benchmarks.array_benchmark("tiny", images, [f"{i}" for i in range(len(images))],
                                     np.array([[0, 1], [2, 3]]), np.array([True, False]))
  cache = stages.StageCache(str(tmp_path / "cache"), progress=False)
  fingerprints = []
  for k in (2, 0):
    config.exit = k
    spec, = pipeline.load_quality_models(config)
    st = pipeline.quality_stage(cache, bench, spec, config)
    assert not st.cached
    fingerprints.append(st.fingerprint)
    want = model_dir["model"].score(images, exit=k)
    np.testing.assert_allclose(st["exit_scores"], want["exit_scores"], atol=ATOL)
    assert st["attn_scores"].shape == (len(images), k or DEPTH)
    per_exit, fuse = pipeline.gflops_table([spec])[spec.name]
    assert len(per_exit) == (k or DEPTH)
    np.testing.assert_allclose(fuse, models.gflops(spec.model.model_config, exit=k)[1])
  assert fingerprints[0] != fingerprints[1]
  config.exit = DEPTH + 1
  with pytest.raises(ValueError, match=rf"exit={DEPTH + 1}: .*one of 1\.\.{DEPTH}"):
    pipeline.load_quality_models(config)


def test_a_model_built_in_memory_has_no_stored_cascade(model_and_full):
  model, images, _, _ = model_and_full
  with pytest.raises(ValueError, match="not loaded from a converted directory"):
    model.cascade(images)
  with pytest.raises(ValueError, match="not loaded from a converted directory"):
    model.cascade_stream(0.99)
  stream = model.cascade_stream(exits.CascadeThresholds.full_depth(EXITS, 0.0))
  with pytest.raises(ValueError, match=r"uint8 \[n, 112, 112, 3\] images, got float32"):
    stream.push(images.astype(np.float32))
  assert stream.flush().exit.shape == (0,)
