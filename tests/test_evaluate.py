"""Task "eval" end to end on a miniature .bin benchmark and a miniature IJB-C, with tiny random
models: every file, numbers equal to an independent recomputation with the EDC engine, cached
stages (nothing recomputed; a changed field recomputes only its dependants), resume after a
kill, and the errors for bad input."""
from __future__ import annotations

import csv
import io
import os
import pickle
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from configs import eval_ijbc, eval_verification
from exfiqa_jax import checkpoints, edc, embed, evaluate, report, stages
from exfiqa_jax.data import align
from exfiqa_jax.models import iresnet, vit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _random_variables(module, seed):
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


def _save_vit(path, mode, seed):
  cfg = vit.tiny_config(mode)
  checkpoints.save_model(path, _random_variables(vit.VisionTransformer(cfg), seed),
                         {"family": "vit", "kind": "vit", "input_scale": "minus1_1",
                          **cfg.to_dict()})
  return str(path)


def _save_iresnet(path, seed):
  cfg = iresnet.tiny_config(layers=(1, 1, 1, 1))
  checkpoints.save_model(path, _random_variables(iresnet.IResNet(cfg), seed),
                         {"family": "arcface_iresnet", "kind": "iresnet",
                          "input_scale": "minus1_1", **cfg.to_dict()})
  return str(path)


def build_world(root):
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
  return dict(root=root, bins=str(root / "bins"), ijbc=str(ijbc),
              token=_save_vit(root / "q_token", "token", 1),
              crfiqa=_save_vit(root / "q_crfiqa", "crfiqa", 2),
              fr=_save_iresnet(root / "fr", 3), data_dir=str(root / "tfds"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return build_world(tmp_path_factory.mktemp("eval"))


def _bin_config(world, output, **over):
  config = eval_verification.get_config("mini")
  config.checkpoint = world["token"]
  config.fr_model = world["fr"]
  config.data.manual_dir = world["bins"]
  config.data.data_dir = world["data_dir"]
  config.output = str(output)
  config.batch_size = 8
  config.fr.batch_size = 8
  config.eval.bootstrap = 4
  config.eval.chunk_images = 16
  config.report.attention_examples = 2
  config.progress = False
  for k, v in over.items():
    parent = config
    *path, last = k.split(".")
    for p in path:
      parent = parent[p]
    parent[last] = v
  return config


@pytest.fixture(scope="module")
def bin_run(world):
  output = world["root"] / "out_bin"
  result = evaluate.run(_bin_config(world, output))
  return output, result


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_bin_every_file_and_engine_numbers(world, bin_run):
  output, result = bin_run
  for name in ("edc.csv", "pauc.csv", "summary.json", "summary.md", "mini/scores_q_token.csv",
               "plots/edc_mini_fr_fiqa.png", "plots/edc_mini_fr_iso.png",
               "plots/pauc_vs_gflops_fr_fiqa.png", "plots/attention_mini_q_token.png"):
    assert os.path.getsize(output / name) > 0, name
  # Independent recomputation: quality from the API, embeddings with embed_images (concat flip),
  # cosine scores, then the EDC engine.
  from exfiqa_jax import api
  from exfiqa_jax.data import builders
  source, info = builders.load("verification_bin/mini", None, world["data_dir"], decode=True)
  images = np.stack([r["image"] for r in source])
  q = api.load(world["token"], batch_size=8).score(images)
  module, variables, cfg = embed.load_fr_model(world["fr"])
  emb = embed.embed_images(module, variables, images, "concat", cfg["input_scale"], 8)
  pairs = np.stack([info.pairs["index_a"], info.pairs["index_b"]], 1)
  feats = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  scores = np.sum(feats[pairs[:, 0]] * feats[pairs[:, 1]], 1)
  image_q = np.concatenate([q["exit_scores"].T, q["ex_fiqa_f"][None], q["ex_fiqa_fw"][None],
                            q["attn_scores"].T, report.random_quality(len(images), 0)[None]])
  names = [f"exit_{l}" for l in (1, 2, 3)] + ["ex_fiqa_f", "ex_fiqa_fw"] + [
      f"attn_{l}" for l in (1, 2, 3)] + ["random"]
  pq = np.minimum(image_q[:, pairs[:, 0]], image_q[:, pairs[:, 1]])
  rows = {(r["quality"], r["mode"], float(r["fmr"])): r for r in report.read_csv(output / "pauc.csv")}
  for mode, limit in (("fiqa", 0.3), ("iso", 0.2)):
    ref = edc.edc_curves(scores, info.pairs["is_genuine"], pq, (1e-2, 1e-3, 1e-4),
                         edc.FIQA_DISCARD, mode, pauc_limit=limit)
    for s, name in enumerate(names):
      for f, fmr in enumerate((1e-2, 1e-3, 1e-4)):
        assert float(rows[(name, mode, fmr)]["pauc"]) == pytest.approx(ref.pauc[s, f],
                                                                      abs=1e-6)
  # Scores CSV follows the DESIGN contract.
  header = _read(output / "mini" / "scores_q_token.csv").splitlines()[0].split(",")
  assert header == (["image", "exit_1", "exit_2", "exit_3", "ex_fiqa_f", "ex_fiqa_fw"]
                    + ["attn_1", "attn_2", "attn_3"])
  assert "| random |" in _read(output / "summary.md")


def test_cached_rerun_and_targeted_invalidation(world, bin_run):
  output, first = bin_run
  before = {n: _read(output / n) for n in ("edc.csv", "pauc.csv")}
  again = evaluate.run(_bin_config(world, output))
  assert again["computed"] == []                          # every stage loaded
  assert {n: _read(output / n) for n in before} == before
  changed = evaluate.run(_bin_config(world, output, **{"eval.alpha": 0.1}))
  assert sorted(changed["computed"]) == ["edc/mini/fr/fiqa", "edc/mini/fr/iso"]
  back = evaluate.run(_bin_config(world, output))        # restore the reference outputs
  assert sorted(back["computed"]) == ["edc/mini/fr/fiqa", "edc/mini/fr/iso"]
  assert {n: _read(output / n) for n in before} == before


def test_resume_after_kill(world, bin_run, tmp_path):
  """A subprocess is killed once the first stage's cache file appears; the rerun loads it,
  computes the rest and writes the same numbers as an uninterrupted run."""
  output = tmp_path / "out"
  code = f"""
import sys; sys.path.insert(0, {ROOT!r})
from tests.test_evaluate import _bin_config
from exfiqa_jax import evaluate
import time
world = {{k: v for k, v in {dict((k, str(v)) for k, v in world.items())!r}.items()}}
config = _bin_config(world, {str(output)!r})
orig = evaluate.compare_stage
def slow(*a, **k):
  time.sleep(120)           # gives the test time to kill us after the first stages
  return orig(*a, **k)
evaluate.compare_stage = slow
evaluate.run(config)
"""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  first_stage = output / "cache" / "quality" / "mini" / "q_token.npz"
  deadline = time.time() + 90
  try:
    while not first_stage.exists():
      assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
      assert time.time() < deadline, "the first stage never finished"
      time.sleep(0.2)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  mtime = os.stat(first_stage).st_mtime_ns
  assert not (output / "pauc.csv").exists()
  resumed = evaluate.run(_bin_config(world, output))
  assert "quality/mini/q_token" not in resumed["computed"]
  assert os.stat(first_stage).st_mtime_ns == mtime
  events = stages.read_log(str(output / "cache"))
  assert any(e["stage"] == "quality/mini/q_token" and e["event"] == "cached" for e in events)
  reference, _ = bin_run
  for name in ("edc.csv", "pauc.csv", "mini/scores_q_token.csv"):
    assert _read(output / name) == _read(reference / name), name


def test_ijbc_two_quality_models_self_fr(world, tmp_path):
  config = eval_ijbc.get_config("tiny")
  config.checkpoint = f"t={world['token']},c={world['crfiqa']}"
  config.fr_model = "quality_model:t"
  config.data.manual_dir = world["ijbc"]
  config.data.data_dir = world["data_dir"]
  config.output = str(tmp_path / "out")
  config.eval.bootstrap = 0
  config.progress = False
  evaluate.run(config)
  out = tmp_path / "out"
  for name in ("edc.csv", "pauc.csv", "summary.json", "summary.md", "ijbc/scores_t.csv",
               "ijbc/scores_c.csv", "plots/edc_ijbc_quality_model_t_fiqa.png",
               "plots/attention_ijbc_c.png"):
    assert os.path.getsize(out / name) > 0, name
  rows = report.read_csv(out / "pauc.csv")
  names = {r["quality"] for r in rows}
  assert {"t/exit_1", "t/ex_fiqa_fw", "c/exit_3", "c/attn_3", "random"} <= names
  # Independent template aggregation in NumPy: media mean → sum → L2n; template quality = min.
  from exfiqa_jax import api
  from exfiqa_jax.data import builders
  source, info = builders.load("ijbc", None, world["data_dir"], decode=True)
  images = np.stack([r["image"] for r in source])
  model = api.load(world["token"], batch_size=8)
  emb = embed.embed_images(model.module, model.variables, images, "concat", "minus1_1", 8)
  tids, mids = info.record_arrays["template_id"], info.record_arrays["media_id"]
  temps = np.unique(tids)
  tfeat = []
  for t in temps:
    media = [emb[(tids == t) & (mids == m)].mean(0) for m in np.unique(mids[tids == t])]
    v = np.sum(media, 0)
    tfeat.append(v / np.linalg.norm(v))
  tfeat = np.stack(tfeat)
  a = np.searchsorted(temps, info.pairs["template_a"])
  b = np.searchsorted(temps, info.pairs["template_b"])
  scores = np.sum(tfeat[a] * tfeat[b], 1)
  qc = api.load(world["crfiqa"], batch_size=8).score(images)["exit_scores"][:, -1]
  tq = np.array([qc[tids == t].min() for t in temps])
  pq = np.minimum(tq[a], tq[b])
  ref = edc.edc_curves(scores, info.pairs["is_genuine"], pq[None], (1e-2, 1e-3, 1e-4),
                       edc.FIQA_DISCARD, "fiqa", pauc_limit=0.3)
  got = {float(r["fmr"]): float(r["pauc"]) for r in rows
         if r["quality"] == "c/exit_3" and r["mode"] == "fiqa"}
  np.testing.assert_allclose([got[f] for f in (1e-2, 1e-3, 1e-4)], ref.pauc[0], atol=1e-6)


def test_bad_inputs(world, tmp_path):
  with pytest.raises(ValueError, match="config.checkpoint"):
    evaluate.run(_bin_config(world, tmp_path, checkpoint=""))
  with pytest.raises(FileNotFoundError, match="config.checkpoint"):
    evaluate.run(_bin_config(world, tmp_path, checkpoint=str(tmp_path / "nope")))
  with pytest.raises(ValueError, match="config.fr_model"):
    evaluate.run(_bin_config(world, tmp_path, fr_model=""))
  with pytest.raises(FileNotFoundError, match="config.fr_model"):
    evaluate.run(_bin_config(world, tmp_path, fr_model=str(tmp_path / "nope.pt")))
  with pytest.raises(FileNotFoundError, match="config.data.manual_dir"):
    evaluate.run(_bin_config(world, tmp_path, **{"data.manual_dir": str(tmp_path / "none"),
                                                 "data.data_dir": str(tmp_path / "tfds")}))
  # Precomputed embeddings for another image list.
  emb_dir = tmp_path / "emb"
  emb_dir.mkdir()
  np.save(emb_dir / "embeddings.npy", np.random.default_rng(0).normal(size=(39, 8)))
  with pytest.raises(ValueError, match="disagree on the image list"):
    evaluate.run(_bin_config(world, tmp_path / "o1",
                             fr_model=f"precomputed:{emb_dir / 'embeddings.npy'}"))
  np.save(emb_dir / "embeddings.npy", np.random.default_rng(0).normal(size=(40, 8)))
  (emb_dir / "image_list.txt").write_text("".join(f"other_{i}.jpg\n" for i in range(40)))
  with pytest.raises(ValueError, match="disagree on the image list"):
    evaluate.run(_bin_config(world, tmp_path / "o2",
                             fr_model=f"precomputed:{emb_dir / 'embeddings.npy'}"))
