"""Task "train": the training loop with Orbax checkpoints, exact resume, monitoring and eval.

  python main.py --config=configs/train_vitfiqa.py --config.output=OUT --config.data.root=DIR
  python main.py --config=configs/train_tiny.py           # tiny synthetic run (demo/tests)

Layout of `config.output`:
  checkpoints/<step>/     Orbax CheckpointManager (keep-last-N, optional best-by-metric)
  train_log.csv           one row per `log_every` steps: loss terms, lr, images/s
  eval.csv                one row per verification evaluation: accuracy, EDC pAUC per exit
  model/                  the final model in the converted-model format
                          (exfiqa_jax.checkpoints.save_model: Orbax variables + model_config.json),
                          directly usable by the scoring command and converters/flax_to_torch.py

Resume: the latest checkpoint in `checkpoints/` is restored automatically. Step s draws its data
rows from `data.host_batch(s)` and its randomness from fold_in(key(seed), s), so stopping after
step k and resuming gives bit-identical parameters to an uninterrupted run.
"""
from __future__ import annotations

import csv
import io as _io
import os
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from tqdm import tqdm

from exfiqa_jax import io as xio
from exfiqa_jax import parallel
from exfiqa_jax.train import augment as augment_lib
from exfiqa_jax.train import optim
from exfiqa_jax.train import step as step_lib

TRAIN_COLUMNS = ("step", "loss", "loss_fr", "loss_fiq", "train_accuracy", "cr_mean",
                 "quality_mean", "grad_norm_backbone", "lr", "images_per_s", "elapsed_s")


# -------------------------------------------------------------------------------- data
class TrainData(Protocol):
  """What the loop needs from a training set: random access by step (=> resumable)."""
  num_classes: int
  num_images: int

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch of `step`: {"image" uint8 [b, H, W, 3],
    "label" int32 [b]}, b = global batch / process count."""


class _StepSampler:
  """Samples without replacement per epoch; the permutation of epoch e is a pure function of
  (seed, e), so the rows of every step — and hence a resumed run — are reproducible. Each
  process loads only its own slice of the global batch."""

  def __init__(self, labels: np.ndarray, global_batch: int, seed: int, num_classes: int | None,
               transform=None):
    if global_batch > len(labels):
      raise ValueError(f"batch {global_batch} is larger than the training set ({len(labels)} "
                       "images); lower config.batch_size.")
    self.labels = np.asarray(labels, np.int32)
    self.global_batch, self.seed, self.transform = global_batch, seed, transform
    self.num_classes = int(num_classes or self.labels.max() + 1)
    self.num_images = len(self.labels)
    self.steps_per_epoch = self.num_images // global_batch
    self._perm_epoch, self._perm = -1, None

  def _rows(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_images)
      self._perm_epoch = epoch
    rows = self._perm[i * self.global_batch:(i + 1) * self.global_batch]
    local = self.global_batch // jax.process_count()
    return rows[jax.process_index() * local:(jax.process_index() + 1) * local]

  def _load(self, rows: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    rows = self._rows(step)
    images, labels = self._load(rows), self.labels[rows]
    if self.transform is not None:
      rng = np.random.default_rng([self.seed, 1 << 20, step, jax.process_index()])
      images = self.transform(images, labels, rng)
    return {"image": np.asarray(images, np.uint8), "label": labels}


class ArrayData(_StepSampler):
  """In-memory training set (synthetic faces, small sets). `transform(images, labels, rng)`
  (optional) re-degrades clean images afresh every batch (online re-degradation); `rng` is a
  numpy Generator seeded from (seed, step)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, global_batch: int, seed: int = 0,
               num_classes: int | None = None,
               transform: Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
               | None = None):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    super().__init__(labels, global_batch, seed, num_classes, transform)
    self.images = images

  def _load(self, rows):
    return self.images[rows]


class FolderData(_StepSampler):
  """An identity folder `<root>/<identity>/**/<image>` (e.g. MS1MV2 exported to images); labels
  are the sorted identity folder names' indices. Images are decoded per step by a thread pool."""

  def __init__(self, root: str, global_batch: int, seed: int = 0, channel_order: str = "rgb",
               threads: int = 16):
    from exfiqa_jax.data import preprocess
    if not os.path.isdir(root):
      raise FileNotFoundError(f"training folder {root!r} does not exist; set config.data.root to "
                              "a folder with one sub-folder of face crops per identity.")
    identities = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for label, ident in enumerate(identities):
      files = preprocess.list_images(os.path.join(root, ident))
      paths += files
      labels += [label] * len(files)
    if not paths:
      raise ValueError(f"no images under {root!r}: expected <root>/<identity>/<image>.jpg|png")
    super().__init__(np.asarray(labels), global_batch, seed, len(identities))
    self.paths, self.identities, self.channel_order = paths, identities, channel_order
    self._decode = preprocess.decode_image
    from concurrent.futures import ThreadPoolExecutor
    self._pool = ThreadPoolExecutor(threads)

  def _load(self, rows):
    return np.stack(list(self._pool.map(
        lambda r: self._decode(self.paths[r], self.channel_order), rows)))


class PairSet(Protocol):
  """A verification pair set: images uint8 [N, H, W, 3], pairs int [P, 2], is_genuine bool [P]."""
  images: np.ndarray
  pairs: np.ndarray
  is_genuine: np.ndarray


class ArrayPairs:
  """A pair set held in memory (see PairSet)."""

  def __init__(self, images: np.ndarray, pairs: np.ndarray, is_genuine: np.ndarray):
    self.images, self.pairs = np.asarray(images, np.uint8), np.asarray(pairs, np.int64)
    self.is_genuine = np.asarray(is_genuine, bool)


def load_bin_pairs(path: str, channel_order: str = "rgb") -> ArrayPairs:
  """An insightface verification .bin (read with the restricted unpickler): pairs (2i, 2i+1)."""
  from exfiqa_jax.data import preprocess
  from exfiqa_jax.data.builders import verification_bin
  bins, issame = verification_bin.read_bin(path)
  images = np.stack([preprocess.decode_image(bytes(b), channel_order) for b in bins])
  n = len(issame)
  return ArrayPairs(images, np.stack([2 * np.arange(n), 2 * np.arange(n) + 1], 1), issame)


def synthetic_sizes(data_config, split_per_identity: int | None = None):
  """The identity split of config.data (train / val / test identities are disjoint ranges)."""
  from exfiqa_jax.data import synthetic
  return synthetic.SplitSizes(
      train=int(data_config.num_identities), val=int(data_config.eval_identities),
      test=int(data_config.get("test_identities", synthetic.SplitSizes().test)),
      per_identity=int(split_per_identity or data_config.images_per_identity))


def _synthetic_data(config) -> tuple[TrainData, PairSet]:
  """Synthetic faces: the training split stored clean and re-degraded afresh every batch (online
  re-degradation), or degraded once; the validation split's pairs for monitoring."""
  from exfiqa_jax.data import synthetic
  d = config.data
  online = bool(d.get("online_degradation", True))
  gamma = float(d.get("gamma", synthetic.GAMMA))
  clean = float(d.get("clean_fraction", synthetic.CLEAN_FRACTION))
  train = synthetic.make_split(config.seed, "train", synthetic_sizes(d), degraded=not online,
                               clean_fraction=clean, gamma=gamma)

  def redegrade(images, labels, rng):
    severity, kind = synthetic.sample_degradations(rng, len(images), clean)
    return synthetic.degrade(images, severity, kind, rng, gamma)

  data = ArrayData(train.images, train.label, config.batch_size, config.seed,
                   transform=redegrade if online else None)
  val = synthetic.make_split(config.seed, "val", synthetic_sizes(d, d.get("eval_per_identity", 10)),
                             clean_fraction=clean, gamma=gamma)
  pairs, genuine = synthetic.make_pairs(val.label, config.seed)
  if d.get("num_pairs", 0) and len(pairs) > d.num_pairs:
    keep = np.sort(np.random.default_rng([config.seed, 3]).choice(len(pairs), d.num_pairs,
                                                                   replace=False))
    pairs, genuine = pairs[keep], genuine[keep]
  return data, ArrayPairs(val.images, pairs, genuine)


# --------------------------------------------------------------------------- evaluation
def verification_accuracy(scores: np.ndarray, is_genuine: np.ndarray, folds: int = 10) -> float:
  """insightface-style 10-fold accuracy: threshold chosen on 9 folds, accuracy on the 10th."""
  scores, is_genuine = np.asarray(scores, np.float64), np.asarray(is_genuine, bool)
  idx = np.arange(len(scores))
  accs = []
  for f in range(min(folds, len(scores))):
    test = idx % folds == f
    train = ~test
    thr = np.unique(scores[train])
    acc_train = [np.mean((scores[train] >= t) == is_genuine[train]) for t in thr]
    best = thr[int(np.argmax(acc_train))]
    accs.append(np.mean((scores[test] >= best) == is_genuine[test]))
  return float(np.mean(accs))


def embed_and_score(eval_fn, variables, images: np.ndarray, mesh, batch: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Runs the eval program over all images -> (exit_scores [N, L], embeddings [N, E])."""
  n_dev = mesh.devices.size
  batch = -(-batch // n_dev) * n_dev
  scores, embs = [], []
  sharding = step_lib.batch_sharding(mesh)
  local = batch // jax.process_count()
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    pad = batch - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    rows = chunk[jax.process_index() * local:(jax.process_index() + 1) * local]
    out = eval_fn(variables, jax.make_array_from_process_local_data(sharding, rows))
    out = parallel.global_to_host(out)
    scores.append(out["exit_scores"][:batch - pad])
    embs.append(out["embedding"][:batch - pad])
  return np.concatenate(scores), np.concatenate(embs)


def evaluate_pairs(eval_fn, variables, pairs: PairSet, mesh, batch: int, fmr: float,
                   limit: float, seed: int = 0) -> dict[str, float]:
  """Verification accuracy and EDC pAUC (FIQA convention) of every exit and a random quality."""
  from exfiqa_jax import edc  # the EDC helper's module (imported late: optional for training)
  exit_scores, emb = embed_and_score(eval_fn, variables, pairs.images, mesh, batch)
  e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
  a, b = pairs.pairs[:, 0], pairs.pairs[:, 1]
  cos = np.sum(e[a] * e[b], axis=1)
  genuine = np.asarray(pairs.is_genuine, bool)
  pair_q = np.minimum(exit_scores[a], exit_scores[b]).T                  # [L, P]
  rand = np.random.default_rng(seed).random(len(pairs.images))
  pair_q = np.concatenate([pair_q, np.minimum(rand[a], rand[b])[None]])  # [L+1, P]
  discard = np.asarray(getattr(edc, "FIQA_DISCARD", np.linspace(0.0, 0.3, 31)))
  fnmr = edc.edc_fnmr(jnp.asarray(cos, jnp.float32), jnp.asarray(genuine),
                      jnp.asarray(pair_q, jnp.float32), fmrs=(fmr,), discard=discard, mode="fiqa")
  area = np.asarray(edc.pauc(fnmr, discard, limit=limit))[:, 0]          # [L+1]
  n_exits = exit_scores.shape[1]
  best = int(np.argmin(area[:n_exits]))
  result = {"accuracy": verification_accuracy(cos, genuine),
            "pauc_last": float(area[n_exits - 1]), "pauc_random": float(area[-1]),
            "pauc_best": float(area[best]), "best_exit": best + 1,
            "pauc_ratio_last": float(area[n_exits - 1] / max(area[-1], 1e-12))}
  for l in range(n_exits):
    result[f"pauc_exit_{l + 1}"] = float(area[l])
  return result


# ---------------------------------------------------------------------------------- CSV
class CsvLog:
  """A CSV rewritten atomically on every flush; on resume rows after the restored step go."""

  def __init__(self, path: str, resume_step: int):
    self.path, self.rows = path, []
    if os.path.exists(path):
      with open(path, newline="", encoding="utf-8") as f:
        self.rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= resume_step]

  def add(self, row: dict[str, Any]) -> None:
    self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    if parallel.is_writer():
      columns = list(dict.fromkeys(k for r in self.rows for k in r))
      buf = _io.StringIO()
      writer = csv.DictWriter(buf, columns)
      writer.writeheader()
      writer.writerows(self.rows)
      xio.write_text(self.path, buf.getvalue())


# -------------------------------------------------------------------------------- model
def build_model(model_config: dict[str, Any], dtype: str = "float32"):
  """(ViT module, ViTConfig) from config.model (ViTConfig fields)."""
  from exfiqa_jax.models import vit
  cfg = vit.ViTConfig.from_dict(dict(model_config))
  return vit.VisionTransformer(cfg, dtype=jnp.dtype(dtype)), cfg


def export_model(directory: str, state: step_lib.TrainState, model_cfg) -> None:
  """Writes the variables in the converted-model format (scoring command, flax_to_torch)."""
  from exfiqa_jax import checkpoints
  variables = jax.tree.map(np.asarray, parallel.global_to_host(state.variables()))
  checkpoints.save_model(directory, variables, model_cfg.to_dict())


def _checkpoint_manager(config, directory: str) -> ocp.CheckpointManager:
  best = config.checkpoint.get("best_metric", "") or None
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpoint.keep, create=True,
      best_fn=(lambda m: m[best]) if best else None,
      best_mode=config.checkpoint.get("best_mode", "max"),
      keep_checkpoints_without_metrics=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


# --------------------------------------------------------------------------------- loop
def resolve_steps(config, num_images: int) -> tuple[int, int]:
  """(total, warm-up) steps: config.total_steps / optim.warmup_steps, or, when total_steps is 0,
  epochs × (images // batch) and warmup_epochs × (images // batch) as the official run."""
  if config.total_steps:
    return int(config.total_steps), int(config.optim.warmup_steps)
  per_epoch = num_images // config.batch_size
  if per_epoch == 0:
    raise ValueError(f"{num_images} images cannot fill one batch of {config.batch_size}")
  return per_epoch * int(config.epochs), per_epoch * int(config.warmup_epochs)



def train(config, data: TrainData, eval_pairs: PairSet | None = None, model=None,
          model_cfg=None) -> step_lib.TrainState:
  """Runs (or resumes) training to config.total_steps (or config.stop_after); returns the state."""
  if model is None:
    model, model_cfg = build_model(config.model, config.get("compute_dtype", "float32"))
  mesh = step_lib.make_mesh(max(int(config.get("shard_centres", 0)), 1))
  n_data = mesh.shape[step_lib.DATA]
  if config.batch_size % n_data:
    raise ValueError(f"config.batch_size {config.batch_size} is not a multiple of the {n_data} "
                     f"data-parallel devices; use {parallel.round_up_to_devices(config.batch_size)}.")
  total, warmup = resolve_steps(config, data.num_images)
  tx, schedule = optim.make_optimizer(
      config.optim.lr, warmup, total, weight_decay=config.optim.weight_decay,
      clip_norm=config.optim.clip_norm, power=config.optim.get("power", 1.0))
  init_key, base_key = jax.random.split(jax.random.key(config.seed))
  state, shardings = step_lib.init_state(model, tx, init_key, data.num_classes,
                                         model_cfg.embed_dim, mesh, model_cfg.img_size)
  output = config.output
  manager = _checkpoint_manager(config, os.path.join(output, "checkpoints"))
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    logging.info("resumed from %s at step %d", manager.directory, latest)
  start = int(jax.device_get(state.step))

  aug = config.get("augment", None)
  use_aug = aug is not None and aug.get("enabled", True)
  aug_cfg = augment_lib.AugmentConfig.from_config(aug) if use_aug else None
  loss_kwargs = dict(scale=config.loss.scale, margins=tuple(config.loss.margins),
                     alpha=config.loss.alpha, beta=config.loss.beta, num_classes=data.num_classes)
  train_step = step_lib.make_train_step(model, tx, mesh=mesh, shardings=shardings,
                                        loss_kwargs=loss_kwargs, augment=aug_cfg,
                                        schedule=schedule)
  eval_fn = step_lib.make_eval_fn(model, mesh) if eval_pairs is not None else None
  log = CsvLog(os.path.join(output, "train_log.csv"), start)
  eval_log = CsvLog(os.path.join(output, "eval.csv"), start)
  stop = min(int(config.get("stop_after", 0) or total), total)
  sharding = step_lib.batch_sharding(mesh)

  def run_eval(s: int) -> dict[str, float]:
    res = evaluate_pairs(eval_fn, state.variables(), eval_pairs, mesh, config.eval.batch_size,
                         config.eval.fmr, config.eval.limit, config.seed)
    eval_log.add({"step": s, **res})
    logging.info("eval step %d: %s", s, {k: v for k, v in res.items() if "exit_" not in k})
    return res

  t0, t_log, n_log = time.time(), time.time(), 0
  bar = tqdm(range(start, stop), initial=start, total=stop, desc="train", unit="step",
             disable=not parallel.is_writer() or not config.get("progress", True))
  metrics = None
  for s in bar:
    batch = data.host_batch(s)
    batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    state, metrics = train_step(state, batch, base_key)
    n_log += config.batch_size
    done = s + 1
    if done % config.log_every == 0 or done == stop:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.time()
      row = {"step": done, **m, "images_per_s": n_log / max(now - t_log, 1e-9),
             "elapsed_s": now - t0}
      log.add({k: row[k] for k in TRAIN_COLUMNS if k in row})
      bar.set_postfix(loss=f"{m['loss']:.3f}", fiq=f"{m['loss_fiq']:.4f}",
                      acc=f"{m['train_accuracy']:.2f}", ips=f"{row['images_per_s']:.0f}")
      t_log, n_log = now, 0
    res = None
    if eval_fn is not None and config.eval.every and (done % config.eval.every == 0
                                                      or done == total):
      res = run_eval(done)
    if done % config.checkpoint.every == 0 or done == stop:
      manager.save(done, args=ocp.args.StandardSave(state),
                   metrics=res if (res and config.checkpoint.get("best_metric")) else None)
  manager.wait_until_finished()
  if int(jax.device_get(state.step)) == total and config.get("export_model", True):
    model_dir = os.path.join(output, "model")
    if start < stop or not os.path.isdir(model_dir):   # a finished run keeps its export as is
      export_model(model_dir, state, model_cfg)
  manager.close()
  return state


def build_data(config) -> tuple[TrainData, PairSet | None]:
  """The training set and the verification pair set named by config.data / config.eval."""
  kind = config.data.kind
  if kind == "image_folder":
    data = FolderData(config.data.root, config.batch_size, config.seed,
                      config.data.get("channel_order", "rgb"))
    bin_path = config.eval.get("pairs_bin", "")
    pairs = load_bin_pairs(bin_path, config.data.get("channel_order", "rgb")) if bin_path else None
    return data, pairs
  if kind == "synthetic":
    return _synthetic_data(config)
  raise ValueError(f"config.data.kind must be 'image_folder' or 'synthetic', got {kind!r}")


def run(config) -> None:
  """Task entry point: builds the training set (and pair set) from config.data, then trains."""
  data, pairs = build_data(config)
  train(config, data, pairs)
