"""Converted models on disk: an Orbax variables tree plus `model_config.json`, in one directory.

  DIR/model_config.json   architecture + "family" (exfiqa_jax.convert.families), JSON
  DIR/variables/          Orbax StandardCheckpointer tree {"params", "batch_stats"}

Written atomically (everything goes to `DIR.partial`, which is renamed onto DIR at the end), so
a directory either holds a complete model or does not exist. Restored against a target that
`jax.eval_shape` builds from the config, so a tree that does not fit the architecture is an
error instead of a silently different model. model_config.json also records the SHA-256 of the
variables ("integrity", written at save, checked at every load): flipped bytes, a deleted or
truncated data file or missing Orbax metadata are a CheckpointError naming the directory
("damaged: re-convert from the .pt"), and NaN/inf weights are reported as such.

  pt_to_directory / directory_to_pt   a PyTorch `.pt` ⇄ a converted directory (docs/checkpoints.md)
  checkpoint_identity(path)  what a cached result records of its checkpoint: always a content
                             digest (a `.pt` is hashed, a converted directory gives the variables
                             digest recorded in its model_config.json)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from exfiqa_jax import convert, files, identity, models, parallel
from exfiqa_jax.convert.strict import CheckpointError

CONFIG_FILE = "model_config.json"
VARIABLES_DIR = "variables"
SAVED = (CONFIG_FILE, VARIABLES_DIR)     # what save_model writes: all a conversion may replace
INTEGRITY_KEY = "integrity"       # {"variables_sha256": ...} in model_config.json


def is_model_dir(path: str | os.PathLike) -> bool:
  return os.path.isfile(os.path.join(os.fspath(path), CONFIG_FILE))


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def save_model(directory: str | os.PathLike, variables: Any, model_config: dict[str, Any]
               ) -> str:
  """Writes `variables` and `model_config` to `directory` atomically (replacing an old one)."""
  directory = os.path.abspath(os.fspath(directory))
  partial, old = directory + ".partial", directory + ".old"
  for leftover in (partial, old):       # left by an interrupted save
    if parallel.is_writer() and os.path.lexists(leftover):
      if not files.holds_only(leftover, SAVED):
        raise FileExistsError(f"{leftover} is in the way of saving {directory} and holds files "
                              "a save does not write; move it away")
      shutil.rmtree(leftover)
  _sync("save_model:clean")
  variables = flax.core.unfreeze(variables)
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(os.path.join(partial, VARIABLES_DIR), variables)
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()
  if parallel.is_writer():
    recorded = {k: v for k, v in model_config.items() if k != INTEGRITY_KEY}
    recorded[INTEGRITY_KEY] = {"variables_sha256": variables_digest(variables)}
    files.write_json(os.path.join(partial, CONFIG_FILE), recorded)
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
  try:
    config = files.read_json(os.path.join(directory, CONFIG_FILE))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{directory} is damaged: {CONFIG_FILE} is unreadable ({e}); "
                          "re-convert from the .pt") from e
  if not isinstance(config, dict):
    raise CheckpointError(f"{directory} is damaged: {CONFIG_FILE} holds no JSON object; "
                          "re-convert from the .pt")
  config.pop(INTEGRITY_KEY, None)
  return config


def recorded_digest(directory: str | os.PathLike) -> str | None:
  """The variables digest that `save_model` recorded (None for directories written before)."""
  try:
    config = files.read_json(os.path.join(os.fspath(directory), CONFIG_FILE))
  except (OSError, ValueError):
    return None
  integrity = config.get(INTEGRITY_KEY) if isinstance(config, dict) else None
  return integrity.get("variables_sha256") if isinstance(integrity, dict) else None


def _host_leaf(x: Any) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if x.sharding.is_fully_replicated:
      return np.asarray(x.addressable_shards[0].data)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def variables_digest(variables: Any) -> str:
  """SHA-256 over every leaf (path, dtype, shape, bytes) in path order; floating leaves as
  float32, the dtype they are restored in."""
  leaves = jax.tree_util.tree_flatten_with_path(flax.core.unfreeze(variables))[0]
  named = sorted((jax.tree_util.keystr(p, simple=True, separator="/"), x) for p, x in leaves)
  digest = hashlib.sha256()
  for name, x in named:
    a = _host_leaf(x)
    if np.issubdtype(a.dtype, np.floating):
      a = a.astype(np.float32, copy=False)
    a = np.ascontiguousarray(a)
    digest.update(json.dumps([name, str(a.dtype), list(a.shape)]).encode())
    digest.update(a.reshape(-1).view(np.uint8))           # the bytes, without a copy
  return digest.hexdigest()


def _damaged(directory: str, what: str, error: Exception | None = None) -> CheckpointError:
  detail = ""
  if error is not None:
    first = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
    detail = f" ({type(error).__name__}: {first[:160]}{'…' if len(first) > 160 else ''})"
  return CheckpointError(f"{directory} is damaged: {what}{detail}. Re-convert from the .pt "
                         "(python -m converters.torch_to_flax), or copy the directory again.")


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
  convert.families.check_recorded(model_config, os.path.join(directory, CONFIG_FILE))
  sharding = parallel.replicated()
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        flax.core.unfreeze(abstract_variables(model_config)))
  path = os.path.join(directory, VARIABLES_DIR)
  if not os.path.isdir(path):
    raise _damaged(directory, f"its {VARIABLES_DIR}/ folder is missing")
  checkpointer = ocp.StandardCheckpointer()
  try:
    try:
      item = checkpointer.metadata(path).item_metadata
    except Exception as e:     # Orbax/TensorStore raise many types for a damaged tree
      raise _damaged(directory, "its Orbax metadata cannot be read", e) from e
    if item is None:
      raise _damaged(directory, f"its Orbax metadata ({VARIABLES_DIR}/_METADATA or the "
                     "manifest) is missing or empty")
    stored = _flat_shapes(item)
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
    try:
      variables = checkpointer.restore(path, target)
    except Exception as e:
      raise _damaged(directory, "its variables cannot be read (a data file is missing, "
                     "truncated or corrupt)", e) from e
  finally:
    checkpointer.close()
  _verify(directory, variables)
  return variables, model_config


def _verify(directory: str, variables: Any) -> None:
  """The recorded digest matches the restored values, and every weight is finite."""
  recorded = recorded_digest(directory)
  if recorded is not None and variables_digest(variables) != recorded:
    raise _damaged(directory, "its variables do not match the digest recorded when it was "
                   "written (bytes changed on disk)")
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  bad = [jax.tree_util.keystr(p, simple=True, separator="/") for p, x in leaves
         if jnp.issubdtype(x.dtype, jnp.floating) and not np.isfinite(_host_leaf(x)).all()]
  if bad:
    raise CheckpointError(f"{directory} holds NaN/inf weights in {len(bad)} variable(s): "
                          f"{bad[:10]}; the training that wrote it diverged or the file is "
                          "damaged. Use an earlier checkpoint.")


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(dict(tree))[0]
  return {jax.tree_util.keystr(p, simple=True, separator="/"): tuple(x.shape)
          for p, x in leaves}


def to_numpy(variables: Any) -> Any:
  """Host numpy copy of (replicated) variables, e.g. for the reverse converter."""
  return jax.tree.map(np.asarray, parallel.global_to_host(variables))


def checkpoint_identity(path: str | os.PathLike) -> dict[str, Any]:
  """A content identity of a checkpoint: the SHA-256 of a `.pt`; for a converted directory the
  variables digest recorded in its model_config.json and the digest of that file (a directory
  without a recorded digest, from an older version, is hashed file by file; a path that does
  not exist is recorded as missing)."""
  path = os.path.abspath(os.fspath(path))
  if os.path.isfile(path):
    return identity.file_identity(path, digest=True)
  if not os.path.isdir(path):
    return {"path": path, "missing": True}     # the loader then says so, in its own words
  config_file = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_file):
    return identity.file_identity(path, digest=True)
  recorded = recorded_digest(path)
  if recorded is None:      # only the weights and their config; sidecar files do not count
    variables = os.path.join(path, VARIABLES_DIR)
    recorded = (identity.file_identity(variables, digest=True)["sha256"]
                if os.path.isdir(variables) else None)
  return {"path": path, "variables_sha256": recorded,
          "config_sha256": identity.sha256_file(config_file)}


# ------------------------------------------------------------------------- PyTorch files
def pt_to_directory(checkpoint: str, out: str, num_heads: int | None = None,
                    family: str | None = None, overwrite: bool = False) -> dict[str, Any]:
  """Reads the `.pt` `checkpoint`, writes the converted directory `out`; returns its config.
  `out` is replaced only when it is empty or an earlier conversion, or with `overwrite`; never
  when it is or holds the input (files.check_replaceable: checked before any work)."""
  files.check_replaceable(out, folder=True, ours=SAVED, inputs=[checkpoint], overwrite=overwrite,
                          example=_free(os.path.splitext(os.path.abspath(checkpoint))[0]))
  sd = convert.torch_io.load_state_dict(checkpoint)
  variables, config = convert.convert_state_dict(sd, num_heads=num_heads, family=family,
                                                 source=checkpoint)
  save_model(out, variables, config)
  count = sum(int(np.size(v)) for v in jax.tree.leaves(variables.get("params", {})))
  logging.info("converted %s (%s, %s) → %s: %d parameters",
               checkpoint, config["family"], config.get("mode", config.get("layout")),
               os.path.abspath(out), count)
  return config


def directory_to_pt(checkpoint: str, out: str, overwrite: bool = False
                    ) -> dict[str, np.ndarray]:
  """Reads the converted directory `checkpoint`, writes `out` (.pt) that the official module
  loads strictly; returns the state dict written. An existing `out` file is replaced only with
  `overwrite`; a folder never is."""
  files.check_replaceable(out, folder=False, inputs=[checkpoint], overwrite=overwrite,
                          example=_free(os.path.abspath(checkpoint).rstrip(os.sep), ".pt"))
  variables, config = load_model(checkpoint)
  family = convert.families.family_of_config(config)
  sd = family.to_torch(to_numpy(variables), config)
  convert.torch_io.save_state_dict(sd, out)
  logging.info("wrote %s: %d tensors (%s)", os.path.abspath(out), len(sd), family.name)
  return sd


def _free(stem: str, suffix: str = "") -> str:
  """`stem + suffix`, or the first `stem_<k> + suffix` that does not exist: a name to suggest."""
  name, k = stem + suffix, 1
  while os.path.lexists(name):
    name, k = f"{stem}_{k}{suffix}", k + 1
  return name
