"""Tests for exfiqa_jax/train: losses vs hand-computed values, optimiser vs PyTorch, training
steps, bit-exact resume, 8 devices == 1 device, augmentation invariants, export to scoring."""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from exfiqa_jax import parallel
from exfiqa_jax.train import augment, losses, optim, step as step_lib, trainer
from exfiqa_jax.train import data as train_data
from exfiqa_jax.testing.subproc import run_python
from exfiqa_jax.testing.worlds import tiny_data, tiny_model


def tiny_train_config(output: str, total_steps: int = 6, **over):
  from configs import train_tiny
  config = train_tiny.get_config("size=smoke")
  with config.unlocked():
    config.output = output
    config.total_steps = total_steps
    config.progress = False
    config.eval.every = 0
    for k, v in over.items():
      config[k] = v
  return config


def crfiqa_train_config(output: str, total_steps: int = 6, **over):
  """configs/train_crfiqa.py's smoke size on 32² images (crfiqa_data): a tiny iResNet + qs."""
  from configs import train_crfiqa
  config = train_crfiqa.get_config("size=smoke")
  with config.unlocked():
    config.output, config.total_steps, config.progress = output, total_steps, False
    config.batch_size, config.eval.every, config.checkpointing.every = 16, 0, 3
    config.architecture.img_size = 32
    for k, v in over.items():
      config[k] = v
  return config


def crfiqa_data(n: int = 64, classes: int = 8, batch: int = 16, size: int = 32):
  """tiny_data's identities at 32² (an iResNet takes any multiple of 16; the step is faster)."""
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (classes, size, size, 3))
  labels = np.arange(n) % classes
  images = np.clip(base[labels] + rng.normal(0, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)
  return train_data.ArrayData(images, labels, batch, seed=0, num_classes=classes)


# -------------------------------------------------------------------------------- losses
def test_losses_hand_computed():
  """B=2, C=3, E=2; every number below is derived by hand in the comments."""
  e = jnp.array([[3.0, 0.0], [0.0, 2.0]])
  w = jnp.array([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
  y = jnp.array([0, 2])
  r = 1 / math.sqrt(2)
  cos = losses.cosine_logits(e, w)           # rows: [1, 0, r], [0, 1, r]
  np.testing.assert_allclose(cos, [[1, 0, r], [0, 1, r]], atol=1e-6)
  # CR: row0 CCS 1, NNCCS max(0, r) = r; row1 CCS r, NNCCS 1
  cr = losses.cr_target(cos, y)
  np.testing.assert_allclose(cr, [1 / (r + 1 + 1e-9), r / 2], rtol=1e-6)
  # CosFace s=2, m=0.5: row0 logits [1, 0, 2r]; row1 [0, 2, 2(r-0.5)]
  logits = losses.margin_logits(cos, y, 2.0, (1.0, 0.0, 0.5))
  np.testing.assert_allclose(logits, [[1, 0, 2 * r], [0, 2, 2 * r - 1]], atol=1e-6)
  ce0 = math.log(math.e + 1 + math.exp(2 * r)) - 1
  ce1 = math.log(1 + math.e ** 2 + math.exp(2 * r - 1)) - (2 * r - 1)
  # SmoothL1 beta .5: q = [0.2, 0.9]; d0 = |0.2 - cr0| < .5 -> d0²; d1 = 0.9 - r/2 >= .5 -> d1 - .25
  q = jnp.array([0.2, 0.9])
  d0, d1 = abs(0.2 - 1 / (r + 1)), abs(0.9 - r / 2)
  assert d0 < 0.5 <= d1
  sl1 = [d0 ** 2, d1 - 0.25]
  np.testing.assert_allclose(losses.smooth_l1(q, cr, 0.5), sl1, rtol=1e-5)
  loss, m = losses.fiqa_loss(e, q, w, y, scale=2.0, margins=(1.0, 0.0, 0.5), alpha=10.0, beta=0.5)
  np.testing.assert_allclose(m["loss_fr"], (ce0 + ce1) / 2, rtol=1e-5)
  np.testing.assert_allclose(m["loss_fiq"], np.mean(sl1), rtol=1e-5)
  np.testing.assert_allclose(loss, (ce0 + ce1) / 2 + 10 * np.mean(sl1), rtol=1e-5)
  assert float(m["train_accuracy"]) == 0.5   # row1 argmax is class 1, label 2


def _np_reference(e, w, y, q, s, m, alpha, beta, arc=False):
  """Plain-NumPy ViT-FIQA loss (float64), written from docs/methods.md"""
  en = e / np.linalg.norm(e, axis=1, keepdims=True)
  wn = w / np.linalg.norm(w, axis=1, keepdims=True)
  c = np.clip(en @ wn.T, -1, 1)
  rows = np.arange(len(y))
  ccs = c[rows, y]
  other = c.copy()
  other[rows, y] = -np.inf
  cr = ccs / (other.max(1) + 1 + 1e-9)
  t = c.copy()
  t[rows, y] = np.cos(np.arccos(ccs) + m) if arc else ccs - m
  z = s * t
  ce = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[rows, y]
  d = np.abs(q - cr)
  sl1 = np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta)
  return ce.mean() + alpha * sl1.mean(), cr


@pytest.mark.parametrize("arc", [False, True])
def test_losses_random_vs_numpy(arc):
  rng = np.random.default_rng(1)
  e, w = rng.normal(size=(12, 8)), rng.normal(size=(30, 8))
  y, q = rng.integers(0, 30, 12), rng.uniform(-0.5, 1.0, 12)
  margins = (1.0, 0.5, 0.0) if arc else (1.0, 0.0, 0.4)
  ref, ref_cr = _np_reference(e, w, y, q, 64.0, 0.5 if arc else 0.4, 10.0, 0.5, arc)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  loss, _ = losses.fiqa_loss(f32(e), f32(q), f32(w), jnp.asarray(y), scale=64.0, margins=margins)
  np.testing.assert_allclose(loss, ref, rtol=2e-5)   # float32 vs float64
  np.testing.assert_allclose(losses.cr_target(losses.cosine_logits(f32(e), f32(w)), y), ref_cr,
                             atol=1e-6)


def test_padded_classes_are_ignored():
  """Padding the class axis (for a model-sharded mesh) must not change loss or CR."""
  rng = np.random.default_rng(2)
  e, w = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32), jnp.asarray(rng.normal(size=(5, 8)),
                                                                        jnp.float32)
  y, q = jnp.asarray(rng.integers(0, 5, 6)), jnp.asarray(rng.uniform(0, 1, 6), jnp.float32)
  pad = jnp.concatenate([w, w[:3] * 1.0001])       # near-duplicates would win the NNCCS max
  a, ma = losses.fiqa_loss(e, q, w, y)
  b, mb = losses.fiqa_loss(e, q, pad, y, num_classes=5)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(ma["cr_mean"], mb["cr_mean"], rtol=1e-6)


# ------------------------------------------------------------------------------ optimiser
def test_schedule_matches_polynomial_lr_warmup():
  """Against insightface's PolynomialLRWarmup run as a real torch scheduler (recursive form)."""
  torch = pytest.importorskip("torch")

  class PolynomialLRWarmup(torch.optim.lr_scheduler.LRScheduler):
    def __init__(self, opt, warmup_iters, total_iters, power=1.0):
      super().__init__(opt)
      self.total_iters, self.power, self.warmup_iters = total_iters, power, warmup_iters

    def get_lr(self):
      if self.last_epoch == 0 or self.last_epoch > self.total_iters:
        return [g["lr"] for g in self.optimizer.param_groups]
      if self.last_epoch <= self.warmup_iters:
        return [b * self.last_epoch / self.warmup_iters for b in self.base_lrs]
      l, w, t = self.last_epoch, self.warmup_iters, self.total_iters
      f = ((1.0 - (l - w) / (t - w)) / (1.0 - (l - 1 - w) / (t - w))) ** self.power
      return [g["lr"] * f for g in self.optimizer.param_groups]

  opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
  sched = PolynomialLRWarmup(opt, 7, 30)
  ours = optim.polynomial_warmup(1e-3, 7, 30)
  for s in range(35):           # update s runs at the lr the scheduler holds before its s-th step
    np.testing.assert_allclose(float(ours(s)), opt.param_groups[0]["lr"], rtol=1e-5, atol=1e-12)
    opt.step()
    sched.step()
  assert float(ours(0)) == pytest.approx(1e-3)   # the quirk


def test_optimizer_matches_torch_adamw_with_backbone_clip():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  params = {"backbone": {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))},
            "centres": rng.normal(size=(5, 3))}
  grads = [{"backbone": {"a": 4 * rng.normal(size=(4, 3)), "b": 4 * rng.normal(size=(3,))},
            "centres": 9 * rng.normal(size=(5, 3))} for _ in range(4)]
  tx, _ = optim.make_optimizer(1e-2, 2, 10, weight_decay=0.05, clip_norm=5.0)
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  st = tx.init(p)
  tp = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in
        [("a", params["backbone"]["a"]), ("b", params["backbone"]["b"]), ("c", params["centres"])]}
  topt = torch.optim.AdamW(tp.values(), lr=1e-2, weight_decay=0.05)
  sched = [1e-2, 0.5e-2, 1e-2, 1e-2 * (1 - 1 / 8)]      # lr(0..3) for warmup 2, total 10
  for g, lr in zip(grads, sched):
    upd, st = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), st, p)
    p = jax.tree.map(lambda a, b: a + b, p, upd)
    tp["a"].grad = torch.tensor(g["backbone"]["a"])
    tp["b"].grad = torch.tensor(g["backbone"]["b"])
    tp["c"].grad = torch.tensor(g["centres"])
    torch.nn.utils.clip_grad_norm_([tp["a"], tp["b"]], 5.0)
    for group in topt.param_groups:
      group["lr"] = lr
    topt.step()
  np.testing.assert_allclose(p["backbone"]["a"], tp["a"].detach().numpy(), atol=2e-6)
  np.testing.assert_allclose(p["backbone"]["b"], tp["b"].detach().numpy(), atol=2e-6)
  np.testing.assert_allclose(p["centres"], tp["c"].detach().numpy(), atol=2e-6)


# ---------------------------------------------------------------------------- augmentation
def test_augment_operators():
  """Blur/resize operators preserve constants; an identity warp is exact; output range."""
  n = 112
  for k in (1, 4, 9):
    np.testing.assert_allclose(augment.box_matrix(jnp.asarray(k), n).sum(1), 1.0, atol=1e-6)
  np.testing.assert_allclose(augment.gaussian_matrix(jnp.asarray(0.0), n), np.eye(n))
  for d in range(3):
    for u in range(2):
      r = augment.resize_matrix(jnp.asarray(37), jnp.asarray(d), jnp.asarray(u), n)
      np.testing.assert_allclose(r.sum(1), 1.0, atol=1e-5)
  # nearest down-up by exactly 2 on an image of 2×2 blocks is the identity
  blocks = np.repeat(np.repeat(np.random.default_rng(0).random((56, 56)), 2, 0), 2, 1)
  r = augment.resize_matrix(jnp.asarray(56), jnp.asarray(0), jnp.asarray(0), n)
  np.testing.assert_allclose(r @ blocks @ r.T, blocks, atol=1e-6)
  img = jnp.asarray(np.random.default_rng(1).integers(0, 256, (n, n, 3)), jnp.float32)
  m = augment.warp_matrix(1.0, 0.0, False, 0.0, 0.0, 1.0, 1.0, 0.0, n)
  np.testing.assert_allclose(augment.warp_image(img, m), img, atol=1e-4)
  mf = augment.warp_matrix(1.0, 0.0, True, 0.0, 0.0, 1.0, 1.0, 0.0, n)   # flip about x = 56
  np.testing.assert_allclose(augment.warp_image(img, mf)[:, 1:], img[:, ::-1][:, :-1], atol=1e-4)
  eq = augment.equalize_channel(img[..., 0])
  assert float(eq.min()) >= 0 and float(eq.max()) <= 255


# --------------------------------------------------------------------------------- training
def test_steps_lower_loss_on_fixed_batch(tmp_path):
  model, cfg = tiny_model()
  config = tiny_train_config(str(tmp_path))
  mesh = parallel.mesh(1)
  tx, sched = optim.make_optimizer(2e-3, 0, 50, clip_norm=5.0)
  state, sh = step_lib.init_state(model, tx, jax.random.key(0), 8, cfg.embed_dim, mesh)
  train_step = step_lib.make_train_step(
      model, tx, mesh=mesh, shardings=sh, schedule=sched,
      loss_kwargs=dict(scale=32.0, margins=(1.0, 0.0, 0.35), alpha=1.0, num_classes=8))
  del config
  batch = tiny_data().host_batch(0)
  losses_seen = []
  for _ in range(8):
    state, m = train_step(state, batch, jax.random.key(1))
    losses_seen.append(float(m["loss"]))
  assert np.all(np.isfinite(losses_seen))
  assert losses_seen[-1] < 0.8 * losses_seen[0], losses_seen


def _params(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def _resume_case(kind: str):
  """(data, config maker, train() model kwargs): the tiny ViT-FIQA passed in, or CR-FIQA's tiny
  iResNet + qs built by the trainer from configs/train_crfiqa.py (dropout, SGD, step decay)."""
  if kind == "vit":
    model, cfg = tiny_model()
    return tiny_data(), tiny_train_config, dict(model=model, model_cfg=cfg)
  return crfiqa_data(), crfiqa_train_config, {}


@pytest.mark.parametrize("kind", ["vit", "crfiqa"])
def test_resume_is_bit_exact(tmp_path, kind):
  data, make_config, model = _resume_case(kind)
  full = trainer.train(make_config(str(tmp_path / "full"), 6, export_model=False), data, **model)
  part = str(tmp_path / "part")
  trainer.train(make_config(part, 6, stop_after=3, export_model=False), data, **model)
  assert os.path.isdir(os.path.join(part, "checkpoints", "3"))
  resumed = trainer.train(make_config(part, 6, export_model=False), data, **model)
  assert int(resumed.step) == 6
  a, b = _params(full), _params(resumed)
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  assert all(np.array_equal(x, y) for x, y in zip(flat_a, flat_b))
  for part_a, part_b in ((full.opt_state, resumed.opt_state),
                         (full.batch_stats, resumed.batch_stats)):
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(part_a)),
                                                    jax.tree.leaves(jax.device_get(part_b))))
  # the monitoring CSV has one row per logged step, none duplicated by the resume
  with open(os.path.join(part, "train_log.csv")) as f:
    steps = [int(line.split(",")[0]) for line in f.readlines()[1:]]
  assert steps == sorted(set(steps)) and steps[-1] == 6


def test_eight_devices_match_one_device():
  """Same steps on a 1-device mesh and a 4×2 data×model mesh (the batch split over the data
  axis, the class centres over the model axis: what an 8-way data mesh does, and more).

  SGD, not AdamW: Adam's first update is ≈ sign(g), which turns float-rounding differences of
  near-zero gradients into lr-sized parameter differences (AdamW itself is tested vs torch)."""
  out = run_python("""
    import jax, numpy as np, optax
    from jax.sharding import Mesh
    from exfiqa_jax.train import step as step_lib, augment
    from exfiqa_jax import parallel
    from exfiqa_jax.testing.worlds import tiny_data, tiny_model
    model, cfg = tiny_model()
    batch = tiny_data(batch=16).host_batch(0)
    aug = augment.AugmentConfig(gridsample_prob=1.0, blur_prob=1.0, cutout_prob=0.5)
    results = []
    for name, mesh in [("one", Mesh(np.asarray(jax.devices()[:1]), ("data",))),
                       ("data4model2", parallel.mesh(2))]:
      tx = optax.sgd(1e-3)
      state, sh = step_lib.init_state(model, tx, jax.random.key(0), 7, cfg.embed_dim, mesh)
      p0 = jax.tree.map(np.asarray, jax.device_get(state.params))
      f = step_lib.make_train_step(model, tx, mesh=mesh, shardings=sh, augment=aug,
                                   loss_kwargs=dict(scale=32.0, margins=(1.0, 0.0, 0.35),
                                                    num_classes=7))
      b = {k: jax.device_put(v, parallel.batch_sharding(mesh)) for k, v in batch.items()}
      b["label"] = b["label"] % 7
      losses = []
      for _ in range(2):
        state, m = f(state, b, jax.random.key(5))
        losses.append(float(m["loss"]))
      p = jax.tree.map(np.asarray, jax.device_get(state.params))
      delta = jax.tree.map(lambda a, b: a - b, p, p0)
      delta["centres"] = delta["centres"][:7]
      results.append((losses, jax.tree.leaves(delta)))
    ref_losses, ref = results[0]
    scale = max(float(np.max(np.abs(d))) for d in ref)
    for losses, leaves in results[1:]:
      np.testing.assert_allclose(losses, ref_losses, rtol=2e-4)  # f32, s=32 logits
      worst = max(float(np.max(np.abs(x - y))) for x, y in zip(leaves, ref))
      assert worst <= 1e-3 * scale, (worst, scale)
      print("worst", worst, "scale", scale)
    print("OK")
  """)
  assert "OK" in out


def test_folder_data_and_bin_pairs(tmp_path):
  """Labels follow the identity folders, batches are a pure function of (seed, step), an epoch
  visits every image once; an insightface .bin decodes into pairs (2i, 2i+1)."""
  import io as _io
  import pickle
  from PIL import Image
  ids = ["alice", "bob", "carol"]
  encoded = []
  for label, name in enumerate(ids):
    os.makedirs(tmp_path / "train" / name)
    for j in range(4):
      value = 40 * label + 5 * j + 7                       # label and index recoverable
      img = Image.fromarray(np.full((112, 112, 3), value, np.uint8))
      img.save(tmp_path / "train" / name / f"{j}.png")
      buf = _io.BytesIO()
      img.save(buf, format="PNG")
      encoded.append(buf.getvalue())
  a = train_data.FolderData(str(tmp_path / "train"), 4, seed=3, threads=2)
  b = train_data.FolderData(str(tmp_path / "train"), 4, seed=3, threads=2)
  assert a.num_classes == 3 and a.num_images == 12 and a.steps_per_epoch == 3
  seen = []
  for s in (2, 0, 1):                                      # random access order
    batch = a.host_batch(s)
    np.testing.assert_array_equal(batch["image"], b.host_batch(s)["image"])
    values = batch["image"][:, 0, 0, 0].astype(int) - 7
    np.testing.assert_array_equal(values // 40, batch["label"])
    seen += list(values)
  assert sorted(seen) == sorted(40 * l + 5 * j for l in range(3) for j in range(4))
  assert not np.array_equal(a.host_batch(3)["image"], a.host_batch(0)["image"])  # new epoch
  with open(tmp_path / "set.bin", "wb") as f:
    pickle.dump((encoded[:6], [True, False, True]), f)
  pairs = train_data.load_bin_pairs(str(tmp_path / "set.bin"))
  assert pairs.images.shape == (6, 112, 112, 3)
  np.testing.assert_array_equal(pairs.pairs, [[0, 1], [2, 3], [4, 5]])
  np.testing.assert_array_equal(pairs.is_genuine, [True, False, True])


def test_export_scores_and_converts_to_official_pt(tmp_path):
  """The final checkpoint is a converted-model directory: the scoring command reads it, and
  exfiqa_jax.checkpoints.directory_to_pt writes a .pt that the PyTorch twin loads strictly and that gives
  the same scores."""
  import torch
  from PIL import Image
  from configs import score as score_config
  from exfiqa_jax import checkpoints
  from exfiqa_jax import inference
  from exfiqa_jax.tasks import score
  from exfiqa_jax.testing import torch_reference
  model, cfg = tiny_model()
  trainer.train(tiny_train_config(str(tmp_path / "run"), 4), tiny_data(), model=model,
                model_cfg=cfg)
  model_dir = str(tmp_path / "run" / "model")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
  os.makedirs(tmp_path / "faces")
  for k, img in enumerate(images):
    Image.fromarray(img).save(tmp_path / "faces" / f"{k}.png")
  config = score_config.get_config("size=tiny")
  config.quality_model.path, config.images = model_dir, str(tmp_path / "faces")
  config.output, config.progress = str(tmp_path / "scores"), False
  score.run(config)
  table = np.load(tmp_path / "scores" / "scores.npz")
  expected = inference.load(model_dir, batch_size=8).score(images)
  np.testing.assert_allclose(table["exit_scores"], expected["exit_scores"], atol=1e-5)
  checkpoints.directory_to_pt(model_dir, str(tmp_path / "model.pt"))
  twin = torch_reference.VitFiqaTorch(**torch_reference.tiny_kwargs("token")).eval()
  twin.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
  x = torch.from_numpy((images.astype(np.float32) / 255 - 0.5) / 0.5).permute(0, 3, 1, 2)
  with torch.no_grad():
    _, final = twin(x)                                    # (embedding, quality)
  np.testing.assert_allclose(final.reshape(-1).numpy(), expected["exit_scores"][:, -1], atol=1e-4)


# --------------------------------------------------------------------- settings, before any work
TRAIN_COUNTS = [   # (field, a value it must refuse): each was a division by zero or a silent no-op
    ("batch_size", 0), ("batch_size", -8), ("log_every", 0), ("checkpointing.every", 0),
    ("checkpointing.keep", 0), ("eval.every", -1), ("eval.batch_size", 0), ("total_steps", -1),
    ("stop_after", -2), ("optim.warmup_steps", -1), ("epochs", 0), ("warmup_epochs", -1),
    ("log_every", 2.5), ("checkpointing.every", True)]


def _train_config(name: str, size: str, field: str, value):
  import importlib
  config = importlib.import_module(f"configs.{name}").get_config(f"size={size}")
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    return None
  with config.unlocked(), node.ignore_type():
    node[leaf] = value
  return config


@pytest.mark.parametrize("name", ["train_tiny", "train_vitfiqa", "train_crfiqa"])
@pytest.mark.parametrize("field,value", TRAIN_COUNTS)
def test_train_settings_fail_naming_their_flag(name, field, value):
  """The task refuses each before it builds any data (a table over every count the loop uses)."""
  from exfiqa_jax.tasks import train as train_task
  config = _train_config(name, "default", field, value)
  if config is None:
    pytest.skip(f"{name} has no {field}")
  with pytest.raises(ValueError, match=rf"^--config\.{field} must be a whole number ≥ \d") as e:
    train_task.run(config)
  assert repr(value) in str(e.value)


def test_epochs_are_checked_only_when_they_count():
  config = _train_config("train_vitfiqa", "default", "epochs", 0)
  with pytest.raises(ValueError, match="--config.epochs must be .* ≥ 1 .*total_steps=0"):
    trainer.check_config(config)
  with pytest.raises(ValueError, match=r"^--config\.train\.epochs .*--config\.train\.total_"):
    trainer.check_config(config, "--config.train.")     # the demo nests them under train
  with config.unlocked():
    config.total_steps = 100
  trainer.check_config(config)
  for name in ("train_tiny", "train_vitfiqa", "train_crfiqa"):
    for size in ("default", "smoke"):
      trainer.check_config(_train_config(name, size, "seed", 0))


def test_the_loop_itself_checks_its_settings(tmp_path):
  with pytest.raises(ValueError, match=r"--config\.log_every"):
    trainer.train(tiny_train_config(str(tmp_path), log_every=0), tiny_data())
  assert os.listdir(tmp_path) == []


# ------------------------------------------------- RecordIO / LMDB sources (docs/data.md)
def _same_faces_three_ways(root) -> tuple[str, str, str, list[int]]:
  """The same JPEGs as an identity folder, an insightface RecordIO folder (tests/test_recordio.py's
  packer, identity-major like the folder's rows) and a ViT-FIQA LMDB (when lmdb is installed)."""
  from tests.test_recordio import write_faces
  labels = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3]
  images = write_faces(str(root / "rec"), labels, 4, magic_in=(4,))
  for k, (label, data) in enumerate(zip(labels, images)):
    os.makedirs(root / "folder" / f"id{label}", exist_ok=True)
    (root / "folder" / f"id{label}" / f"{k:02d}.jpg").write_bytes(data)
  lmdb_path = ""
  try:
    import lmdb as lmdb_lib
    import pickle
    lmdb_path = str(root / "faces.lmdb")
    env = lmdb_lib.open(lmdb_path, subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
      for k, data in enumerate(images):
        txn.put(str(k).encode("ascii"), data)
      txn.put(b"__keys__", pickle.dumps([str(k).encode("ascii") for k in range(len(images))]))
      txn.put(b"__labels__", pickle.dumps(labels))
      txn.put(b"__len__", pickle.dumps(len(images)))
    env.close()
  except ImportError:
    pass
  return str(root / "folder"), str(root / "rec"), lmdb_path, labels


def test_recordio_and_lmdb_give_the_folder_batches(tmp_path):
  """Through build_data: RecordIO and LMDB sources give the same batches, step for step, as an
  identity folder holding the same images; the .bin beside train.rec monitors by default."""
  import pickle
  folder, rec, lmdb_path, labels = _same_faces_three_ways(tmp_path)
  with open(os.path.join(rec, "lfw.bin"), "wb") as f:
    pickle.dump(([open(os.path.join(folder, "id0", "00.jpg"), "rb").read()] * 2, [True]), f)
  sources = {"image_folder": folder, "recordio": rec, **({"lmdb": lmdb_path} if lmdb_path
                                                          else {})}
  batches, pairs = {}, {}
  for kind, root in sources.items():
    config = tiny_train_config(str(tmp_path / "out"))
    with config.unlocked():
      config.batch_size, config.eval.every = 4, 10
      config.data = dict(kind=kind, root=root, channel_order="rgb", decode_threads=2)
    data, pairs[kind] = train_data.build_data(config)
    assert data.num_images == 12 and data.num_classes == 4, kind
    batches[kind] = [data.host_batch(s) for s in (0, 4, 2)]
  for kind in sources:
    for got, want in zip(batches[kind], batches["image_folder"]):
      np.testing.assert_array_equal(got["image"], want["image"], err_msg=kind)
      np.testing.assert_array_equal(got["label"], want["label"], err_msg=kind)
  assert pairs["image_folder"] is None and pairs["recordio"].images.shape == (2, 112, 112, 3)
  with pytest.raises(ValueError, match="--config.data.kind must be one of"):
    config.data.kind = "mxnet"
    train_data.build_data(config)


def test_recordio_source_resumes_where_it_stopped(tmp_path):
  """What a resumed run relies on (trainer: step s trains on data.host_batch(s)): a RecordIO
  source opened afresh, as by the resumed process, gives the batches of steps 3.. (the second
  epoch) that the uninterrupted source gave after it had read steps 0..2."""
  _, rec, _, _ = _same_faces_three_ways(tmp_path)
  running = train_data.RecordData(rec, 4, seed=5, threads=2)
  uninterrupted = [running.host_batch(s) for s in range(6)]
  resumed = train_data.RecordData(rec, 4, seed=5, threads=0)
  for s in range(3, 6):
    got = resumed.host_batch(s)
    np.testing.assert_array_equal(got["image"], uninterrupted[s]["image"])
    np.testing.assert_array_equal(got["label"], uninterrupted[s]["label"])
  assert not np.array_equal(uninterrupted[3]["label"], uninterrupted[0]["label"]) or \
      not np.array_equal(uninterrupted[3]["image"], uninterrupted[0]["image"])   # new epoch


# ------------------------------------- CR-FIQA: an iResNet + qs (configs/train_crfiqa.py)
def _crfiqa_reference(e, w, y, q, s=64.0, m=0.5, alpha=10.0, beta=0.5):
  """CR-FIQA's training loss in float64, written from fdbtrs/CR-FIQA (losses.CR_FIQA_LOSS,
  train_cr_fiqa.py): ArcFace cos(θ + m) on the target class for every θ; CR = CCS / NNCCS with
  the own class set to -1e-12 before the max; CE + α · SmoothL1_β(CR, qs)."""
  en = e / np.linalg.norm(e, axis=1, keepdims=True)
  wn = w / np.linalg.norm(w, axis=1, keepdims=True)
  c = np.clip(en @ wn.T, -1, 1)
  rows = np.arange(len(y))
  other = c.copy()
  other[rows, y] = -1e-12
  cr = c[rows, y] / other.max(1)
  theta = np.arccos(c)
  theta[rows, y] += m
  z = s * np.cos(theta)
  ce = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[rows, y]
  d = np.abs(cr - q)
  return ce.mean() + alpha * np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta).mean(), cr


def test_crfiqa_loss_is_its_training_code():
  """configs/train_crfiqa.py's loss settings give CR-FIQA's loss, past θ + m = π too (row 0's
  target lies at θ ≈ 2.8 > π − 0.5, where insightface's fallback differs); a row whose other
  classes all lie at negative cosines divides by the -1e-12 placeholder, as the code does."""
  from configs import train_crfiqa
  rng = np.random.default_rng(4)
  e, w = rng.normal(size=(12, 8)), rng.normal(size=(30, 8))
  y, q = rng.integers(0, 30, 12), rng.uniform(0.5, 3.0, 12)
  e[0] = -w[y[0]] + 0.3 * rng.normal(size=8)
  kwargs = trainer.loss_kwargs(train_crfiqa.get_config(), 30)
  assert kwargs["cr_denominator"] == "nnccs" and not kwargs["margin_fallback"]
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  ref, ref_cr = _crfiqa_reference(e, w, y, q)
  loss, m = losses.fiqa_loss(f32(e), f32(q), f32(w), jnp.asarray(y), **kwargs)
  np.testing.assert_allclose(loss, ref, rtol=2e-5)
  np.testing.assert_allclose(m["cr_mean"], ref_cr.mean(), rtol=1e-5)
  fallback, _ = losses.fiqa_loss(f32(e), f32(q), f32(w), jnp.asarray(y),
                                 **{**kwargs, "margin_fallback": True})
  assert abs(float(fallback) - ref) > 1e-3 * abs(ref)      # the setting is what made it equal
  cos = jnp.asarray([[0.5, -0.2, -0.3, 0.9]])              # class 3 is padding
  cr = losses.cr_target(cos, jnp.asarray([0]), losses.class_mask(4, 3), "nnccs")
  np.testing.assert_allclose(cr, [0.5 / -1e-12], rtol=1e-6)
  with pytest.raises(ValueError, match="--config.loss.cr_denominator must be one of"):
    losses.cr_target(cos, jnp.asarray([0]), None, "ratio")


def test_sgd_matches_torch_sgd_with_epoch_steps_and_backbone_clip():
  """trainer.make_optimizer's "sgd" against torch.optim.SGD(momentum 0.9, weight_decay 5e-4)
  after clip_grad_norm_(backbone, 5), with CR-FIQA's LambdaLR stepped at every epoch end
  (2 steps per epoch, milestones at 1-based epochs 2 and 3)."""
  torch = pytest.importorskip("torch")
  import ml_collections
  config = ml_collections.ConfigDict(dict(batch_size=4, optim=dict(
      kind="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, clip_norm=5.0, decay_epochs=(2, 3),
      decay_factor=0.1)))
  tx, schedule = trainer.make_optimizer(config, 8, 0, num_images=9)   # 9 // 4 = 2 steps/epoch
  np.testing.assert_allclose([float(schedule(s)) for s in range(7)],
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001], rtol=1e-6)
  rng = np.random.default_rng(5)
  params = {"backbone": {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))},
            "centres": rng.normal(size=(5, 3))}
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  st, update = tx.init(p), jax.jit(tx.update)
  tp = [torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in
        (params["backbone"]["a"], params["backbone"]["b"], params["centres"])]
  topt = torch.optim.SGD(tp, lr=0.1, momentum=0.9, weight_decay=5e-4)
  tsched = torch.optim.lr_scheduler.LambdaLR(
      topt, lambda epoch: 0.1 ** len([m for m in (2, 3) if m - 1 <= epoch]))
  for step in range(6):
    g = {"backbone": {"a": 4 * rng.normal(size=(4, 3)), "b": 4 * rng.normal(size=(3,))},
         "centres": 9 * rng.normal(size=(5, 3))}
    upd, st = update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), st, p)
    p = optax.apply_updates(p, upd)
    for param, grad in zip(tp, (g["backbone"]["a"], g["backbone"]["b"], g["centres"])):
      param.grad = torch.tensor(grad)
    torch.nn.utils.clip_grad_norm_(tp[:2], 5.0)
    topt.step()
    if step % 2 == 1:
      tsched.step()
  for ours, theirs in zip((p["backbone"]["a"], p["backbone"]["b"], p["centres"]), tp):
    np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=2e-6)
  with pytest.raises(ValueError, match="--config.optim.warmup_steps=0"):
    trainer.make_optimizer(config, 8, 2, num_images=9)


def test_crfiqa_config_is_the_official_run():
  """CR-FIQA(L)/(S) as config.py + train_cr_fiqa.py: iResNet100/50 + qs, 512 × SGD at 0.1,
  the lr ×0.1 from the start of epoch 8 (L: update 7 × 11,372 on MS1MV2's 5,822,653 images)."""
  from configs import train_crfiqa
  from exfiqa_jax.convert import quality_head_keys
  images = {"L": 5822653, "S": 501195}
  for name, depth, epochs, first in (("L", 100, 18, 8), ("S", 50, 34, 20)):
    config = train_crfiqa.get_config(f"model={name}")
    per_epoch = images[name] // 512
    assert config.architecture.depth == depth and config.batch_size == 512
    assert trainer.resolve_steps(config, images[name]) == (epochs * per_epoch, 0)
    _, schedule = trainer.make_optimizer(config, epochs * per_epoch, 0, images[name])
    boundary = (first - 1) * per_epoch
    assert [float(schedule(s)) for s in (0, boundary - 1)] == pytest.approx([0.1, 0.1])
    assert float(schedule(boundary)) == pytest.approx(0.01)
    _, spec = trainer.build_model(config.architecture)       # full size, shapes only
    ours = jax.eval_shape(spec.init_variables, jax.random.key(0))["params"]
    official = quality_head_keys.CRFIQA.expected_shapes(spec.to_dict())
    learned = [v for k, v in official.items() if k.rsplit(".", 1)[-1] in ("weight", "bias")]
    assert sum(x.size for x in jax.tree.leaves(ours)) == sum(int(np.prod(v)) for v in learned)
    assert len(jax.tree.leaves(ours)) == len(learned)       # L: 65,156,673 parameters
  with pytest.raises(ValueError, match=r"model='M' is not one of \('L', 'S'\)"):
    train_crfiqa.get_config("model=M")
  arch = dict(train_crfiqa.get_config().architecture)
  with pytest.raises(ValueError, match="--config.architecture.family='magface'"):
    trainer.build_model({**arch, "family": "magface"})
  with pytest.raises(ValueError, match="--config.architecture.depth=42"):
    trainer.build_model({**arch, "depth": 42})
  with pytest.raises(ValueError, match=r"--config.architecture has fields .*\['mode'\]"):
    trainer.build_model({**arch, "mode": "token"})


def test_crfiqa_initialisation_is_the_official_modules():
  """CrfiqaSpec.init_variables: torch's initial values of CR-FIQA's module (conv N(0, 0.1),
  nn.Linear U(±1/√fan_in) for weight and bias, BatchNorm 1/0 with stats 0/1, PReLU 0.25), in
  the tree the module applies; the training monitor reads its qs as the one exit."""
  config = crfiqa_train_config("unused")
  model, spec = trainer.build_model(config.architecture)
  variables = jax.jit(spec.init_variables)(jax.random.key(0))
  flax_init = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert jax.tree.structure(variables) == jax.tree.structure(flax_init)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(variables),
                                                jax.tree.leaves(flax_init)))
  net, stats = variables["params"]["backbone"], variables["batch_stats"]["backbone"]
  kernels = np.concatenate([np.ravel(x) for x in jax.tree.leaves(net) if x.ndim == 4])
  assert abs(np.std(kernels) - 0.1) < 0.01 and abs(np.mean(kernels)) < 0.01
  for layer, fan_in in ((net["fc"], 32 * 2 * 2), (variables["params"]["head"]["qs"], 16)):
    for leaf in layer.values():
      assert 0.5 / np.sqrt(fan_in) < np.max(np.abs(leaf)) <= 1 / np.sqrt(fan_in)
  np.testing.assert_array_equal(net["layer1"]["0"]["prelu"]["negative_slope"], 0.25)
  np.testing.assert_array_equal(net["features"]["scale"], 1.0)
  np.testing.assert_array_equal(net["features"]["bias"], 0.0)
  np.testing.assert_array_equal(stats["bn2"]["var"], 1.0)
  np.testing.assert_array_equal(stats["bn2"]["mean"], 0.0)
  images = crfiqa_data().images[:4]                       # the monitor: qs as the one exit
  out = step_lib.make_eval_fn(model, parallel.mesh(1))(variables, images)
  assert out["exit_scores"].shape == (4, 1) and out["embedding"].shape == (4, 16)
  qs = variables["params"]["head"]["qs"]
  np.testing.assert_allclose(out["exit_scores"][:, 0], np.asarray(out["embedding"])
                             @ np.asarray(qs["kernel"])[:, 0] + float(qs["bias"][0]), rtol=1e-5)


# ------------------------------------------- batches made ahead: threads, Grain workers (data.md)
def test_host_batches_same_with_1_and_4_workers_and_after_resume(tmp_path):
  """train/data.host_batches gives data.host_batch(s), step for step, from the thread (workers
  0), one Grain worker process, and four started at step 3 as a resumed run starts them at its
  restored step: 7 steps of 4 rows over 12 RecordIO images (the epoch turns at step 3)."""
  _, rec, _, _ = _same_faces_three_ways(tmp_path)
  data = train_data.RecordData(rec, 4, seed=5, threads=2)
  want = [data.host_batch(s) for s in range(7)]
  runs = {"thread": (0, 0), "1 worker": (0, 1), "4 workers from step 3": (3, 4)}
  for name, (start, workers) in runs.items():
    got = list(train_data.host_batches(data, start, 7, workers=workers))
    assert len(got) == 7 - start, name
    for s, batch in enumerate(got, start):
      np.testing.assert_array_equal(batch["image"], want[s]["image"], err_msg=f"{name}, step {s}")
      np.testing.assert_array_equal(batch["label"], want[s]["label"], err_msg=f"{name}, step {s}")
  with pytest.raises(ValueError, match="--config.data.workers"):
    train_data.host_batches(data, 0, 7, workers=-1)


def _add_noise(images, labels, rng):
  return images + rng.integers(0, 2, images.shape).astype(np.uint8)


def test_a_source_pickled_for_a_worker_keeps_its_host_place(tmp_path, monkeypatch):
  """A worker process is no JAX process: a source pickled on host 1 of 2 still gives host 1's
  rows (and its re-degradation draws) there; an LMDB source reopens its database."""
  import pickle
  images = np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  data = train_data.ArrayData(images, np.arange(8) % 4, 4, seed=1, transform=_add_noise)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  host1 = data.host_batch(2)
  copy = pickle.loads(pickle.dumps(data))
  monkeypatch.undo()
  assert len(host1["label"]) == 2 and len(data.host_batch(2)["label"]) == 4
  np.testing.assert_array_equal(copy.host_batch(2)["image"], host1["image"])
  np.testing.assert_array_equal(copy.host_batch(2)["label"], host1["label"])
  _, _, lmdb_path, _ = _same_faces_three_ways(tmp_path)
  if lmdb_path:
    faces = train_data.LmdbData(lmdb_path, 4, seed=5, threads=2)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(faces)).host_batch(4)["image"],
                                  faces.host_batch(4)["image"])
