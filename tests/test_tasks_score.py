"""The scoring command and the Python API, end to end, against the PyTorch twin.

Images are random PNG/JPEG files (some not 112×112) decoded here with PIL independently of
exfiqa_jax; the twin (exfiqa_jax/testing/torch_reference.py) gives the reference exit and ATTN scores.
Tolerance: atol 1e-4 against the twin; 1e-5 between runs of our own code (devices, orders).
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from configs import score as score_config
from exfiqa_jax import convert, inference, models
from exfiqa_jax.methods import vitnt
from exfiqa_jax.tasks import score
from exfiqa_jax.data import preprocess
from exfiqa_jax.evaluation import score_chunks, stages
from exfiqa_jax.models import vit
from exfiqa_jax.testing import baselines_torch as bt
from exfiqa_jax.testing import fr_torch_reference as ref_fr
from exfiqa_jax.testing import torch_reference as ref
from exfiqa_jax.testing import worlds
from exfiqa_jax.testing.subproc import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_fifo = pytest.mark.skipif(not (hasattr(os, "mkfifo") and os.path.exists("/dev/zero")),
                                reason="needs named pipes and /dev/zero")
# (relative name, height, width): 11 files, not a multiple of the tiny batch (8)
FILES = [("a/001.png", 112, 112), ("a/002.jpg", 120, 100), ("a/sub/003.png", 112, 112),
         ("b/004.jpeg", 96, 96), ("b/005.png", 130, 130), ("c.png", 112, 112),
         ("d/006.jpg", 112, 112), ("d/007.png", 80, 90), ("d/008.png", 112, 112),
         ("e/009.png", 112, 112), ("e/010.jpg", 150, 140)]


def _twin(mode: str, seed: int):
  cfg = vit.tiny_config(mode)
  model = ref.VitFiqaTorch(**ref.tiny_kwargs(mode))
  ref.random_init_(model, seed=seed)
  return cfg, model.eval()


def _decode_reference(path: str) -> np.ndarray:
  """Independent decode: PIL → RGB → bilinear 112 → uint8 [112, 112, 3]."""
  image = Image.open(path).convert("RGB")
  if image.size != (112, 112):
    image = image.resize((112, 112), Image.BILINEAR)
  return np.asarray(image, np.uint8)


def _twin_scores(model, images_uint8: np.ndarray) -> dict[str, np.ndarray]:
  x = torch.from_numpy((images_uint8.astype(np.float32) / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)
  with torch.no_grad():
    exit_scores, embeddings = model.exits(x)
    attn_scores, attn_maps = model.attention(x)
  out = {"embedding": embeddings[:, -1], "attn_scores": attn_scores, "attn_maps": attn_maps}
  if exit_scores is not None:
    out["exit_scores"] = exit_scores
  return {k: v.numpy() for k, v in out.items()}


def _read_csv(path) -> tuple[list[str], list[str], np.ndarray]:
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  return rows[0], [r[0] for r in rows[1:]], np.asarray([r[1:] for r in rows[1:]], np.float64)


def _config(**overrides):
  return worlds.override(score_config.get_config("size=tiny"), **overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("score")
  rng = np.random.RandomState(0)
  faces, swapped = root / "faces", root / "swapped"
  for name, h, w in FILES:
    pixels = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    path = faces / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95) if name.endswith(("jpg", "jpeg")) else \
        Image.fromarray(pixels).save(path)
    # the same decoded pixels stored channel-swapped (lossless), as CR-FIQA's scripts do
    decoded = np.asarray(Image.open(path).convert("RGB"))
    out = (swapped / name).with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(decoded[..., ::-1])).save(out)
  cfg, model = _twin("token", seed=11)
  torch.save(model.state_dict(), root / "token.pt")
  images = np.stack([_decode_reference(str(faces / n)) for n, _, _ in FILES])
  return {"root": root, "faces": faces, "swapped": swapped, "cfg": cfg,
          "ckpt": str(root / "token.pt"), "ref": _twin_scores(model, images), "images": images}


def _check_against_twin(path, ref_scores, names, depth):
  header, got_names, values = _read_csv(path)
  exits = [f"exit_{l}" for l in range(1, depth + 1)]
  attn = [f"attn_{l}" for l in range(1, depth + 1)]
  assert header == ["image"] + exits + ["ex_fiqa_f", "ex_fiqa_fw"] + attn
  assert got_names == names
  exit_scores = ref_scores["exit_scores"]
  np.testing.assert_allclose(values[:, :depth], exit_scores, atol=1e-4)
  np.testing.assert_allclose(values[:, depth], exit_scores.mean(1), atol=1e-4)
  w = np.arange(1, depth + 1) / np.arange(1, depth + 1).sum()
  np.testing.assert_allclose(values[:, depth + 1], exit_scores @ w, atol=1e-4)
  np.testing.assert_allclose(values[:, depth + 2:], ref_scores["attn_scores"], atol=1e-4)
  return values


def test_cli_end_to_end_matches_the_twin(data, tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "main.py", "--config=configs/score.py:size=tiny",
       f"--config.quality_model.path={data['ckpt']}", f"--config.images={data['faces']}",
       f"--config.output={out}", f"--config.quality_model.num_heads={data['cfg'].num_heads}"],
      cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-4000:]
  names = sorted(n for n, _, _ in FILES)
  order = [n for n, _, _ in FILES]
  perm = [order.index(n) for n in names]
  ref_scores = {k: v[perm] for k, v in data["ref"].items()}
  values = _check_against_twin(out / "scores.csv", ref_scores, names, data["cfg"].depth)
  npz = np.load(out / "scores.npz")
  assert list(npz["image"]) == names
  np.testing.assert_allclose(npz["exit_scores"], values[:, :data["cfg"].depth], atol=1e-6)
  assert "img/s" in proc.stderr     # the progress bar reports a rate
  assert not os.path.exists(out / "skipped.txt")


def test_bgr_on_swapped_files_equals_rgb(data, tmp_path):
  rgb = score.run(_config(**{"quality_model.path": data["ckpt"]}, images=str(data["faces"]),
                          output=str(tmp_path / "rgb"),
                          **{"quality_model.num_heads": data["cfg"].num_heads}))
  bgr = score.run(_config(**{"quality_model.path": data["ckpt"]}, images=str(data["swapped"]),
                          output=str(tmp_path / "bgr"),
                          **{"quality_model.num_heads": data["cfg"].num_heads,
                             "data.channel_order": "bgr"}))
  a, b = np.load(rgb["npz"]), np.load(bgr["npz"])
  for key in ("exit_scores", "ex_fiqa_f", "ex_fiqa_fw", "attn_scores"):
    np.testing.assert_allclose(a[key], b[key], atol=1e-6)
  # and a second run with the same inputs is not recomputed
  again = score.run(_config(**{"quality_model.path": data["ckpt"]}, images=str(data["faces"]),
                            output=str(tmp_path / "rgb"),
                            **{"quality_model.num_heads": data["cfg"].num_heads}))
  assert again["cached"]


def test_eight_devices_give_the_same_scores(data, tmp_path):
  code = f"""
    import jax
    assert jax.device_count() == 8
    from configs import score as score_config
    from exfiqa_jax.tasks import score
    c = score_config.get_config("size=tiny")
    c.quality_model.path, c.images = {data['ckpt']!r}, {str(data['faces'])!r}
    c.output = {str(tmp_path / 'eight')!r}
    c.quality_model.num_heads = {data['cfg'].num_heads}
    c.batch_size = 4   # rounded up to 8 = one row per device
    score.run(c)
  """
  run_python(code, devices=8)
  one = score.run(_config(**{"quality_model.path": data["ckpt"]}, images=str(data["faces"]),
                          output=str(tmp_path / "one"),
                          **{"quality_model.num_heads": data["cfg"].num_heads}))
  h1, n1, v1 = _read_csv(one["scores"])
  h8, n8, v8 = _read_csv(tmp_path / "eight" / "scores.csv")
  assert h1 == h8 and n1 == n8
  np.testing.assert_allclose(v8, v1, atol=1e-5)


@needs_fifo
def test_list_file_skip_unreadable_and_corrupt_error(data, tmp_path, special_opens):
  (tmp_path / "broken.png").write_bytes(b"this is not an image")
  abs_path = str(data["faces"] / "b/005.png")
  listed = ["a/002.jpg", "broken.png", abs_path, "missing.png", "pipe.jpg", "dir.jpg", "c.png"]
  # relative entries resolve against the list file's folder: link the faces next to it
  list_dir = tmp_path / "lists"
  list_dir.mkdir()
  for rel in ("a/002.jpg", "c.png"):
    (list_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    os.link(data["faces"] / rel, list_dir / rel)
  os.replace(tmp_path / "broken.png", list_dir / "broken.png")
  os.mkfifo(list_dir / "pipe.jpg")              # listed special files: unreadable, never opened
  (list_dir / "dir.jpg").mkdir()
  (list_dir / "list.txt").write_text("\n".join(listed) + "\n")
  common = dict(**{"quality_model.path": data["ckpt"]}, images=str(list_dir / "list.txt"),
                **{"quality_model.num_heads": data["cfg"].num_heads})
  with pytest.raises(preprocess.ImageError, match="broken.png") as e:
    score.run(_config(output=str(tmp_path / "strict"), **common))
  assert "skip_unreadable" in str(e.value)
  assert not os.path.exists(tmp_path / "strict" / "scores.csv")
  result = score.run(_config(output=str(tmp_path / "skip"), skip_unreadable=True, **common))
  assert result["skipped"] == ["broken.png", "missing.png", "pipe.jpg", "dir.jpg"]
  skipped = (tmp_path / "skip" / "skipped.txt").read_text().splitlines()
  assert [line.split("\t")[0] for line in skipped] == result["skipped"]
  assert "named pipe" in skipped[2] and "folder" in skipped[3]
  order = [n for n, _, _ in FILES]
  idx = [order.index(n) for n in ("a/002.jpg", "b/005.png", "c.png")]
  ref_scores = {k: v[idx] for k, v in data["ref"].items()}
  _check_against_twin(tmp_path / "skip" / "scores.csv", ref_scores,
                      ["a/002.jpg", abs_path, "c.png"], data["cfg"].depth)


@needs_fifo
def test_a_folder_scores_only_its_regular_image_files(data, tmp_path, special_opens, caplog):
  folder = tmp_path / "faces"
  kept = ["a/001.png", "c.png", "e/010.jpg"]
  for rel in kept:
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    os.link(data["faces"] / rel, folder / rel)
  for rel in ("._c.png", "a/._001.png", ".thumbnails/c.png", "__MACOSX/a/._001.png", "e/x.heic"):
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_bytes(b"\x00\x05\x16\x07 not a face")
  os.mkfifo(folder / "a" / "pipe.jpg")
  os.symlink("/dev/zero", folder / "zero.png")
  with open(os.fsencode(folder) + b"/bad\xff.png", "wb") as f:     # a name that is not UTF-8
    f.write((folder / "c.png").read_bytes())
  common = {"quality_model.path": data["ckpt"], "quality_model.num_heads": data["cfg"].num_heads}
  with caplog.at_level("INFO"):
    result = score.run(_config(images=str(folder), output=str(tmp_path / "out"), **common))
  order = [n for n, _, _ in FILES]
  ref_scores = {k: v[[order.index(n) for n in kept]] for k, v in data["ref"].items()}
  _check_against_twin(result["scores"], ref_scores, kept, data["cfg"].depth)
  assert not result["skipped"]                  # not images: logged, not "unreadable images"
  line = next(r.getMessage() for r in caplog.records if "not images" in r.getMessage())
  assert "8 entries" in line and "pipe.jpg" in line and "bad\\xff.png" in line
  # a special file given as the model or the image list: refused by name, with its flag
  os.mkfifo(tmp_path / "model.pt")
  os.mkfifo(tmp_path / "list.txt")
  for flag, kwargs in (("quality_model.path", dict(common, **{"quality_model.path": str(
      tmp_path / "model.pt")}, images=str(folder))), ("images", dict(
          common, images=str(tmp_path / "list.txt")))):
    with pytest.raises(OSError, match=f"named pipe.*--config.{flag}="):
      score.run(_config(output=str(tmp_path / "refused"), **kwargs))


def test_empty_input_is_a_clear_error(tmp_path, data):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "notes.txt").write_text("no images here")
  with pytest.raises(ValueError, match="no images in"):
    score.run(_config(**{"quality_model.path": data["ckpt"]}, images=str(tmp_path / "empty"),
                      output=str(tmp_path / "o")))


def test_api_any_batch_resize_and_attention_maps(data):
  model = inference.load(data["ckpt"], num_heads=data["cfg"].num_heads, batch_size=4)
  raw = [np.asarray(Image.open(data["faces"] / n).convert("RGB")) for n, _, _ in FILES[:3]]
  # a single non-112 image, then a batch of 112² crops larger than batch_size
  one = model.score(raw[1][None])
  np.testing.assert_allclose(one["exit_scores"], data["ref"]["exit_scores"][1:2], atol=1e-4)
  out = model.score(data["images"][:7], attn_maps=True)
  assert set(out) == {"exit_scores", "ex_fiqa_f", "ex_fiqa_fw", "attn_scores", "embedding",
                      "attn_maps"}
  np.testing.assert_allclose(out["exit_scores"], data["ref"]["exit_scores"][:7], atol=1e-4)
  np.testing.assert_allclose(out["attn_scores"], data["ref"]["attn_scores"][:7], atol=1e-4)
  np.testing.assert_allclose(out["embedding"], data["ref"]["embedding"][:7], atol=1e-4)
  cfg = data["cfg"]
  assert out["attn_maps"].shape == (7, cfg.depth, (cfg.img_size // cfg.patch_size) ** 2)
  with pytest.raises(ValueError, match="uint8"):
    model.score(data["images"][:2].astype(np.float32))


def test_fr_mode_has_attention_and_vitnt_columns(tmp_path, data):
  cfg, model = _twin("fr", seed=5)
  torch.save({"state_dict": {"net." + k: v for k, v in model.state_dict().items()}},
             tmp_path / "fr.pt")
  result = score.run(_config(**{"quality_model.path": str(tmp_path / "fr.pt")},
                             images=str(data["faces"]),
                             output=str(tmp_path / "fr"), **{"quality_model.num_heads": cfg.num_heads}))
  header, names, values = _read_csv(result["scores"])
  assert header == ["image"] + [f"attn_{l}" for l in range(1, cfg.depth + 1)] + [
      "vitnt", "vitnt_uniform"]                  # ATTN-FIQA and ViTNT-FIQA from one pass
  order = [n for n, _, _ in FILES]
  perm = [order.index(n) for n in names]
  ref_scores = _twin_scores(model, data["images"][perm])
  np.testing.assert_allclose(values[:, :cfg.depth], ref_scores["attn_scores"], atol=1e-4)
  variables, config = inference.load_variables(tmp_path / "fr.pt", num_heads=cfg.num_heads)
  want = vitnt.scorer(models.get_model(config), variables, config)(data["images"][perm])
  np.testing.assert_allclose(values[:, cfg.depth:], np.stack([want["vitnt"],
                                                              want["vitnt_uniform"]], 1),
                             rtol=1e-5)


def test_a_method_writes_its_columns_and_its_options_recompute(tmp_path, data):
  twin = ref_fr.randomize_(bt.CRFIQAIResNet((1, 1, 1, 1), (8, 16, 24, 32), 64), seed=3)
  pth = tmp_path / "cr.pth"
  convert.torch_io.save_state_dict(bt.numpy_state_dict(twin), pth)
  images = data["images"][[0, 5, 8]]
  with torch.no_grad():
    qs = twin(bt.torch_input(images))[1].numpy()[:, 0]
  listing = tmp_path / "list.txt"
  listing.write_text("".join(f"{data['faces'] / n}\n" for n in ("a/001.png", "c.png",
                                                                   "d/008.png")))
  out = tmp_path / "cr"
  first = score.run(_config(**{"quality_model.path": f"crfiqa:{pth}"}, images=str(listing),
                            output=str(out)))
  header, names, values = _read_csv(first["scores"])
  assert header == ["image", "crfiqa"] and len(names) == 3
  np.testing.assert_allclose(values[:, 0], qs, rtol=1e-4, atol=1e-5)
  npz = np.load(out / "scores.npz")
  assert str(npz["method"]) == "crfiqa" and set(npz.files) >= {"crfiqa", "image"}
  assert score.run(_config(**{"quality_model.path": str(pth), "quality_model.method": "crfiqa"},
                           images=str(listing), output=str(out)))["cached"]
  # SER-FIQ on the same checkpoint (its backbone); a changed option recomputes
  for passes, cached in ((3, False), (3, True), (4, False)):
    result = score.run(_config(**{"quality_model.path": f"serfiq:{pth}",
                                  "quality_model.serfiq.passes": passes},
                               images=str(listing), output=str(out)))
    assert result["cached"] is cached
  assert _read_csv(result["scores"])[0] == ["image", "serfiq"]
  with pytest.raises(ValueError, match="--config.quality_model.method=vitnt needs a ViT"):
    score.run(_config(**{"quality_model.path": str(pth), "quality_model.method": "vitnt"},
                      images=str(listing), output=str(tmp_path / "bad")))
  with pytest.raises(ValueError, match="'cr' is not a quality method"):
    score.run(_config(**{"quality_model.path": f"cr:{pth}"}, images=str(listing),
                      output=str(tmp_path / "bad")))


# ------------------------------------------------------- resumable runs, unreadable images
def _chunked(data, output, **overrides):
  """The tiny model in chunks of one batch of 4: the 11 faces are chunks [0,4) [4,8) [8,11)."""
  return score.run(_config(**{"quality_model.path": data["ckpt"],
                              "quality_model.num_heads": data["cfg"].num_heads},
                           images=overrides.pop("images", str(data["faces"])),
                           output=str(output), batch_size=4, chunk_images=4, **overrides))


def test_a_run_stopped_after_chunk_k_resumes_to_the_same_bytes(data, tmp_path, monkeypatch):
  whole = _chunked(data, tmp_path / "whole")
  stored = []

  def ctrl_c_after_two(name):          # the user presses Ctrl-C once chunk 2 is stored
    stored.append(name)
    if len(stored) == 2:
      raise KeyboardInterrupt
  monkeypatch.setattr(stages.StageCache, "after_stage", ctrl_c_after_two)
  out = tmp_path / "stopped"
  with pytest.raises(KeyboardInterrupt) as e:
    _chunked(data, out)
  assert e.value.__notes__ == [f"8 of 11 images are scored and kept in {out / 'score_chunks'}; "
                               "the same command resumes there"]
  assert not (out / "scores.csv").exists() and not (out / "score_stamp.json").exists()
  stored.clear()
  monkeypatch.setattr(stages.StageCache, "after_stage", stored.append)
  again = _chunked(data, out)
  assert again["resumed"] == 8 and len(stored) == 3          # chunks 1, 2 loaded; 3 scored
  assert (out / "scores.csv").read_bytes() == (tmp_path / "whole" / "scores.csv").read_bytes()
  a, b = np.load(whole["npz"]), np.load(again["npz"])
  assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
  assert not (out / "score_chunks").exists()                  # scores.npz holds every row now


def test_unreadable_images_are_all_listed_in_one_pass(data, tmp_path, monkeypatch):
  folder = tmp_path / "faces"
  shutil.copytree(data["faces"], folder)
  bad = ["a/bad1.jpg", "d/bad2.png", "e/zbad3.jpg"]       # rows 2, 10, 13: chunks 1, 3, 4
  (folder / bad[0]).write_bytes(b"\xff\xd8\xff\xe0 a truncated JPEG")
  (folder / bad[1]).write_bytes(b"not an image at all")
  (folder / bad[2]).write_bytes(b"")
  out = tmp_path / "out"
  monkeypatch.setattr(score, "SHOWN", 2)
  with pytest.raises(preprocess.ImageError) as e:
    _chunked(data, out, images=str(folder))
  message = str(e.value)
  assert message.startswith("3 of 14 images cannot be read:")
  assert bad[0] in message and bad[1] in message and "... and 1 more" in message
  assert f"All 3 are listed in {out / 'unreadable.txt'}" in message
  assert "--config.skip_unreadable=True" in message
  listed = (out / "unreadable.txt").read_text().splitlines()
  assert [line.split("\t")[0] for line in listed] == bad
  assert not (out / "scores.csv").exists()
  # the first is fixed; the others are skipped: only the fixed file's chunk is scored again
  Image.fromarray(data["images"][0]).save(folder / bad[0])
  result = _chunked(data, out, images=str(folder), skip_unreadable=True)
  assert result["skipped"] == bad[1:] and result["resumed"] == 10
  assert (out / "skipped.txt").read_text().splitlines()[1].startswith(bad[2] + "\t")
  assert not (out / "unreadable.txt").exists() and not (out / "score_chunks").exists()
  header, names, values = _read_csv(result["scores"])
  order = [n for n, _, _ in FILES]
  assert names == sorted(order + bad[:1])
  rows = [names.index(n) for n in order]
  np.testing.assert_allclose(values[rows, :data["cfg"].depth], data["ref"]["exit_scores"],
                             atol=1e-4)


def test_the_scores_record_the_checkpoint_that_was_loaded(data, tmp_path, monkeypatch, caplog):
  """Issue 21, item 1: the score job hashed the path, then loaded it; a file re-exported in
  between was recorded by the bytes it did not load, and once the old file was back a rerun
  said "already complete" with the other model's scores."""
  ckpt = tmp_path / "model.pt"
  shutil.copyfile(data["ckpt"], ckpt)
  _, other = _twin("token", seed=12)
  torch.save(other.state_dict(), tmp_path / "other.pt")
  real_load = inference.load

  def reexported_in_the_window(path, **kwargs):
    shutil.copyfile(tmp_path / "other.pt", ckpt)
    return real_load(path, **kwargs)
  monkeypatch.setattr(inference, "load", reexported_in_the_window)
  common = {"quality_model.path": str(ckpt), "quality_model.num_heads": data["cfg"].num_heads}
  with caplog.at_level("WARNING"):
    first = score.run(_config(images=str(data["faces"]), output=str(tmp_path / "o"), **common))
  assert any("changed between the completion-stamp check and its load" in r.getMessage()
             for r in caplog.records)
  _, names, values = _read_csv(first["scores"])       # the other model's scores
  order = [n for n, _, _ in FILES]
  perm = [order.index(n) for n in names]
  assert not np.allclose(values[:, :data["cfg"].depth], data["ref"]["exit_scores"][perm],
                         atol=1e-3)
  monkeypatch.setattr(inference, "load", real_load)
  shutil.copyfile(data["ckpt"], ckpt)                    # the first model is back
  again = score.run(_config(images=str(data["faces"]), output=str(tmp_path / "o"), **common))
  assert not again["cached"]
  ref_scores = {k: v[perm] for k, v in data["ref"].items()}
  _check_against_twin(again["scores"], ref_scores, names, data["cfg"].depth)


def test_a_directory_without_a_recorded_digest_is_still_cached(data, tmp_path, caplog):
  """Its loaded identity (the digest of the restored values) has another form than the stamp
  check's hash of its files: an unchanged hash after the load keeps the stamp valid."""
  import json
  from exfiqa_jax import checkpoints
  model = worlds.save_vit(tmp_path / "m", "token", 0)
  config_file = os.path.join(model, checkpoints.CONFIG_FILE)
  with open(config_file) as f:
    recorded = json.load(f)
  del recorded[checkpoints.INTEGRITY_KEY]                # as an older version wrote it
  with open(config_file, "w") as f:
    json.dump(recorded, f)
  common = dict(images=str(data["faces"]), output=str(tmp_path / "o"),
                **{"quality_model.path": model})
  with caplog.at_level("WARNING"):
    assert not score.run(_config(**common))["cached"]
  assert not any("changed between" in r.getMessage() for r in caplog.records)
  assert score.run(_config(**common))["cached"]


def test_a_second_run_into_a_busy_output_folder_fails_at_once(data, tmp_path, monkeypatch):
  """Issue 21, item 2: run B (other images) lands inside run A in one --config.output: B fails
  before any work, naming A and the flag; A's folder is free again once A ends."""
  from exfiqa_jax import files
  out = str(tmp_path / "out")
  common = {"quality_model.path": data["ckpt"], "quality_model.num_heads": data["cfg"].num_heads}
  seen = {}

  def run_b_inside_a(*args, **kwargs):
    with pytest.raises(files.FolderLockedError) as e:
      score.run(_config(images=str(data["swapped"]), output=out, **common))
    seen["message"] = str(e.value)
    raise KeyboardInterrupt                   # the rest of A is not this test's concern
  monkeypatch.setattr(inference, "load", run_b_inside_a)
  with pytest.raises(KeyboardInterrupt):
    score.run(_config(images=str(data["faces"]), output=out, **common))
  assert f"PID {os.getpid()}" in seen["message"] and "--config.output=" in seen["message"]
  assert not os.path.exists(os.path.join(out, files.LOCK_NAME))       # released when A ended


@pytest.mark.parametrize("value", [0, -4])
def test_chunk_images_names_its_flag(data, tmp_path, value):
  with pytest.raises(ValueError, match=rf"^--config\.chunk_images={value!r}: must be a whole"):
    score.run(_config(**{"quality_model.path": data["ckpt"]}, images=str(data["faces"]),
                      output=str(tmp_path / "o"), chunk_images=value))


def test_a_tilde_means_the_home_folder_in_every_path(data, tmp_path, monkeypatch):
  """`~/…` in --config.images, .output and .quality_model.path is the home folder, never a
  folder named "~" in the working directory (issue: some fields expanded it, others not)."""
  home = tmp_path / "home"
  home.mkdir()
  shutil.copytree(data["faces"], home / "faces")
  shutil.copyfile(data["ckpt"], home / "model.pt")
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.chdir(tmp_path)
  result = score.run(_config(**{"quality_model.path": "~/model.pt",
                                "quality_model.num_heads": data["cfg"].num_heads},
                             images="~/faces", output="~/out"))
  assert result["scores"] == str(home / "out" / "scores.csv") and result["count"] == len(FILES)
  assert not (tmp_path / "~").exists()


# ------------------------------------------------------------------ the adaptive cascade
def _midpoint(values: np.ndarray, q: float) -> float:
  """A threshold halfway between two neighbouring scores: no score lies near it."""
  v = np.sort(values)
  i = int(q * (len(v) - 1))
  return float((v[i] + v[i + 1]) / 2)


def test_the_stored_cascade_scores_a_folder_as_its_numpy_reference(data, tmp_path):
  """--config.cascade: every image's score at the exit it left, that exit, the decision, its
  GFLOPs and the 0–100 value there, equal to a NumPy cascade over the plain run's exit scores
  (chunks of 8 in batches of 4: survivors carried across batches, flushed at each chunk's end);
  another target or rewritten thresholds recompute; misuse names its flag."""
  from exfiqa_jax import columns, quality_mapping
  from exfiqa_jax.models import exits
  path = worlds.save_vit(tmp_path / "m", "token", 5)
  common = {"quality_model.path": path, "images": str(data["faces"]), "batch_size": 4,
            "chunk_images": 8}
  plain = np.load(score.run(_config(**common, output=str(tmp_path / "plain")))["npz"])
  s = plain["exit_scores"].astype(np.float64)                 # [11, 3], sorted names
  depth = s.shape[1]
  mapping = quality_mapping.fit_mapping({"exit_scores": plain["exit_scores"]}, knots=5)
  quality_mapping.store_with_model(path, mapping)

  def thresholds(lo: float, hi: float) -> exits.CascadeThresholds:
    return exits.CascadeThresholds(
        exits=(1, 2, 3), reject=tuple(_midpoint(s[:, k], lo) for k in range(depth - 1)),
        accept=tuple(_midpoint(s[:, k], hi) for k in range(depth - 1)),
        tau=_midpoint(s[:, -1], 0.3))
  stored = {0.99: thresholds(0.1, 0.9), 0.95: thresholds(0.3, 0.6)}
  exits.store_with_model(path, {"headline": 0.99, "cascades": [
      {"target": t, "thresholds": thr.to_dict()} for t, thr in stored.items()]})

  def reference(thr: exits.CascadeThresholds) -> dict[str, np.ndarray]:
    left = np.full(len(s), depth)
    for k in range(depth - 1, 0, -1):       # the first exit that decides, from the back
      decides = (s[:, k - 1] < thr.reject[k - 1]) | (s[:, k - 1] > thr.accept[k - 1])
      left = np.where(decides, k, left)
    at = s[np.arange(len(s)), left - 1]
    accept = np.where(left == depth, at >= thr.tau,
                      at > np.asarray(thr.accept + (np.inf,))[left - 1])
    return {"cascade_score": at, "cascade_exit": left, "cascade_accept": accept,
            "cascade_gflops": exits.cascade_gflops(data["cfg"], thr.exits, left)}

  for asked, target in (("stored", 0.99), ("0.95", 0.95)):
    result = score.run(_config(**common, output=str(tmp_path / asked), cascade=asked))
    assert not result["cached"]
    header, names, values = _read_csv(result["scores"])
    assert header == ["image", *score_chunks.CASCADE_COLUMNS, "q100_cascade"]
    assert names == list(plain["image"])
    want = reference(stored[target])
    assert len(set(want["cascade_exit"])) == depth     # every exit decides some image here
    want["q100_cascade"] = [mapping.columns[columns.exit_name(int(e))](v)    # the map of the
                            for v, e in zip(values[:, 0], values[:, 1])]      # exit it left at
    for i, name in enumerate(header[1:]):
      np.testing.assert_allclose(values[:, i], np.asarray(want[name], np.float64),
                                 rtol=1e-6, atol=1e-5, err_msg=name)
  again = score.run(_config(**common, output=str(tmp_path / "stored"), cascade="stored"))
  assert again["cached"]
  exits.store_with_model(path, {"headline": 0.99, "cascades": [
      {"target": 0.99, "thresholds": stored[0.95].to_dict()}]})     # recalibrated
  rewritten = score.run(_config(**common, output=str(tmp_path / "stored"), cascade="stored"))
  assert not rewritten["cached"]
  np.testing.assert_array_equal(_read_csv(rewritten["scores"])[2][:, 1],
                                reference(stored[0.95])["cascade_exit"])
  for bad, match in ((dict(cascade="high"), r"--config.cascade='high': 'stored'"),
                     (dict(cascade="stored", exit=2), r"pass --config.exit=0"),
                     (dict(cascade="0.5"), r"no cascade at agreement target 0.5.*"
                                           r"\(--config.cascade=0.5\)"),
                     (dict(cascade="stored", **{"quality_model.path": data["ckpt"]}),
                      r"token.pt is a file")):
    with pytest.raises(ValueError, match=match):
      score.run(_config(**{**common, **bad}, output=str(tmp_path / "bad")))
  os.remove(os.path.join(path, exits.CASCADE_FILE))
  with pytest.raises(FileNotFoundError, match=r"run the early_exit job.*--config.cascade"):
    score.run(_config(**common, output=str(tmp_path / "bad"), cascade="stored"))
