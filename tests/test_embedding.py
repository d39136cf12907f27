"""Embedding extraction: input scales, flip conventions (vs NumPy on the PyTorch twin), padding,
8-device sharding, and the "embed" task. Tolerance 1e-5 on L2-normalised embeddings."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from exfiqa_jax.convert import iresnet_keys as ik
from configs import embed as embed_config
from exfiqa_jax import checkpoints, embedding, inference, models
from exfiqa_jax.tasks import embed
from exfiqa_jax.data import preprocess
from exfiqa_jax.testing import fr_torch_reference as ref
from exfiqa_jax.testing.subproc import run_python

TINY = (8, 16, 24, 32)


def _l2n(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def magface():
  tmodel = ref.randomize_(ref.MagFaceWrapper(ref.IResNet((1, 1, 1, 1), TINY, 64, eps=2e-5)), 4)
  sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  config = ik.MAGFACE.infer_config(sd)
  return tmodel, models.get_model(config), ik.MAGFACE.to_flax(sd, config), config


def _uint8(n, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (n, 112, 112, 3)).astype(np.uint8)


def _twin_features(tmodel, images_uint8, scale):
  x = images_uint8.astype(np.float32) / 255.0
  if scale == "minus1_1":
    x = (x - 0.5) / 0.5
  with torch.no_grad():
    f = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    ff = tmodel(torch.from_numpy(x[:, :, ::-1].transpose(0, 3, 1, 2).copy())).numpy()
  return f, ff


@pytest.mark.parametrize("convention", ["concat", "sum", "none"])
def test_flip_conventions_match_numpy_on_the_twin(magface, convention):
  tmodel, module, variables, config = magface
  images = _uint8(5)
  ours = embedding.embed_images(module, variables, images, convention=convention,
                            input_scale=config["input_scale"], batch_size=4)  # 5 → padded
  f, ff = _twin_features(tmodel, images, "0_1")
  expected = {"concat": np.concatenate([_l2n(f), _l2n(ff)], -1), "sum": _l2n(f + ff),
              "none": _l2n(f)}[convention]
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
  assert np.abs(_l2n(f) - _l2n(ff)).max() > 1e-2     # the flip really changes the features


def test_input_scale_matters(magface):
  tmodel, module, variables, _ = magface
  images = _uint8(2, seed=1)
  ours = embedding.embed_images(module, variables, images, convention="none",
                            input_scale="minus1_1")
  f, _ = _twin_features(tmodel, images, "minus1_1")
  np.testing.assert_allclose(ours, _l2n(f), atol=1e-5, rtol=0)
  wrong = embedding.embed_images(module, variables, images, convention="none", input_scale="0_1")
  assert np.abs(wrong - ours).max() > 1e-2
  with pytest.raises(ValueError, match="input_scale"):
    embedding.embed_images(module, variables, images, input_scale="imagenet")
  with pytest.raises(ValueError, match="convention"):
    embedding.embed_images(module, variables, images, convention="mean")
  with pytest.raises(ValueError, match="uint8"):
    embedding.embed_images(module, variables, images.astype(np.float32))


def test_concat_cosine_is_mean_of_the_two_cosines(magface):
  _, module, variables, config = magface
  e = embedding.embed_images(module, variables, _uint8(2, seed=2), input_scale="0_1")
  e1, e2 = e[:, :64], e[:, 64:]
  cos_concat = e[0] @ e[1] / (np.linalg.norm(e[0]) * np.linalg.norm(e[1]))
  np.testing.assert_allclose(cos_concat, 0.5 * (e1[0] @ e1[1] + e2[0] @ e2[1]), atol=1e-6)


def test_sharded_over_8_devices_matches_single_device(tmp_path, magface):
  _, module, variables, _ = magface
  images = _uint8(11, seed=3)
  np.save(tmp_path / "images.npy", images)
  np.save(tmp_path / "single.npy", embedding.embed_images(module, variables, images,
                                                      input_scale="0_1", batch_size=8))
  sd_path = tmp_path / "sd.npz"
  np.savez(sd_path, **ik.MAGFACE.to_torch(variables, {}))
  out = run_python(f"""
    import jax, numpy as np
    from exfiqa_jax.convert import iresnet_keys as ik
    from exfiqa_jax import embedding, models
    assert jax.device_count() == 8
    sd = dict(np.load({str(sd_path)!r}))
    cfg = ik.MAGFACE.infer_config(sd)
    e = embedding.embed_images(models.get_model(cfg), ik.MAGFACE.to_flax(sd, cfg),
                           np.load({str(tmp_path / 'images.npy')!r}), input_scale="0_1",
                           batch_size=8)
    print(float(np.abs(e - np.load({str(tmp_path / 'single.npy')!r})).max()))
  """)
  assert float(out.strip().splitlines()[-1]) < 1e-5


def test_embed_task_writes_atomically_and_resumes(tmp_path, magface, monkeypatch):
  tmodel, module, variables, config = magface
  folder = tmp_path / "faces" / "id1"
  folder.mkdir(parents=True)
  images = _uint8(3, seed=4)
  for i, im in enumerate(images):
    Image.fromarray(im).save(folder / f"{i}.png")
  calls = []
  monkeypatch.setattr(inference, "read_fr_model", lambda *a: calls.append(a) or (
      module, variables, dict(config), checkpoints.checkpoint_identity("x.pt")))
  cfg = embed_config.get_config()
  cfg.fr.path, cfg.fr.convention, cfg.fr.batch_size = "x.pt", "sum", 2
  cfg.images, cfg.output = str(tmp_path / "faces"), str(tmp_path / "out")
  cfg.data.decode_threads = 2
  result = embed.run(cfg)
  emb = np.load(tmp_path / "out" / "embeddings.npy")
  names = (tmp_path / "out" / "image_list.txt").read_text().split()
  assert names == [f"id1/{i}.png" for i in range(3)] and emb.shape == (3, 64)
  f, ff = _twin_features(tmodel, images, "0_1")
  np.testing.assert_allclose(emb, _l2n(f + ff), atol=1e-5, rtol=0)
  assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".")]  # no temp left
  assert not result["skipped"] and embed.run(cfg)["skipped"] and len(calls) == 1


def test_image_list_file(tmp_path):
  (tmp_path / "a.jpg").write_bytes(b"")
  (tmp_path / "list.txt").write_text("a.jpg 0.5\nsub/b.jpg 1\nc d/e f.jpg\n")
  paths, names = preprocess.read_image_list(str(tmp_path / "list.txt"))
  assert names == ["a.jpg", "sub/b.jpg", "c d/e f.jpg"] and paths[1] == str(tmp_path / "sub" / "b.jpg")
  with pytest.raises(FileNotFoundError):
    preprocess.read_image_list(str(tmp_path / "missing"))


# ---------------------------------------------------------------- FR checkpoints end to end

# Tiny FR ViTs with the released layouts (no quality token, no head_qs, tests/torch_reference.py):
#   cvlface      CVLFace ViT: patch 8 (196 tokens), MLP ratio 5, no mask_token, keys under `net.`,
#                heads not the default 8 (so --num_heads really has to reach the model)
#   insightface  arcface_torch ViT: patch 9 (144 tokens of 112²), mask_token, 8 heads
FR_VITS = {
    "cvlface": (dict(mode="fr", width=32, depth=2, num_heads=4, patch_size=8, img_size=112,
                     mlp_dim=160, embed_dim=24, mask_token=False), "net.", 4),
    "insightface": (dict(mode="fr", width=32, depth=2, num_heads=8, patch_size=9, img_size=112,
                         mlp_dim=128, embed_dim=24, mask_token=True), "", None),
}


def _save_pt(path, tmodel, prefix=""):
  torch.save({prefix + k: v.clone() for k, v in tmodel.state_dict().items()}, path)
  return str(path)


def _vit_twin(kind):
  from exfiqa_jax.testing import torch_reference as vit_ref
  kwargs, prefix, heads = FR_VITS[kind]
  twin = vit_ref.random_init_(vit_ref.VitFiqaTorch(**kwargs), seed=5).eval()
  return (lambda x: twin(x)[0]), twin, prefix, heads


@pytest.mark.parametrize("route", ["pt", "converted"])
@pytest.mark.parametrize("kind", sorted(FR_VITS))
def test_fr_vit_checkpoint_through_load_fr_model(tmp_path, kind, route):
  """A ViT FR .pt → (converters/torch_to_flax.py →) load_fr_model → embed_images = the twin."""
  from exfiqa_jax import checkpoints
  forward, twin, prefix, heads = _vit_twin(kind)
  path = _save_pt(tmp_path / "fr_vit.pt", twin, prefix)
  if route == "converted":
    checkpoints.pt_to_directory(path, str(tmp_path / "converted"), num_heads=heads or 8)
    module, variables, config = inference.load_fr_model(str(tmp_path / "converted"))
  else:
    module, variables, config = inference.load_fr_model(path, num_heads=heads)
  assert config["family"] == "vit" and config["mode"] == "fr"
  assert config["num_heads"] == (heads or 8) and config["input_scale"] == "minus1_1"
  assert config["has_mask_token"] == FR_VITS[kind][0]["mask_token"]
  images = _uint8(5, seed=6)
  ours = embedding.embed_images(module, variables, images, convention="concat",
                            input_scale=config["input_scale"], batch_size=4)   # 5 → padded
  f, ff = _twin_features(forward, images, "minus1_1")
  assert np.abs(_l2n(f) - _l2n(ff)).max() > 1e-2       # the flip changes the features
  np.testing.assert_allclose(ours, np.concatenate([_l2n(f), _l2n(ff)], -1), atol=1e-5, rtol=0)
  if heads:   # the head count is in no shape: the default would load a different model
    module8, variables8, _ = inference.load_fr_model(path)
    wrong = embedding.embed_images(module8, variables8, images, convention="concat", batch_size=4)
    assert np.abs(wrong - ours).max() > 1e-3


def test_iresnet_checkpoint_through_load_fr_model_is_folded(tmp_path):
  """An arcface_torch iResNet .pt → load_fr_model (BatchNorms folded) → embed_images = twin."""
  from exfiqa_jax.models import iresnet
  tmodel = ref.randomize_(ref.IResNet((1, 2, 1, 1), TINY, 64), seed=6)
  module, variables, config = inference.load_fr_model(_save_pt(tmp_path / "backbone.pth", tmodel))
  assert isinstance(module, iresnet.FoldedIResNet) and set(variables) == {"params"}
  assert config["family"] == "arcface_iresnet"
  images = _uint8(3, seed=7)
  ours = embedding.embed_images(module, variables, images, convention="sum",
                            input_scale=config["input_scale"])
  f, ff = _twin_features(tmodel, images, "minus1_1")
  np.testing.assert_allclose(ours, _l2n(f + ff), atol=1e-5, rtol=0)
