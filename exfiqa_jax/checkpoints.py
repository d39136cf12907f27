"""Converted models on disk: an Orbax variables tree plus `model_config.json`, in one directory.

  DIR/model_config.json   architecture + "family" (exfiqa_jax.convert.families), JSON
  DIR/variables/          Orbax StandardCheckpointer tree {"params", "batch_stats"}

Written atomically (everything goes to `DIR.partial`, which is renamed onto DIR at the end), so
a directory either holds a complete model or does not exist. Restored against a target that
`jax.eval_shape` builds from the config, so a tree that does not fit the architecture is an
error instead of a silently different model.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from exfiqa_jax.convert.strict import CheckpointError
from exfiqa_jax import files, models, parallel

CONFIG_FILE = "model_config.json"
VARIABLES_DIR = "variables"


def is_model_dir(path: str | os.PathLike) -> bool:
  return os.path.isfile(os.path.join(os.fspath(path), CONFIG_FILE))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def save_model(directory: str | os.PathLike, variables: Any, model_config: dict[str, Any]
               ) -> str:
  """Writes `variables` and `model_config` to `directory` atomically (replacing an old one)."""
  directory = os.path.abspath(os.fspath(directory))
  partial = directory + ".partial"
  if parallel.is_writer() and os.path.exists(partial):
    shutil.rmtree(partial)      # left by an interrupted save
  _sync("save_model:clean")
  variables = flax.core.unfreeze(variables)
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(os.path.join(partial, VARIABLES_DIR), variables)
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()
  if parallel.is_writer():
    files.write_json(os.path.join(partial, CONFIG_FILE), model_config)
    old = directory + ".old"
    if os.path.exists(directory):
      os.replace(directory, old)
    os.replace(partial, directory)
    if os.path.exists(old):
      shutil.rmtree(old)
  _sync("save_model:done")
  return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
  directory = os.fspath(directory)
  if not is_model_dir(directory):
    raise CheckpointError(
        f"{directory} is not a converted model directory (no {CONFIG_FILE}); convert a PyTorch "
        "file with `python -m converters.torch_to_flax --checkpoint=X.pt --out=DIR`, or pass "
        "the .pt itself")
  return files.read_json(os.path.join(directory, CONFIG_FILE))


def abstract_variables(model_config: dict[str, Any]) -> Any:
  """ShapeDtypeStructs of the variables the config's module creates (nothing is allocated)."""
  module = models.get_model(model_config)
  size = int(model_config.get("img_size", 112))
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), images)


def load_model(directory: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
  """(variables replicated over the mesh, model_config) from a directory `save_model` wrote."""
  directory = os.path.abspath(os.fspath(directory))
  model_config = read_config(directory)
  sharding = parallel.replicated()
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        flax.core.unfreeze(abstract_variables(model_config)))
  path = os.path.join(directory, VARIABLES_DIR)
  checkpointer = ocp.StandardCheckpointer()
  try:
    stored = _flat_shapes(checkpointer.metadata(path).item_metadata)
    wanted = _flat_shapes(target)
    problems = ([f"missing {k} {list(v)}" for k, v in wanted.items() if k not in stored]
                + [f"unexpected {k}" for k in stored if k not in wanted]
                + [f"{k}: stored {list(stored[k])}, config needs {list(v)}"
                   for k, v in wanted.items() if k in stored and stored[k] != v])
    if problems:
      raise CheckpointError(
          f"the variables in {directory} do not fit its {CONFIG_FILE} "
          f"({model_config.get('family', 'vit')}):\n  " + "\n  ".join(problems[:40])
          + "\nRe-convert the checkpoint (or fix model_config.json).")
    variables = checkpointer.restore(path, target)
  finally:
    checkpointer.close()
  return variables, model_config


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(dict(tree))[0]
  return {jax.tree_util.keystr(p, simple=True, separator="/"): tuple(x.shape)
          for p, x in leaves}


def to_numpy(variables: Any) -> Any:
  """Host numpy copy of (replicated) variables, e.g. for the reverse converter."""
  return jax.tree.map(np.asarray, parallel.global_to_host(variables))
