"""Faults a demanding or hostile user meets (issue 11): stale caches, damaged files, bad inputs.

Every cached result knows what it was made from (identity), every checkpoint is verified on read
(integrity), a run's outputs appear together (atomic sets), and bad inputs fail at the edge with
a message naming the setting that fixes them (docs/caching.md). Tiny models (the PyTorch twin of
vit.tiny_config), a handful of 112×112 images.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import shutil
import socket
import struct
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from configs import embed as embed_config
from configs import score as score_config
from configs.eval_common import eval_config
from exfiqa_jax import checkpoints, embedding, files, identity, inference
from exfiqa_jax.convert import strict, torch_io
from exfiqa_jax.convert.strict import CheckpointError
from exfiqa_jax.data import preprocess
from exfiqa_jax.data.builders import base, verification_bin
from exfiqa_jax.evaluation import benchmarks, pipeline, stages
from exfiqa_jax.metrics import comparisons
from exfiqa_jax.models import vit
from exfiqa_jax.tasks import embed, score
from exfiqa_jax.report import score as score_report
from exfiqa_jax.testing import worlds
from exfiqa_jax.testing import torch_reference as ref
from exfiqa_jax.train import trainer

HEADS = vit.tiny_config("token").num_heads     # 4; 2 also divides the width (32)


# ------------------------------------------------------------------------------- helpers
def _pt(path, seed: int) -> str:
  model = ref.random_init_(ref.VitFiqaTorch(**ref.tiny_kwargs("token")), seed=seed)
  torch.save(model.state_dict(), path)
  return str(path)


def _replace_keeping_mtime(path, write) -> None:
  """Rewrites `path` (same name, usually the same size) and restores its mtime: only a content
  identity can tell the difference."""
  st = os.stat(path)
  write(path)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def _flip(path, offset: int, count: int = 64) -> None:
  data = bytearray(open(path, "rb").read())
  for i in range(offset, min(offset + count, len(data))):
    data[i] ^= 0xA5
  open(path, "wb").write(bytes(data))


def _largest_member_offset(pt: str) -> int:
  """Byte offset of the middle of the largest tensor stored in a zip-format .pt."""
  with zipfile.ZipFile(pt) as archive:
    info = max(archive.infolist(), key=lambda i: i.file_size)
  with open(pt, "rb") as f:
    f.seek(info.header_offset)
    header = f.read(30)
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def _largest_data_file(model_dir: str) -> str:
  """The biggest Orbax/OCDBT data file (under a `d/` folder) of a converted directory."""
  found = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(model_dir, "variables"))
           if os.path.basename(r) == "d" for f in fs]
  return max(found, key=os.path.getsize)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults")
  rng = np.random.RandomState(0)
  faces = root / "faces"
  faces.mkdir()
  for k in range(5):
    Image.fromarray(rng.randint(0, 256, (112, 112, 3)).astype(np.uint8)).save(
        faces / f"{k:03d}.png")
  pt = _pt(root / "token.pt", seed=1)
  other_pt = _pt(root / "other.pt", seed=2)
  converted = str(root / "converted")
  checkpoints.pt_to_directory(pt, converted, num_heads=HEADS)
  return {"root": root, "faces": faces, "pt": pt, "other_pt": other_pt, "dir": converted}


def _task_config(job, model, assets, output, **overrides):
  """The tiny config of `job` (a configs module) on the assets' faces and model (`model` names
  the config node: quality_model or fr)."""
  config = job.get_config("size=tiny")
  config[model].path, config[model].num_heads = assets["pt"], HEADS
  config.images, config.output = str(assets["faces"]), str(output)
  return worlds.override(config, **overrides)


def _score_config(assets, output, **overrides):
  return _task_config(score_config, "quality_model", assets, output, **overrides)


def _scores(result) -> np.ndarray:
  with np.load(result["npz"]) as npz:
    return np.asarray(npz["exit_scores"])


# ------------------------------------------------------------------- 1. score: identity
@pytest.fixture(scope="module")
def scored(assets, tmp_path_factory):
  out = tmp_path_factory.mktemp("scored") / "out"
  first = score.run(_score_config(assets, out))
  assert not first["cached"]
  return out, _scores(first)


def _change_checkpoint(assets, work):
  pt = shutil.copy(assets["pt"], work / "model.pt")
  return pt, lambda: _replace_keeping_mtime(pt, lambda p: shutil.copyfile(assets["other_pt"], p))


CHANGES = ["checkpoint bytes", "num_heads", "image content", "channel order", "nothing"]


@pytest.mark.parametrize("change", CHANGES)
def test_score_recomputes_when_any_recorded_input_changes(assets, tmp_path, change, caplog):
  """Case 1 and the identity principle for the score task: each input in turn."""
  faces = tmp_path / "faces"
  shutil.copytree(assets["faces"], faces)
  pt = str(tmp_path / "model.pt")
  shutil.copyfile(assets["pt"], pt)
  out = tmp_path / "out"
  base_cfg = dict(images=str(faces), **{"quality_model.path": pt})
  first = score.run(_score_config(assets, out, **base_cfg))
  before = _scores(first)
  overrides = dict(base_cfg)
  if change == "checkpoint bytes":
    _replace_keeping_mtime(pt, lambda p: shutil.copyfile(assets["other_pt"], p))
  elif change == "num_heads":
    overrides["quality_model.num_heads"] = 2
  elif change == "image content":
    victim = faces / "002.png"
    pixels = np.asarray(Image.open(victim)).copy()
    pixels[:56] = 255 - pixels[:56]
    _replace_keeping_mtime(victim, lambda p: Image.fromarray(pixels).save(p))
  elif change == "channel order":
    overrides["data.channel_order"] = "bgr"
  with caplog.at_level(logging.INFO):
    again = score.run(_score_config(assets, out, **overrides))
  if change == "nothing":
    assert again["cached"]
    return
  assert not again["cached"], change
  assert not np.allclose(_scores(again), before), change
  assert "changed" in caplog.text     # the log line says what changed
  field = {"checkpoint bytes": "checkpoint.sha256", "num_heads": "num_heads",
           "image content": "images", "channel order": "channel_order"}[change]
  assert field in caplog.text


def test_score_outputs_are_one_set_disk_full(assets, tmp_path, monkeypatch):
  """Case 4: job A done; job B (other images) dies writing scores.npz (disk full) after
  scores.csv; rerunning A must not report complete over B's rows."""
  out = tmp_path / "out"
  a = score.run(_score_config(assets, out))
  a_csv = open(a["scores"]).read()
  few = tmp_path / "few"
  few.mkdir()
  for name in ("000.png", "001.png"):
    shutil.copy(assets["faces"] / name, few / name)

  save_npz = files.save_npz

  def full(path, *args, **kwargs):         # the run's chunks are stored; scores.npz is not
    if os.path.basename(path) == "scores.npz":
      raise OSError(errno.ENOSPC, "No space left on device")
    return save_npz(path, *args, **kwargs)
  monkeypatch.setattr(files, "save_npz", full)
  with pytest.raises(OSError, match="No space"):
    score.run(_score_config(assets, out, images=str(few)))
  monkeypatch.undo()
  assert not os.path.exists(out / score_report.STAMP)      # an interrupted run leaves no stamp
  assert open(out / "scores.csv").read() != a_csv   # B's rows are there now
  again = score.run(_score_config(assets, out))
  assert not again["cached"]
  assert open(out / "scores.csv").read() == a_csv


def test_score_output_replaced_after_the_run_is_recomputed(assets, scored, tmp_path):
  out, _ = scored
  copy = tmp_path / "out"
  shutil.copytree(out, copy)
  with open(copy / "scores.csv", "a") as f:
    f.write("extra,row\n")
  assert not score.run(_score_config(assets, copy))["cached"]


def test_score_checks_the_output_folder_first_and_cleans_temporaries(assets, tmp_path,
                                                                     monkeypatch):
  as_file = tmp_path / "a_file"
  as_file.write_text("x")
  loaded = []
  monkeypatch.setattr(inference, "load", lambda *a, **k: loaded.append(1))
  with pytest.raises(ValueError, match="is a file.*--config.output"):
    score.run(_score_config(assets, as_file))
  with pytest.raises(ValueError, match="--config.output"):
    score.run(_score_config(assets, as_file / "sub"))
  assert not loaded                                   # nothing computed
  monkeypatch.undo()
  out = tmp_path / "out"
  out.mkdir()
  leftover = out / ".scores.csv.abc12345.tmp.csv"     # what a killed atomic write leaves
  leftover.write_text("partial")
  score.run(_score_config(assets, out))
  assert not leftover.exists()
  assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_score_batch_size_and_heads_errors_name_the_config_flags(assets, tmp_path):
  with pytest.raises(ValueError, match="--config.batch_size"):
    score.run(_score_config(assets, tmp_path / "b", batch_size=0))
  with pytest.raises(CheckpointError, match="--config.quality_model.num_heads=") as e:
    score.run(_score_config(assets, tmp_path / "h", **{"quality_model.num_heads": 5}))
  assert "--num_heads" not in str(e.value)
  with pytest.raises(CheckpointError, match="--config.quality_model.family="):
    score.run(_score_config(assets, tmp_path / "f", **{"quality_model.family": "resnet9000"}))
  with pytest.raises(ValueError, match="batch_size"):
    inference.load(assets["dir"], batch_size=0)
  # outside main.py the API's own argument names are used
  with pytest.raises(CheckpointError, match=r"num_heads=<n>") as e:
    inference.load(assets["pt"], num_heads=5)
  assert "--" not in str(e.value)
  with strict.flags_named(num_heads="--num_heads="):   # the converter CLI
    with pytest.raises(CheckpointError, match="--num_heads=<n>"):
      inference.load(assets["pt"], num_heads=5)


def test_unreadable_images_decompression_bomb_is_skipped(assets, tmp_path):
  faces = tmp_path / "faces"
  shutil.copytree(assets["faces"], faces)
  png = bytearray(_png(np.zeros((1, 1, 3), np.uint8)))
  png[16:24] = struct.pack(">II", 20000, 20000)                     # IHDR width, height
  png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
  (faces / "bomb.png").write_bytes(bytes(png))
  with pytest.raises(preprocess.ImageError, match="bomb.png"):
    preprocess.decode_image(str(faces / "bomb.png"))
  result = score.run(_score_config(assets, tmp_path / "out", images=str(faces),
                                   skip_unreadable=True))
  assert result["skipped"] == ["bomb.png"]
  # the builders' skip sees it as a corrupt image too
  entry = base.ImageEntry(0, "bomb", bytes(png))
  assert isinstance(base.prepare_image(entry), preprocess.ImageError)


# ------------------------------------------------------------------- 2. embed: identity
def _embed_config(assets, output, **overrides):
  return _task_config(embed_config, "fr", assets, output, **overrides)


@pytest.mark.parametrize("change", ["convention", "channel_order", "input_scale", "model",
                                    "family", "nothing"])
def test_embed_cache_knows_what_it_was_made_from(assets, tmp_path, change):
  """Case 2: the embed cache was accepted whenever the image names matched."""
  pt = str(tmp_path / "fr.pt")
  shutil.copyfile(assets["pt"], pt)
  out = tmp_path / "out"
  first = embed.run(_embed_config(assets, out, **{"fr.path": pt}))
  before = np.load(first["embeddings"])
  overrides = {"fr.path": pt}
  if change == "convention":
    overrides["fr.convention"] = "sum"
  elif change == "channel_order":
    overrides["data.channel_order"] = "bgr"
  elif change == "input_scale":
    overrides["fr.input_scale"] = "0_1"
  elif change == "model":
    _replace_keeping_mtime(pt, lambda p: shutil.copyfile(assets["other_pt"], p))
  elif change == "family":
    overrides["fr.family"] = "vit"
  again = embed.run(_embed_config(assets, out, **overrides))
  if change == "nothing":
    assert again["skipped"]
    return
  assert not again["skipped"], change
  after = np.load(again["embeddings"])
  if change != "family":          # naming the detected family gives the same numbers
    assert after.shape != before.shape or not np.allclose(after, before), change


def test_embed_unknown_family_names_the_config_flag(assets, tmp_path):
  with pytest.raises(CheckpointError, match="--config.fr.family="):
    embed.run(_embed_config(assets, tmp_path / "o", **{"fr.family": "nope"}))


# ---------------------------------------------------------- 3. eval: data sets and stages
def _write_bin(path, seed: int, pairs: int = 4, labels=None) -> None:
  rng = np.random.RandomState(seed)
  images = [_png(rng.randint(0, 256, (112, 112, 3)).astype(np.uint8)) for _ in range(2 * pairs)]
  labels = [bool(k % 2 == 0) for k in range(pairs)] if labels is None else labels
  with open(path, "wb") as f:
    pickle.dump((images, labels), f, protocol=4)


def _eval_config(assets, root, **overrides):
  config = eval_config(["lfw"], output=str(root / "eval"))
  config.batch_size = 8
  config.quality_model.path = assets["pt"]
  config.quality_model.num_heads = HEADS
  config.fr.path = "quality_model"
  config.data.manual_dir = str(root / "bins")
  config.data.data_dir = str(root / "tfds")
  config.eval.bootstrap = 0
  config.eval.modes = ("fiqa",)
  config.report.plots = False
  config.progress = False
  return worlds.override(config, **overrides)


@pytest.fixture
def bins(tmp_path):
  (tmp_path / "bins").mkdir()
  _write_bin(tmp_path / "bins" / "lfw.bin", seed=0)
  return tmp_path


def test_edited_bin_is_rebuilt_and_changes_the_benchmark_identity(assets, bins):
  """Case 3: an edited .bin was not rebuilt; a rebuilt data set looked cached to every stage."""
  config = _eval_config(assets, bins)
  first = benchmarks.open_benchmark("lfw", config)
  again = benchmarks.open_benchmark("lfw", config)
  assert stages.fingerprint(first.identity) == stages.fingerprint(again.identity)
  old_images = first.read(np.arange(2))[0]
  _replace_keeping_mtime(bins / "bins" / "lfw.bin",
                         lambda p: _write_bin(p, seed=1))       # same size, same mtime
  rebuilt = benchmarks.open_benchmark("lfw", config)
  assert stages.fingerprint(rebuilt.identity) != stages.fingerprint(first.identity)
  assert not np.array_equal(rebuilt.read(np.arange(2))[0], old_images)


def test_every_stage_recomputes_after_the_data_set_changes(assets, bins):
  config = _eval_config(assets, bins)
  quality = pipeline.load_quality_models(config)
  run = pipeline.evaluate(config, [benchmarks.open_benchmark("lfw", config)], quality)
  assert len(run.cache.computed()) == 4               # quality, embed, compare, edc
  rerun = pipeline.evaluate(config, [benchmarks.open_benchmark("lfw", config)], quality)
  assert rerun.cache.computed() == []
  _write_bin(bins / "bins" / "lfw.bin", seed=5)
  changed = pipeline.evaluate(config, [benchmarks.open_benchmark("lfw", config)], quality)
  assert sorted(changed.cache.computed()) == sorted(run.cache.computed())


@pytest.mark.parametrize("change", ["checkpoint bytes", "num_heads", "image content",
                                    "channel order", "nothing"])
def test_quality_stage_recomputes_when_any_recorded_input_changes(assets, bins, change):
  """The identity principle for an evaluation stage."""
  pt = str(bins / "q.pt")
  shutil.copyfile(assets["pt"], pt)
  config = _eval_config(assets, bins, **{"quality_model.path": pt})
  cache = stages.StageCache(str(bins / "cache"), progress=False)

  def stage(cfg):
    spec = pipeline.load_quality_models(cfg)[0]
    return pipeline.quality_stage(cache, benchmarks.open_benchmark("lfw", cfg), spec, cfg)

  first = stage(config)
  if change == "checkpoint bytes":
    _replace_keeping_mtime(pt, lambda p: shutil.copyfile(assets["other_pt"], p))
  elif change == "num_heads":
    config.quality_model.num_heads = 2
  elif change == "image content":
    _write_bin(bins / "bins" / "lfw.bin", seed=3)
  elif change == "channel order":     # the published protocol reads its .bin JPEGs as "bgr"
    config.data.channel_order = "rgb"
  second = stage(config)
  assert second.cached == (change == "nothing"), change
  if change != "nothing":
    assert not np.allclose(first["exit_scores"], second["exit_scores"]), change


@pytest.mark.parametrize("damage", ["truncated", "emptied", "bit-flipped"])
def test_damaged_stage_file_is_recomputed_with_a_warning(tmp_path, damage, caplog):
  cache = stages.StageCache(str(tmp_path), progress=False)
  data = np.arange(20000, dtype=np.float32)
  cache.run("s", {"a": 1}, lambda: {"x": data})
  path = cache.path("s")
  size = os.path.getsize(path)
  if damage == "truncated":
    open(path, "r+b").truncate(size // 2)
  elif damage == "emptied":
    open(path, "w").close()
  else:
    _flip(path, size // 2, 4)
  with caplog.at_level(logging.WARNING):
    again = stages.StageCache(str(tmp_path), progress=False).run("s", {"a": 1},
                                                                 lambda: {"x": data})
  assert not again.cached
  np.testing.assert_array_equal(again["x"], data)
  assert "recomputing" in caplog.text
  assert stages.StageCache(str(tmp_path), progress=False).run(
      "s", {"a": 1}, lambda: {"x": data}).cached


def test_stage_logs_what_changed_and_cleans_its_temporaries(tmp_path, caplog):
  cache = stages.StageCache(str(tmp_path), progress=False)
  cache.run("s", {"num_heads": 4, "fmrs": [1e-3]}, lambda: {"x": np.zeros(2)})
  leftover = tmp_path / ".s.npz.k1ll3d00.tmp.npz"          # a killed write's temporary
  leftover.write_bytes(b"partial")
  with caplog.at_level(logging.INFO):
    cache.run("s", {"num_heads": 2, "fmrs": [1e-3]}, lambda: {"x": np.zeros(2)})
  assert "num_heads: 4 → 2" in caplog.text
  assert not leftover.exists()


def test_protocol_problems_and_unknown_fr_family_fail_before_any_stage(assets, tmp_path,
                                                                       monkeypatch):
  calls = []
  monkeypatch.setattr(pipeline, "quality_stage", lambda *a, **k: calls.append(1))
  config = _eval_config(assets, tmp_path)
  images = np.zeros((4, 112, 112, 3), np.uint8)
  names = [f"{k}" for k in range(4)]
  pairs = np.array([[0, 1], [2, 3]])
  quality = pipeline.load_quality_models(config)
  for label, genuine in (("genuine", [False, False]), ("impostor", [True, True])):
    bench = benchmarks.array_benchmark(f"no_{label}", images, names, pairs, np.array(genuine))
    with pytest.raises(ValueError, match=f"no_{label}.*genuine and .* impostor"):
      pipeline.evaluate(config, [bench], quality)
  bad_pairs = benchmarks.array_benchmark("wide", images, names, np.array([[0, 7], [1, 2]]),
                                         np.array([True, False]))
  with pytest.raises(ValueError, match="wide"):
    pipeline.evaluate(config, [bad_pairs], quality)
  config.fr.path = assets["pt"]
  config.fr.family = "resnet9000"
  ok = benchmarks.array_benchmark("ok", images, names, pairs, np.array([True, False]))
  with pytest.raises(ValueError, match="--config.fr.family"):
    pipeline.evaluate(config, [ok], quality)
  config.fr.family = ""
  config.eval.bootstrap = 10
  config.eval.alpha = 2.0
  with pytest.raises(ValueError, match="--config.eval.alpha"):
    pipeline.evaluate(config, [ok], quality)
  config.eval.alpha = 0.05
  (tmp_path / "a_file").write_text("x")
  config.output = str(tmp_path / "a_file")
  with pytest.raises(ValueError, match="is a file.*--config.output"):
    pipeline.evaluate(config, [ok], quality)
  assert not calls


# ------------------------------------------------------------------ 5. integrity: checkpoints
def test_pt_with_flipped_bytes_is_damaged(assets, tmp_path):
  pt = str(tmp_path / "flipped.pt")
  shutil.copyfile(assets["pt"], pt)
  _flip(pt, _largest_member_offset(pt), 64)
  with pytest.raises(CheckpointError, match="damaged"):
    torch_io.load_state_dict(pt)
  with pytest.raises(CheckpointError, match="damaged"):
    checkpoints.pt_to_directory(pt, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")
  truncated = str(tmp_path / "truncated.pt")
  shutil.copyfile(assets["pt"], truncated)
  open(truncated, "r+b").truncate(os.path.getsize(truncated) // 2)
  with pytest.raises(CheckpointError, match="damaged"):
    inference.load(truncated, num_heads=HEADS)


@pytest.mark.parametrize("damage", ["flip data", "delete data file", "truncate data file",
                                    "delete _METADATA", "delete manifest", "delete variables"])
def test_damaged_converted_directory_is_a_checkpoint_error(assets, tmp_path, damage):
  model_dir = str(tmp_path / "model")
  shutil.copytree(assets["dir"], model_dir)
  data = _largest_data_file(model_dir)
  variables = os.path.join(model_dir, "variables")
  if damage == "flip data":
    _flip(data, os.path.getsize(data) // 2, 64)
  elif damage == "delete data file":
    os.remove(data)
  elif damage == "truncate data file":
    open(data, "r+b").truncate(os.path.getsize(data) // 3)
  elif damage == "delete _METADATA":
    os.remove(os.path.join(variables, "_METADATA"))
  elif damage == "delete manifest":
    os.remove(os.path.join(variables, "manifest.ocdbt"))
  else:
    shutil.rmtree(variables)
  with pytest.raises(CheckpointError, match="damaged") as e:
    inference.load(model_dir)
  assert model_dir in str(e.value) and "re-convert from the .pt" in str(e.value).lower()
  assert "TensorStore" not in str(e.value)


def test_converted_directory_records_and_checks_its_digest(assets):
  recorded = checkpoints.recorded_digest(assets["dir"])
  assert recorded and len(recorded) == 64
  variables, config = checkpoints.load_model(assets["dir"])
  assert checkpoints.variables_digest(variables) == recorded
  assert "integrity" not in config                     # the architecture config stays clean
  assert checkpoints.checkpoint_identity(assets["dir"])["variables_sha256"] == recorded


def test_nan_weights_are_reported_as_such(assets, tmp_path):
  sd = torch.load(assets["pt"], weights_only=True)
  key = "blocks.1.attn.qkv.weight"
  sd[key][0, 0] = float("nan")
  pt = str(tmp_path / "nan.pt")
  torch.save(sd, pt)
  with pytest.raises(CheckpointError, match="NaN/inf") as e:
    inference.load(pt, num_heads=HEADS)
  assert key in str(e.value) and "internal error" not in str(e.value)
  variables, config = checkpoints.load_model(assets["dir"])
  leaves, tree = jax.tree_util.tree_flatten(jax.tree.map(np.array, variables))
  leaves[0].reshape(-1)[0] = np.inf
  host = jax.tree_util.tree_unflatten(tree, leaves)
  model_dir = str(tmp_path / "nan_dir")
  checkpoints.save_model(model_dir, host, config)
  with pytest.raises(CheckpointError, match="NaN/inf"):
    checkpoints.load_model(model_dir)


# -------------------------------------------------------------------------- 6. 16-bit PNG
def test_sixteen_bit_png_is_scaled_not_clipped():
  values = (np.arange(112 * 112).reshape(112, 112) * 5 % 65536).astype(np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(values).save(buffer, format="PNG")
  data = buffer.getvalue()
  assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
  expected = np.round(values / 257.0).astype(np.uint8)
  decoded = preprocess.decode_image(data)
  np.testing.assert_array_equal(decoded, np.repeat(expected[..., None], 3, axis=-1))
  built = np.asarray(Image.open(io.BytesIO(base.validated_image_bytes(data, "grey16"))))
  np.testing.assert_array_equal(built, decoded)
  assert (decoded == 255).mean() < 0.01


# ------------------------------------------------------------------ 7. indices at the edges
def test_pair_indices_are_checked():
  q = np.arange(6, dtype=np.float32).reshape(2, 3)
  emb = np.random.RandomState(0).randn(3, 8).astype(np.float32)
  with pytest.raises(ValueError, match="integer"):
    comparisons.pair_scores(emb, np.array([[0.0, 1.7]]))
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    comparisons.pair_scores(emb, np.array([[0, 3]]))
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    comparisons.image_to_pair_quality(q, np.array([[0, -1]]))
  with pytest.raises(ValueError, match="integer"):
    comparisons.image_to_pair_quality(q, np.array([[0.0, 1.0]]))
  with pytest.raises(ValueError, match=r"\[0, 3\)"):       # under jit, concrete pairs
    jax.jit(lambda x: comparisons.image_to_pair_quality(x, np.array([[0, 5]])))(q)
  traced = jax.jit(comparisons.image_to_pair_quality)(q, jnp.array([[0, 5], [-1, 1], [2, 1]]))
  assert np.isnan(traced[:, :2]).all()                     # never clamped or wrapped
  np.testing.assert_array_equal(traced[:, 2], np.minimum(q[:, 2], q[:, 1]))
  np.testing.assert_array_equal(comparisons.image_to_pair_quality(q, np.array([[0, 2]])),
                                [[0.0], [3.0]])


# ------------------------------------------------------------------------- crafted .bin
class _NoBuild:
  """Pickles as numpy's ndarray reconstruct with no BUILD (no __setstate__ data)."""

  def __reduce__(self):
    try:
      from numpy._core.multiarray import _reconstruct
    except ImportError:      # numpy < 2
      from numpy.core.multiarray import _reconstruct
    return (_reconstruct, (np.ndarray, (0,), b"b"))


def test_bin_with_unbuilt_ndarray_is_a_data_error(tmp_path):
  path = tmp_path / "crafted.bin"
  path.write_bytes(pickle.dumps(([_NoBuild(), b"x"], [True]), protocol=2))
  with pytest.raises(base.DataError, match="never follows"):
    verification_bin.read_bin(path)
  path.write_bytes(pickle.dumps(([b"a", b"b"], _NoBuild()), protocol=2))
  with pytest.raises(base.DataError):
    verification_bin.read_bin(path)


# ------------------------------------------------------------------------ training resume
def test_resumed_training_refuses_another_config(tmp_path):
  from configs import train_tiny
  config = train_tiny.get_config("size=smoke")
  out = str(tmp_path)
  trainer.check_resume_config(config, out, None)           # a new run records its config
  assert os.path.exists(os.path.join(out, trainer.RUN_CONFIG))
  config.stop_after, config.progress = 3, False
  trainer.check_resume_config(config, out, 3)              # fine to change
  config.optim.lr = 1e-2
  config.architecture.num_heads = 4
  with pytest.raises(ValueError, match=r"optim\.lr.*--config.output") as e:
    trainer.check_resume_config(config, out, 3)
  assert "architecture.num_heads" in str(e.value)


# -------------------------------------------------------------------------- identity units
def test_identity_helpers(tmp_path):
  f = tmp_path / "a.bin"
  f.write_bytes(b"x" * 100)
  one = identity.file_identity(f)
  _replace_keeping_mtime(f, lambda p: open(p, "wb").write(b"y" * 100))
  assert identity.file_identity(f) != one                  # content, not only size + mtime
  assert identity.changes({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}) == ["b.c: 2 → 3"]
  missing = identity.files_identity([f, tmp_path / "gone.png"])
  assert missing["missing"] == 1


# --------------------------------------------- issue 21, item 1: what is hashed is what was loaded
def test_a_checkpoint_re_exported_while_eval_runs_is_not_served_stale(assets, bins, monkeypatch):
  """Eval loads the model, builds the data set (hours at IJB-C size), then runs the quality
  stage: a re-export landing in that window was recorded by its new bytes for the old model's
  scores, and a rerun (which loads the new model) said "cached" and returned the old scores.
  A converted directory: test_a_directory_re_exported_while_it_loads_is_loaded_again."""
  model = bins / "q.pt"
  shutil.copyfile(assets["pt"], model)
  export = lambda: shutil.copyfile(assets["other_pt"], model)                    # noqa: E731
  config = _eval_config(assets, bins, **{"quality_model.path": str(model)})
  cache = stages.StageCache(str(bins / "cache"), progress=False)
  real_open = benchmarks.open_benchmark

  def open_while_re_exported(name, cfg):
    bench = real_open(name, cfg)
    export()                   # the re-export lands while the data set builds
    return bench

  spec = pipeline.load_quality_models(config)[0]
  monkeypatch.setattr(benchmarks, "open_benchmark", open_while_re_exported)
  first = pipeline.quality_stage(cache, benchmarks.open_benchmark("lfw", config), spec, config)
  monkeypatch.undo()
  rerun_spec = pipeline.load_quality_models(config)[0]                 # the new model
  rerun = pipeline.quality_stage(cache, benchmarks.open_benchmark("lfw", config), rerun_spec,
                                 config)
  assert not rerun.cached
  assert not np.allclose(rerun["exit_scores"], first["exit_scores"])
  assert rerun_spec.model.identity == checkpoints.checkpoint_identity(model)
  assert spec.model.identity != rerun_spec.model.identity


def test_a_special_file_as_a_checkpoint_or_mapping_is_named_not_opened(tmp_path):
  from exfiqa_jax import quality_mapping
  fifo = tmp_path / "model.pt"
  os.mkfifo(fifo)
  with pytest.raises(identity.SpecialFileError, match=f"{fifo} is a named pipe"):
    checkpoints.checkpoint_identity(fifo)
  with pytest.raises(identity.SpecialFileError, match=f"{fifo} is a named pipe"):
    checkpoints.read_pt(fifo)
  os.mkfifo(tmp_path / "m.json")
  with pytest.raises(ValueError, match="m.json is a named pipe.*--config.quality_mapping="):
    quality_mapping.mapping_for(None, str(tmp_path / "m.json"))


# ------------------------------------ issue 21, item 2: one run per output folder (eval, early_exit, demo)
def _task_and_window(job):
  """(run, config of a fresh output folder, the module and name of a function the task calls
  after taking its output folder: the window in which a second run lands)."""
  from configs import demo as demo_config
  from configs import early_exit as early_exit_config
  from exfiqa_jax.tasks import demo, early_exit
  from exfiqa_jax.tasks import eval as eval_task
  if job == "eval":
    return eval_task.run, lambda out: eval_config(["lfw"], output=out), pipeline, \
        "load_quality_models"
  if job == "early_exit":
    return early_exit.run, lambda out: worlds.override(early_exit_config.get_config("size=smoke"),
                                                       output=out), \
        pipeline, "load_quality_models"
  return demo.run, lambda out: worlds.override(demo_config.get_config(), output=out), demo, \
      "train_model"


@pytest.mark.parametrize("job", ["eval", "early_exit", "demo"])
def test_a_second_run_into_a_busy_output_folder_fails_at_once(tmp_path, monkeypatch, job):
  """Run B (other images) starts while run A works in the same --config.output: B fails before
  any work, naming A (PID, host, start) and the flag that picks another folder; A's folder is
  free again once A ends."""
  run, config_for, module, window = _task_and_window(job)
  out = str(tmp_path / "out")
  seen = {}

  class Stop(Exception):
    pass

  def run_b_inside_a(*args, **kwargs):
    with pytest.raises(files.FolderLockedError) as e:
      run(config_for(out))
    seen["message"] = str(e.value)
    raise Stop()                              # the rest of A is not this test's concern

  monkeypatch.setattr(module, window, run_b_inside_a)
  with pytest.raises(Stop):
    run(config_for(out))
  for part in (f"PID {os.getpid()}", socket.gethostname(), f"{job},", "since",
               "--config.output=<another folder>"):
    assert part in seen["message"], (part, seen["message"])
  assert not os.path.exists(os.path.join(out, files.LOCK_NAME))     # released when A ended


def test_precomputed_embeddings_rewritten_while_read_are_refused(tmp_path, monkeypatch):
  """The embeddings file is identified, then read when the stage computes: a rewrite landing
  in between was cached (the new rows) under the old file's identity."""
  rng = np.random.default_rng(0)
  bench = benchmarks.array_benchmark("b", np.zeros((4, 8, 8, 3), np.uint8), list("abcd"),
                                     np.array([[0, 1], [2, 3]]), np.array([True, False]))
  file = tmp_path / "embeddings.npy"
  np.save(file, rng.normal(size=(4, 8)).astype(np.float32))
  config = eval_config(["b"], output=str(tmp_path / "out"))
  real = pipeline.checks.precomputed_embeddings

  def rewritten_then_read(path, b):
    np.save(file, rng.normal(size=(4, 8)).astype(np.float32))     # same size, new rows
    return real(path, b)

  monkeypatch.setattr(pipeline.checks, "precomputed_embeddings", rewritten_then_read)
  cache = stages.StageCache(str(tmp_path / "cache"), progress=False)
  with pytest.raises(RuntimeError, match="embeddings.npy .*changed while this run read it"):
    pipeline.embed_stage(cache, bench, "precomputed:e", f"precomputed:{file}", [], config)
  monkeypatch.undo()
  stage = pipeline.embed_stage(cache, bench, "precomputed:e", f"precomputed:{file}", [], config)
  np.testing.assert_array_equal(stage["embedding"], np.load(file))


def test_early_exit_refuses_a_read_only_model_directory_before_any_work(assets, tmp_path,
                                                                         monkeypatch):
  """The mapping and the cascades are stored with the model at the END of the study: a
  directory that cannot be written failed only after everything was computed."""
  from configs import early_exit as early_exit_config
  from exfiqa_jax.evaluation import early_exit as study
  from exfiqa_jax.tasks import early_exit
  model = tmp_path / "model"
  shutil.copytree(assets["dir"], model)
  real = files.probe_writable

  def read_only(folder):        # what a read-only mount does (root writes through chmod)
    if os.path.abspath(folder) == str(model):
      raise PermissionError(errno.EROFS, "Read-only file system")
    real(folder)

  monkeypatch.setattr(files, "probe_writable", read_only)
  monkeypatch.setattr(study, "analyse", lambda *a, **k: pytest.fail("the study ran"))
  config = worlds.override(early_exit_config.get_config("size=smoke"),
                           output=str(tmp_path / "out"), **{"quality_model.path": str(model)})
  config.quality_model.num_heads = HEADS
  with pytest.raises(ValueError, match=r"cannot write into the model directory .*Read-only.*"
                                       r"--config.early_exit.mapping.store_with_model=False and "
                                       r"--config.early_exit.cascade.store_with_model=False"):
    early_exit.run(config)
  config.early_exit.mapping.store_with_model = False
  config.early_exit.cascade.store_with_model = False
  monkeypatch.setattr(early_exit.pipeline, "load_external_scores",    # past the check
                      lambda *a, **k: (_ for _ in ()).throw(KeyError("went on")))
  with pytest.raises(KeyError, match="went on"):       # nothing stored there: no check
    early_exit.run(config)


def test_a_directory_re_exported_while_it_loads_is_loaded_again(assets, tmp_path, monkeypatch,
                                                                 caplog):
  """The config is read first, the variables after: a re-export landing in between gave
  variables of the new export under the config (and digest) of the old one."""
  model = tmp_path / "model"
  shutil.copytree(assets["dir"], model)
  real, exported = checkpoints.abstract_variables, []

  def re_exported_meanwhile(model_config):
    if not exported:
      exported.append(checkpoints.pt_to_directory(assets["other_pt"], str(model),
                                                  num_heads=HEADS))
    return real(model_config)

  monkeypatch.setattr(checkpoints, "abstract_variables", re_exported_meanwhile)
  loaded = checkpoints.read_model(model)
  monkeypatch.undo()
  assert exported and "replaced while it loaded" in caplog.text
  assert loaded.identity == checkpoints.checkpoint_identity(model)
  assert loaded.identity["variables_sha256"] == checkpoints.variables_digest(loaded.variables)
  assert loaded.identity != checkpoints.checkpoint_identity(assets["dir"]) | {"path": str(model)}


def test_embed_records_the_checkpoint_it_loaded_not_the_one_it_hashed_first(assets, tmp_path,
                                                                            monkeypatch):
  """embed hashed the FR checkpoint, then loaded it: a re-export in between gave embeddings of
  the new model stamped with the old one's identity, and once the old file came back a rerun
  said "complete" and returned the new model's embeddings."""
  pt = tmp_path / "fr.pt"
  shutil.copyfile(assets["pt"], pt)
  config = _embed_config(assets, tmp_path / "out", **{"fr.path": str(pt)})
  real = identity.begin_run

  def begin_then_re_exported(*args, **kwargs):
    done = real(*args, **kwargs)
    shutil.copyfile(assets["other_pt"], pt)        # lands between the hash and the load
    return done

  monkeypatch.setattr(identity, "begin_run", begin_then_re_exported)
  monkeypatch.setattr(embedding, "make_embed_fn",     # the numbers are not this case: no compile
                      lambda *a: lambda variables, images: np.zeros((images.shape[0], 4)))
  embed.run(config)
  monkeypatch.undo()
  assert embed.run(config)["skipped"]              # the model that run loaded: complete
  shutil.copyfile(assets["pt"], pt)                 # the old model again: computed again
  monkeypatch.setattr(inference, "read_fr_model",
                      lambda *a, **k: (_ for _ in ()).throw(KeyError("computes again")))
  with pytest.raises(KeyError, match="computes again"):
    embed.run(config)


def test_a_second_embed_into_a_busy_output_folder_fails_at_once(assets, tmp_path, monkeypatch):
  out = tmp_path / "out"

  def embed_b_inside_a(*args, **kwargs):
    with pytest.raises(files.FolderLockedError, match=r"embed, PID .*--config.output="):
      embed.run(_embed_config(assets, out))
    raise KeyError("stop A")

  monkeypatch.setattr(identity, "begin_run", embed_b_inside_a)
  with pytest.raises(KeyError, match="stop A"):
    embed.run(_embed_config(assets, out))


def test_a_data_set_rebuilt_by_another_job_while_eval_reads_it_is_an_error(assets, bins,
                                                                            monkeypatch):
  """Job B (other .bin files, same data_dir) rebuilds the set while job A's stages read it:
  A's scores would mix two data sets under the identity of the first."""
  np.save(bins / "emb.npy", np.ones((8, 4), np.float32))
  config = _eval_config(assets, bins, **{"fr.path": f"precomputed:{bins / 'emb.npy'}"})
  bench = benchmarks.open_benchmark("lfw", config)
  quality = pipeline.load_quality_models(config)

  def stage_while_b_rebuilds(cache, b, spec, cfg):
    _write_bin(bins / "bins" / "lfw.bin", seed=7)
    benchmarks.open_benchmark("lfw", cfg)                      # job B: rebuilt
    return stages.Stage("q", "fp", {"name": benchmarks.image_names(b, 0, b.num_images),
                                    "exit_scores": np.zeros((b.num_images, 3))}, False)

  monkeypatch.setattr(pipeline, "quality_stage", stage_while_b_rebuilds)
  with pytest.raises(RuntimeError, match=r"lfw: the data set in .* was rebuilt by another job "
                                         r"while this run read it.*--config.data.data_dir"):
    pipeline.evaluate(config, [bench], quality)


def test_embed_expands_tilde_in_every_path_field(assets, tmp_path, monkeypatch):
  """`~` meant the home folder for --config.images but a folder named "~" for
  --config.output, and --config.fr.path=~/x.pt was not found."""
  monkeypatch.setenv("HOME", str(tmp_path))
  shutil.copytree(assets["faces"], tmp_path / "faces")
  shutil.copyfile(assets["pt"], tmp_path / "fr.pt")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(inference, "read_fr_model",     # past every path: loading is not the case
                      lambda path, *a: (_ for _ in ()).throw(KeyError(path)))
  with pytest.raises(KeyError, match=str(tmp_path / "fr.pt")):
    embed.run(_embed_config(assets, "~/out", images="~/faces", **{"fr.path": "~/fr.pt"}))
  assert (tmp_path / "out").is_dir() and not (tmp_path / "~").exists()


def test_score_images_changed_while_read_are_not_stamped(assets, tmp_path, monkeypatch, caplog):
  """An image replaced while the score job reads the folder: scores.csv is written, the stamp
  is not (it would vouch for bytes that were not all scored), and the next run scores again."""
  faces = tmp_path / "faces"
  shutil.copytree(assets["faces"], faces)
  config = _score_config(assets, tmp_path / "out", images=str(faces),
                         **{"quality_model.path": assets["pt"]})
  run_batch = inference.QualityModel.run_batch

  def run_while_an_image_changes(self, images, **kwargs):
    _replace_keeping_mtime(faces / "000.png", lambda p: shutil.copyfile(faces / "001.png", p))
    return run_batch(self, images, **kwargs)

  monkeypatch.setattr(inference.QualityModel, "run_batch", run_while_an_image_changes)
  with caplog.at_level(logging.WARNING):
    first = score.run(config)
  assert "changed while this run read them" in caplog.text
  assert os.path.exists(first["scores"]) and not (tmp_path / "out" / score_report.STAMP).exists()
  monkeypatch.setattr(inference.QualityModel, "run_batch", run_batch)
  assert not score.run(config)["cached"]              # scored again, now stamped
  assert score.run(config)["cached"]


def test_embed_images_changed_while_read_are_not_stamped(assets, tmp_path, monkeypatch, caplog):
  faces = tmp_path / "faces"
  shutil.copytree(assets["faces"], faces)
  config = _embed_config(assets, tmp_path / "out", images=str(faces))

  def embed_while_an_image_changes(*args):
    def embed_fn(variables, images):
      _replace_keeping_mtime(faces / "000.png",
                             lambda p: shutil.copyfile(faces / "001.png", p))
      return np.zeros((images.shape[0], 4))
    return embed_fn

  monkeypatch.setattr(embedding, "make_embed_fn", embed_while_an_image_changes)
  embed.run(config)
  assert "changed while this run read them" in caplog.text
  assert not (tmp_path / "out" / embed.STAMP).exists()
  assert (tmp_path / "out" / "embeddings.npy").exists()
