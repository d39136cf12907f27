"""Small worlds the tests and benchmarks share. A miniature evaluation world on disk: an
insightface-style `mini.bin` (20 pairs), a miniature IJB-C release (6 templates, loose crops, the
three meta files) and tiny random quality (token, crfiqa) and FR (iResNet) models as converted
directories (save_vit, save_iresnet); and the tiny ViT-FIQA with a tiny labelled training set.
"""
from __future__ import annotations

import io
import pathlib
import pickle

import jax
import numpy as np
from PIL import Image

from exfiqa_jax import checkpoints
from exfiqa_jax.data import align
from exfiqa_jax.models import iresnet, vit
from exfiqa_jax.train.data import ArrayData


def _identity_image(rng, base):
  image = base + rng.normal(0, 18, base.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _bases(rng, n):
  ys, xs = np.mgrid[0:112, 0:112] / 112
  out = []
  for _ in range(n):
    base = np.stack([np.sin(xs * rng.uniform(2, 9) + rng.uniform(0, 6)),
                     np.cos(ys * rng.uniform(2, 9) + rng.uniform(0, 6)),
                     np.sin((xs + ys) * rng.uniform(2, 9))], -1)
    out.append(128 + 90 * base)
  return out


def _png(a):
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="PNG")
  return buf.getvalue()


def random_variables(module, seed: int):
  """Random variables of the module's shapes without compiling its init (fast): weights scaled
  by 1/sqrt(fan-in), normalisation scales near 1, BN variances positive."""
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 112, 112, 3), np.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    x = rng.normal(size=leaf.shape).astype(np.float32)
    if "var" in name:
      return np.abs(x) * 0.2 + 0.5
    if "scale" in name:
      return 1.0 + 0.1 * x
    if len(leaf.shape) <= 1:
      return 0.1 * x
    return x / np.sqrt(max(int(np.prod(leaf.shape[:-1])), 1))

  return jax.tree_util.tree_map_with_path(fill, shapes)


def save_vit(path, mode: str, seed: int) -> str:
  """A tiny ViT of `mode` ("token", "crfiqa", "full", "fr") with seeded random weights, saved as
  a converted model directory at `path`; returns the path."""
  cfg = vit.tiny_config(mode)
  checkpoints.save_model(path, random_variables(vit.VisionTransformer(cfg), seed),
                         {"family": "vit", "kind": "vit", "input_scale": "minus1_1",
                          **cfg.to_dict()})
  return str(path)


def save_iresnet(path, seed: int) -> str:
  """A tiny iResNet FR model with seeded random weights, saved as a converted model directory."""
  cfg = iresnet.tiny_config(layers=(1, 1, 1, 1))
  checkpoints.save_model(path, random_variables(iresnet.IResNet(cfg), seed),
                         {"family": "arcface_iresnet", "kind": "iresnet",
                          "input_scale": "minus1_1", **cfg.to_dict()})
  return str(path)


def build_world(root: pathlib.Path) -> dict[str, str]:
  """The miniature .bin benchmark, IJB-C and tiny random models under `root` (a pathlib.Path)."""
  rng = np.random.default_rng(0)
  bases = _bases(rng, 6)
  # mini.bin: 20 pairs (10 genuine), images 2i and 2i+1.
  images, issame = [], []
  for i in range(20):
    a = i % 6
    b = a if i % 2 == 0 else (a + 1 + i % 5) % 6
    images += [_png(_identity_image(rng, bases[a])), _png(_identity_image(rng, bases[b]))]
    issame.append(a == b)
  (root / "bins").mkdir()
  with open(root / "bins" / "mini.bin", "wb") as f:
    pickle.dump((images, issame), f)
  # IJB-C: 6 templates (subjects 0,0,1,1,2,2), 1-2 media each, 2-3 images; 112² loose crops
  # whose landmarks are the template itself (alignment = identity).
  ijbc = root / "IJBC"
  (ijbc / "loose_crop").mkdir(parents=True)
  (ijbc / "meta").mkdir()
  five, tid, k = [], [], 0
  land = " ".join(f"{v:.4f}" for v in align.arcface_template().ravel())
  for t in range(6):
    for j in range(2 + t % 2):
      k += 1
      name = f"{k}.png"
      (ijbc / "loose_crop" / name).write_bytes(_png(_identity_image(rng, bases[t // 2])))
      five.append(f"{name} {land} 0.9")
      tid.append(f"{name} {100 + t} {10 * t + j % (1 + t % 2)}")
  (ijbc / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(five) + "\n")
  (ijbc / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid) + "\n")
  pairs = [f"{100 + a} {100 + b} {int(a // 2 == b // 2)}" for a in range(6)
           for b in range(a + 1, 6)]
  (ijbc / "meta" / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
  return dict(root=str(root), bins=str(root / "bins"), ijbc=str(ijbc),
              token=save_vit(root / "q_token", "token", 1),
              crfiqa=save_vit(root / "q_crfiqa", "crfiqa", 2),
              fr=save_iresnet(root / "fr", 3), data_dir=str(root / "tfds"))


def bin_config(config, world, output, **over):
  """`config` (configs/eval_verification.py:benchmarks=mini,size=tiny) pointed at the world's
  mini.bin benchmark and models, fast settings; `over` sets dotted fields."""
  config.quality_model.path = world["token"]
  config.fr.path = world["fr"]
  config.data.manual_dir = world["bins"]
  config.data.data_dir = world["data_dir"]
  config.output = str(output)
  config.batch_size = 8
  config.fr.batch_size = 8
  config.eval.bootstrap = 4
  config.eval.chunk_images = 16
  config.report.attention_examples = 2
  config.progress = False
  return override(config, **over)


def override(config, **dotted):
  """Sets dotted fields ("eval.alpha": 0.1) of a ConfigDict; returns it."""
  for key, value in dotted.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def tiny_model():
  """(module, config): the tiny ViT-FIQA of the core model."""
  cfg = vit.tiny_config("token")
  return vit.VisionTransformer(cfg), cfg


def tiny_data(n: int = 64, classes: int = 8, batch: int = 16, seed: int = 0):
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, (classes, 112, 112, 3))
  labels = np.arange(n) % classes
  images = np.clip(base[labels] + rng.normal(0, 20, (n, 112, 112, 3)), 0, 255).astype(np.uint8)
  return ArrayData(images, labels, batch, seed=seed, num_classes=classes)
