"""Train state and the jitted, sharded training step (docs/methods.md).

State = {step, params: {"backbone", "centres"}, batch_stats, opt_state}. The batch axis is sharded
over the mesh axis `data`; the backbone is replicated; the class centres [C_pad, E] are
replicated, or split over a `model` axis (a 2-D ("data", "model") mesh) for large class counts
(MS1MV2: 85,742 classes). All randomness of step s comes from fold_in(key(seed), s) — the
augmentation, drop-path and token-masking keys — so the parameters after step n depend only on
(seed, data of steps 0..n), which is what makes a resumed run bit-identical.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from exfiqa_jax import parallel
from exfiqa_jax.train import augment as augment_lib
from exfiqa_jax.train import losses

DATA, MODEL = parallel.BATCH_AXIS, parallel.MODEL_AXIS


@flax.struct.dataclass
class TrainState:
  step: jax.Array                 # int32 [], number of updates applied
  params: dict[str, Any]          # {"backbone": model params, "centres": [C_pad, E]}
  batch_stats: dict[str, Any]
  opt_state: optax.OptState

  def variables(self) -> dict[str, Any]:
    """The model variables in the converted-model layout ({"params", "batch_stats"})."""
    return {"params": self.params["backbone"], "batch_stats": self.batch_stats}


def padded_classes(num_classes: int, mesh: Mesh) -> int:
  """Class count rounded up so the class axis divides the model axis."""
  m = mesh.shape.get(MODEL, 1)
  return -(-num_classes // m) * m


def state_sharding(abstract_state: TrainState, mesh: Mesh) -> TrainState:
  """Every leaf replicated, except class-centre-shaped leaves under "centres" (params and the
  AdamW moments), which are split over `model` when the mesh has that axis."""
  shard = MODEL in mesh.axis_names

  def rule(path, leaf):
    names = [getattr(k, "key", getattr(k, "name", "")) for k in path]
    if shard and "centres" in names and getattr(leaf, "ndim", 0) == 2:
      return NamedSharding(mesh, P(MODEL, None))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(rule, abstract_state)


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
               num_classes: int, embed_dim: int, mesh: Mesh, image_size: int = 112,
               init_variables: Callable[[jax.Array], Any] | None = None
               ) -> tuple[TrainState, TrainState]:
  """Random init (backbone from the model's initialisers, centres N(0, 0.01) as PartialFC).

  `init_variables(key)`, when given, makes the model's variables instead of `model.init`
  (CR-FIQA: the official module's torch initialisation). Returns (state, its sharding tree);
  the state is created directly in its sharded layout.
  """
  num_padded = padded_classes(num_classes, mesh)

  def init(k):
    k_model, k_centres = jax.random.split(k)
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = (model.init(k_model, dummy) if init_variables is None
                 else init_variables(k_model))
    params = {"backbone": variables["params"],
              "centres": 0.01 * jax.random.normal(k_centres, (num_padded, embed_dim), jnp.float32)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

  abstract = jax.eval_shape(init, key)
  shardings = state_sharding(abstract, mesh)
  return jax.jit(init, out_shardings=shardings)(key), shardings


def step_keys(base_key: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
  """The per-step keys: fold_in(base, step) split into augment / dropout / masking."""
  k = jax.random.fold_in(base_key, step)
  k_aug, k_drop, k_mask = jax.random.split(k, 3)
  return {"augment": k_aug, "dropout": k_drop, "masking": k_mask}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, mesh: Mesh,
                    shardings: TrainState, loss_kwargs: dict[str, Any],
                    augment: augment_lib.AugmentConfig | None = None,
                    schedule: optax.Schedule | None = None, donate: bool = True
                    ) -> Callable[[TrainState, dict[str, jax.Array], jax.Array],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """jit(step)(state, batch, base_key) -> (new state, metrics of replicated scalars).

  batch: {"image": uint8 (or float 0..255) [B, H, W, 3], "label": int32 [B]}, sharded on `data`.
  loss_kwargs go to losses.fiqa_loss (scale, margins, alpha, beta, num_classes, cr_denominator,
  margin_fallback).
  """
  centres_logits = NamedSharding(mesh, P(DATA, MODEL)) if MODEL in mesh.axis_names else None

  def step_fn(state: TrainState, batch, base_key):
    keys = step_keys(base_key, state.step)
    images = augment_lib.augment_batch(keys["augment"], batch["image"], augment)
    labels = batch["label"].astype(jnp.int32)

    def loss_fn(params):
      variables = {"params": params["backbone"], "batch_stats": state.batch_stats}
      (_, out), updates = model.apply(variables, images, train=True,
                                      rngs={"dropout": keys["dropout"],
                                            "masking": keys["masking"]},
                                      mutable=["batch_stats"])
      centres = params["centres"]
      if centres_logits is not None:
        centres = jax.lax.with_sharding_constraint(centres, NamedSharding(mesh, P(MODEL, None)))
      loss, metrics = losses.fiqa_loss(out["embedding"], out["quality"], centres, labels,
                                       **loss_kwargs)
      return loss, (metrics, updates.get("batch_stats", state.batch_stats))

    (_, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics["grad_norm_backbone"] = optax.tree.norm(grads["backbone"])
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    return new_state, metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(step_fn,
                 in_shardings=(shardings, parallel.batch_sharding(mesh), replicated),
                 out_shardings=(shardings, replicated),
                 donate_argnums=(0,) if donate else ())


def make_eval_fn(model: nn.Module, mesh: Mesh) -> Callable[[dict[str, Any], jax.Array],
                                                           dict[str, jax.Array]]:
  """jit(eval)(variables, images uint8 [B, H, W, 3]) -> {"exit_scores" [B, L], "embedding" [B, E]}
  (a model without exits, an iResNet with its quality head: its quality as the one exit)."""

  @functools.partial(jax.jit, in_shardings=(NamedSharding(mesh, P()), parallel.batch_sharding(mesh)),
                     out_shardings=parallel.batch_sharding(mesh))
  def eval_fn(variables, images):
    x = augment_lib.augment_batch(jax.random.key(0), images, None)
    _, out = model.apply(variables, x)
    scores = out["exit_scores"] if "exit_scores" in out else out["quality"][:, None]
    return {"exit_scores": scores, "embedding": out["embedding"]}

  return eval_fn
