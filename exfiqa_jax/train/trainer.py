"""The training loop with Orbax checkpoints, exact resume, monitoring and eval.

  python main.py --config=configs/train_vitfiqa.py --config.output=OUT --config.data.root=DIR
  python main.py --config=configs/train_crfiqa.py --config.output=OUT --config.data.root=DIR
  python main.py --config=configs/train_tiny.py           # tiny synthetic run (demo/tests)

The model is config.architecture's (`build_model`): a ViT-FIQA ViT (ViTConfig fields), or with
family="crfiqa" an iResNet with CR-FIQA's `qs` head; the optimiser config.optim.kind's
(AdamW with warm-up/decay, or SGD with momentum and step decay: optim.py).

Layout of `config.output`:
  checkpoints/<step>/     Orbax CheckpointManager (keep-last-N, optional best-by-metric)
  train_log.csv           one row per `log_every` steps: loss terms, lr, images/s
  eval.csv                one row per verification evaluation: accuracy, EDC pAUC per exit
  model/                  the final model in the converted-model format
                          (exfiqa_jax.checkpoints.save_model: Orbax variables + model_config.json),
                          directly usable by the scoring command and converters/flax_to_torch.py
                          (a CR-FIQA model: family `crfiqa`, scored by the `crfiqa` method)

Resume: the latest checkpoint in `checkpoints/` is restored automatically. Step s draws its data
rows from `data.host_batch(s)` and its randomness from fold_in(key(seed), s), so stopping after
step k and resuming gives bit-identical parameters to an uninterrupted run.
"""
from __future__ import annotations

import csv
import dataclasses
import io as _io
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from tqdm import tqdm

from exfiqa_jax import columns as columns_lib
from exfiqa_jax import files, identity
from exfiqa_jax import parallel
from exfiqa_jax.train import monitor
from exfiqa_jax.train import augment as augment_lib
from exfiqa_jax.train import data as data_lib
from exfiqa_jax.train import optim
from exfiqa_jax.train import step as step_lib

TRAIN_COLUMNS = ("step", "loss", "loss_fr", "loss_fiq", "train_accuracy", "cr_mean",
                 "quality_mean", "grad_norm_backbone", "lr", "images_per_s", "elapsed_s")


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
      files.write_text(self.path, buf.getvalue())


# -------------------------------------------------------------------------------- model
CRFIQA = "crfiqa"          # config.architecture.family of an iResNet + qs (configs/train_crfiqa.py)


def build_model(model_config: dict[str, Any], dtype: str = "float32"):
  """(module, its spec) from config.architecture: ViTConfig fields → (VisionTransformer,
  ViTConfig); family="crfiqa" with IResNetConfig fields (`layers`, or `depth` 50/100 when
  layers is empty) → (IResNet + qs head, CrfiqaSpec). A spec gives embed_dim, img_size and
  to_dict() (the exported model_config)."""
  arch = dict(model_config)
  family = arch.pop("family", "")
  if family == CRFIQA:
    return crfiqa_model(arch, dtype)
  if family:
    raise ValueError(f"--config.architecture.family={family!r} is not a trainable family; use "
                     f"'{CRFIQA}' (an iResNet with CR-FIQA's qs head) or leave it out (ViT-FIQA)")
  from exfiqa_jax.models import vit
  cfg = vit.ViTConfig.from_dict(arch)
  return vit.VisionTransformer(cfg, dtype=jnp.dtype(dtype)), cfg


@dataclasses.dataclass(frozen=True)
class CrfiqaSpec:
  """An iResNet with CR-FIQA's `qs` head as the loop trains it (docs/methods.md, CR-FIQA)."""
  backbone: Any                       # models.iresnet.IResNetConfig, dropout included

  @property
  def embed_dim(self) -> int:
    return self.backbone.num_features

  @property
  def img_size(self) -> int:
    return self.backbone.img_size

  def to_dict(self) -> dict[str, Any]:
    """The exported model_config: what converting the official `.pt` of this network gives
    (convert/quality_head_keys.py CRFIQA), so `score`/`eval` read it as the `crfiqa` method;
    the dropout only acts in training and is recorded as the converter records it (0)."""
    from exfiqa_jax.convert import iresnet_keys, quality_head_keys
    family = quality_head_keys.CRFIQA
    return {"family": family.name, "kind": family.kind,
            "input_scale": iresnet_keys.ARCFACE_IRESNET.input_scale,       # its backbone's
            **dataclasses.replace(self.backbone, dropout=0.0).to_dict(),
            "quality_head": family.head}

  def init_variables(self, key: jax.Array) -> dict[str, Any]:
    """The official module's initial values (fdbtrs/CR-FIQA backbones/iresnet.py, torch
    defaults): conv kernels N(0, 0.1); `fc` and `qs` weight and bias U(±1/√fan_in) (nn.Linear);
    BatchNorm scale 1, bias 0, running mean 0, var 1; PReLU slopes 0.25. Under SGD with weight
    decay the conv scale sets the effective step of the BatchNorm-normalised convs. Two draws
    (all conv kernels, all Linear leaves) instead of one per tensor: XLA compiles each draw,
    and Flax's initialisers, discarded here, cost ~10 s of compilation on a CPU."""
    from exfiqa_jax.models import quality_heads
    module = quality_heads.get_model(self.to_dict())
    size = self.backbone.img_size
    abstract = jax.eval_shape(module.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    k_conv, k_linear = jax.random.split(key)
    leaves = jax.tree_util.tree_flatten_with_path(abstract["params"])[0]
    fan_in = {path[:-1]: leaf.shape[0] for path, leaf in leaves          # Linear layers
              if _name(path[-1]) == "kernel" and leaf.ndim == 2}
    convs = [leaf for _, leaf in leaves if leaf.ndim == 4]
    linear = [leaf for path, leaf in leaves if path[:-1] in fan_in]
    normal = iter(_split(0.1 * jax.random.normal(k_conv, (sum(x.size for x in convs),)), convs))
    uniform = iter(_split(jax.random.uniform(k_linear, (sum(x.size for x in linear),),
                                             minval=-1.0, maxval=1.0), linear))
    constant = {"scale": 1.0, "negative_slope": 0.25, "mean": 0.0, "var": 1.0}

    def value(path, leaf):        # tree order, as the draws were cut
      if leaf.ndim == 4:
        return next(normal)
      if path[:-1] in fan_in:
        return next(uniform) / float(np.sqrt(fan_in[path[:-1]]))
      return jnp.full(leaf.shape, constant.get(_name(path[-1]), 0.0), leaf.dtype)  # BN bias 0

    stats = jax.tree_util.tree_map_with_path(value, abstract["batch_stats"])
    return {"params": jax.tree_util.tree_map_with_path(value, abstract["params"]),
            "batch_stats": stats}


def _name(key) -> str:
  return str(getattr(key, "key", key))


def _split(flat: jax.Array, like: list) -> list[jax.Array]:
  """`flat` cut into consecutive pieces shaped as `like` (ShapeDtypeStructs)."""
  offsets = np.cumsum([0] + [x.size for x in like])
  return [flat[a:b].reshape(x.shape).astype(x.dtype)
          for a, b, x in zip(offsets, offsets[1:], like)]


def crfiqa_model(arch: dict[str, Any], dtype: str = "float32"):
  """(BackboneWithHead(IResNet, qs), CrfiqaSpec) from IResNetConfig fields + `depth`."""
  from exfiqa_jax.models import iresnet, quality_heads
  depth, layers = arch.pop("depth", 100), tuple(arch.pop("layers", ()) or ())
  if not layers:
    if depth not in iresnet.DEPTHS:
      raise ValueError(f"--config.architecture.depth={depth} is not an iResNet depth; known: "
                       f"{sorted(iresnet.DEPTHS)} (or give --config.architecture.layers)")
    layers = iresnet.DEPTHS[depth]
  unknown = set(arch) - {f.name for f in dataclasses.fields(iresnet.IResNetConfig)}
  if unknown:
    raise ValueError(f"--config.architecture has fields an iResNet does not: {sorted(unknown)}")
  cfg = iresnet.IResNetConfig.from_dict({**arch, "layers": layers})
  if cfg.layout != "iresnet":
    raise ValueError(f"--config.architecture.layout={cfg.layout!r}: CR-FIQA trains the "
                     "insightface iResNet; use layout='iresnet'")
  spec = CrfiqaSpec(cfg)
  module = quality_heads.get_model(spec.to_dict() | {"dropout": cfg.dropout}, jnp.dtype(dtype))
  return module, spec


def export_model(directory: str, state: step_lib.TrainState, model_cfg) -> None:
  """Writes the variables in the converted-model format (scoring command, flax_to_torch)."""
  from exfiqa_jax import checkpoints
  variables = jax.tree.map(np.asarray, parallel.global_to_host(state.variables()))
  checkpoints.save_model(directory, variables, model_cfg.to_dict())


def _checkpoint_manager(config, directory: str) -> ocp.CheckpointManager:
  best = config.checkpointing.get("best_metric", "") or None
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpointing.keep, create=True,
      best_fn=(lambda m: m[best]) if best else None,
      best_mode=config.checkpointing.get("best_mode", "max"),
      keep_checkpoints_without_metrics=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


# ------------------------------------------------------------------------------- resume
RUN_CONFIG = "train_config.json"      # the config a run started with (what it is made from)
# Settings a resumed run may change: none of them alters the parameters it computes.
RESUMABLE = ("task", "output", "progress", "distributed", "compile_cache", "stop_after",
             "log_every", "eval", "checkpointing", "export_model", "data.decode_threads",
             "data.workers")


def resume_relevant(config) -> dict[str, Any]:
  """The config without RESUMABLE fields: what decides the trained parameters."""
  out = identity.canonical(config)
  for dotted in RESUMABLE:
    *parents, leaf = dotted.split(".")
    node = out
    for p in parents:
      node = node.get(p, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
      node.pop(leaf, None)
  return out


def check_resume_config(config, output: str, latest: int | None) -> None:
  """Records the config a run starts with; a resumed run must match it (every field but
  RESUMABLE), else a ValueError listing what differs."""
  path = os.path.join(output, RUN_CONFIG)
  current = resume_relevant(config)
  if latest is not None and os.path.exists(path):
    started = files.read_json(path)
    diff = identity.changes(started, current)
    if diff:
      raise ValueError(
          f"{output} holds a training run (checkpoint at step {latest}) started with another "
          f"config: {identity.describe(diff, 10)}. Resume it with the config it started with "
          f"(recorded in {path}), or pass --config.output=<a new folder> to start a new run.")
    return
  if latest is not None:
    logging.warning("resuming %s: no %s records the config it started with; recording the "
                    "current one", output, RUN_CONFIG)
  if parallel.is_writer():
    files.write_json(path, current)


# ----------------------------------------------------------------------------- settings
# Every count the loop uses: (field, least value, what its least value means). A 0 batch, log or
# checkpoint interval divided by zero deep inside the loop; a negative one did nothing, silently.
COUNTS = (("batch_size", 1, ""), ("log_every", 1, ""), ("checkpointing.every", 1, ""),
          ("checkpointing.keep", 1, ""), ("eval.every", 0, " (0: no evaluation)"),
          ("eval.batch_size", 1, ""), ("total_steps", 0, " (0: epochs × images // batch_size)"),
          ("stop_after", 0, " (0: run to total_steps)"), ("optim.warmup_steps", 0, ""),
          ("warmup_epochs", 0, ""))


def check_config(config, prefix: str = "--config.") -> None:
  """The training settings, before any data is built: every count in COUNTS is a whole number
  at least its least value, and epochs ≥ 1 where they set the length (total_steps = 0). Each
  error names its flag: `prefix` + the field (the demo nests these under --config.train.)."""
  for field, least, meaning in COUNTS:
    value = _field(config, field)
    if value is not None:
      _check_count(prefix + field, value, least, meaning)
  if "epochs" in config and not _field(config, "total_steps"):
    _check_count(prefix + "epochs", config.epochs, 1, f" when {prefix}total_steps=0 (steps = "
                 "epochs × images // batch_size)")


def _field(config, dotted: str) -> Any:
  node = config
  for key in dotted.split("."):
    if key not in node:
      return None
    node = node[key]
  return node


def _check_count(flag: str, value: Any, least: int, meaning: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
      or value < least:
    raise ValueError(f"{flag} must be a whole number ≥ {least}{meaning}, got {value!r}")


# --------------------------------------------------------------------------------- loop
def resolve_steps(config, num_images: int) -> tuple[int, int]:
  """(total, warm-up) steps: config.total_steps / optim.warmup_steps, or, when total_steps is 0,
  epochs × (images // batch) and warmup_epochs × (images // batch) as the official run."""
  if config.total_steps:
    return int(config.total_steps), int(config.optim.get("warmup_steps", 0))
  per_epoch = num_images // config.batch_size
  if per_epoch == 0:
    raise ValueError(f"{num_images} images cannot fill one batch of {config.batch_size}; lower "
                     "--config.batch_size")
  return per_epoch * int(config.epochs), per_epoch * int(config.get("warmup_epochs", 0))


def loss_kwargs(config, num_classes: int) -> dict[str, Any]:
  """losses.fiqa_loss's settings from config.loss (cr_denominator and margin_fallback default to
  ViT-FIQA's: the papers' CR and insightface's margin)."""
  c = config.loss
  return dict(scale=c.scale, margins=tuple(c.margins), alpha=c.alpha, beta=c.beta,
              num_classes=num_classes, cr_denominator=c.get("cr_denominator", "nnccs_plus_one"),
              margin_fallback=c.get("margin_fallback", True))


OPTIMIZERS = ("adamw", "sgd")


def make_optimizer(config, total: int, warmup: int, num_images: int):
  """(tx, schedule) of config.optim.kind: "adamw" (the default: ViT-FIQA) or "sgd" (CR-FIQA:
  lr steps down by optim.decay_factor at the 1-based optim.decay_epochs, as its LambdaLR)."""
  o = config.optim
  kind = o.get("kind", "adamw")
  if kind == "adamw":
    return optim.make_optimizer(o.lr, warmup, total, weight_decay=o.weight_decay,
                                clip_norm=o.clip_norm, power=o.get("power", 1.0))
  if kind != "sgd":
    raise ValueError(f"--config.optim.kind must be one of {OPTIMIZERS}, got {kind!r}")
  if warmup:
    raise ValueError("SGD has no warm-up here (CR-FIQA trains without one); set "
                     "--config.optim.warmup_steps=0")
  per_epoch = max(num_images // config.batch_size, 1)
  boundaries = tuple((int(m) - 1) * per_epoch for m in o.get("decay_epochs", ()))
  return optim.make_sgd(o.lr, boundaries, momentum=o.momentum, weight_decay=o.weight_decay,
                        clip_norm=o.clip_norm, factor=o.get("decay_factor", 0.1))



def train(config, data: data_lib.TrainData, eval_pairs: data_lib.PairSet | None = None, model=None,
          model_cfg=None) -> step_lib.TrainState:
  """Runs (or resumes) training to config.total_steps (or config.stop_after); returns the state."""
  check_config(config)
  if model is None:
    model, model_cfg = build_model(config.architecture, config.get("compute_dtype", "float32"))
  mesh = parallel.mesh(max(int(config.get("shard_centres", 0)), 1))
  n_data = mesh.shape[step_lib.DATA]
  if config.batch_size % n_data:
    raise ValueError(f"--config.batch_size={config.batch_size} is not a multiple of the {n_data} "
                     f"data-parallel devices; use --config.batch_size="
                     f"{parallel.round_up_to_devices(config.batch_size)}")
  total, warmup = resolve_steps(config, data.num_images)
  tx, schedule = make_optimizer(config, total, warmup, data.num_images)
  init_key, base_key = jax.random.split(jax.random.key(config.seed))
  state, shardings = step_lib.init_state(model, tx, init_key, data.num_classes,
                                         model_cfg.embed_dim, mesh, model_cfg.img_size,
                                         init_variables=getattr(model_cfg, "init_variables",
                                                                None))
  output = config.output
  if parallel.is_writer():
    files.check_output_dir(output)
  manager = _checkpoint_manager(config, os.path.join(output, "checkpoints"))
  latest = manager.latest_step()
  check_resume_config(config, output, latest)
  if latest is not None:
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    logging.info("resumed from %s at step %d", manager.directory, latest)
  start = int(jax.device_get(state.step))

  aug = config.get("augment", None)
  use_aug = aug is not None and aug.get("enabled", True)
  aug_cfg = augment_lib.AugmentConfig.from_config(aug) if use_aug else None
  train_step = step_lib.make_train_step(model, tx, mesh=mesh, shardings=shardings,
                                        loss_kwargs=loss_kwargs(config, data.num_classes),
                                        augment=aug_cfg,
                                        schedule=schedule)
  eval_fn = step_lib.make_eval_fn(model, mesh) if eval_pairs is not None else None
  log = CsvLog(os.path.join(output, "train_log.csv"), start)
  eval_log = CsvLog(os.path.join(output, "eval.csv"), start)
  stop = min(int(config.get("stop_after", 0) or total), total)
  sharding = parallel.batch_sharding(mesh)

  def run_eval(s: int) -> dict[str, float]:
    res = monitor.evaluate_pairs(eval_fn, state.variables(), eval_pairs, mesh, config.eval.batch_size,
                         config.eval.fmr, config.eval.limit, config.seed)
    eval_log.add({"step": s, **res})
    logging.info("eval step %d: %s", s,
                 {k: v for k, v in res.items() if columns_lib.EXIT_PREFIX not in k})
    return res

  t0, t_log, n_log = time.time(), time.time(), 0
  bar = tqdm(range(start, stop), initial=start, total=stop, desc="train", unit="step",
             disable=not parallel.is_writer() or not config.get("progress", True))
  metrics = None
  batches = data_lib.host_batches(data, start, stop,   # made ahead; its state is the step
                                  workers=int(config.get("data", {}).get("workers", 0)))
  for s, batch in zip(bar, batches):
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
    if done % config.checkpointing.every == 0 or done == stop:
      manager.save(done, args=ocp.args.StandardSave(state),
                   metrics=res if (res and config.checkpointing.get("best_metric")) else None)
  batches.close()
  manager.wait_until_finished()
  if int(jax.device_get(state.step)) == total and config.get("export_model", True):
    model_dir = os.path.join(output, "model")
    if start < stop or not os.path.isdir(model_dir):   # a finished run keeps its export as is
      export_model(model_dir, state, model_cfg)
  manager.close()
  return state


