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
  read_pt / read_model       a checkpoint read ONCE, with the identity of exactly the bytes that
                             were loaded: a file re-exported while a job runs can never be
                             recorded by its new bytes for results of the old ones
                             (docs/caching.md)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, NamedTuple

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
  return _parse_config(os.fspath(directory), _read_config_bytes(os.fspath(directory)))


def _read_config_bytes(directory: str) -> bytes:
  """The bytes of DIR/model_config.json, read once through identity.open_regular."""
  if not is_model_dir(directory):
    if os.path.lexists(os.path.join(directory, CONFIG_FILE)):
      identity.regular_stat(os.path.join(directory, CONFIG_FILE))   # a pipe: named, not read
    raise CheckpointError(
        f"{directory} is not a converted model directory (no {CONFIG_FILE}); convert a PyTorch "
        "file with `exfiqa-torch-to-flax --checkpoint=X.pt --out=DIR`, or pass "
        "the .pt itself")
  try:
    with identity.open_regular(os.path.join(directory, CONFIG_FILE)) as f:
      return f.read()
  except identity.SpecialFileError:
    raise
  except OSError as e:
    raise CheckpointError(f"{directory} is damaged: {CONFIG_FILE} is unreadable ({e}); "
                          "re-convert from the .pt") from e


def _parse_config(directory: str, raw: bytes, keep_integrity: bool = False) -> dict[str, Any]:
  try:
    config = json.loads(raw.decode("utf-8"))
  except ValueError as e:
    raise CheckpointError(f"{directory} is damaged: {CONFIG_FILE} is unreadable ({e}); "
                          "re-convert from the .pt") from e
  if not isinstance(config, dict):
    raise CheckpointError(f"{directory} is damaged: {CONFIG_FILE} holds no JSON object; "
                          "re-convert from the .pt")
  if not keep_integrity:
    config.pop(INTEGRITY_KEY, None)
  return config


def _integrity(config: dict[str, Any]) -> str | None:
  integrity = config.get(INTEGRITY_KEY)
  return integrity.get("variables_sha256") if isinstance(integrity, dict) else None


def recorded_digest(directory: str | os.PathLike) -> str | None:
  """The variables digest that `save_model` recorded (None for directories written before)."""
  try:
    config = files.read_json(os.path.join(os.fspath(directory), CONFIG_FILE))
  except (OSError, ValueError):
    return None
  return _integrity(config) if isinstance(config, dict) else None


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
                         "(exfiqa-torch-to-flax), or copy the directory again.")


def abstract_variables(model_config: dict[str, Any]) -> Any:
  """ShapeDtypeStructs of the variables the config's module creates (nothing is allocated)."""
  module = models.get_model(model_config)
  size = int(model_config.get("img_size", 112))
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x), images)


class Loaded(NamedTuple):
  """A checkpoint as loaded, with the identity of exactly what was loaded (docs/caching.md)."""
  variables: Any
  model_config: dict[str, Any]
  identity: dict[str, Any]


def load_model(directory: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
  """(variables replicated over the mesh, model_config) from a directory `save_model` wrote."""
  loaded = read_model(directory)
  return loaded.variables, loaded.model_config


def read_model(directory: str | os.PathLike) -> Loaded:
  """A directory `save_model` wrote, loaded, with its identity: the SHA-256 of the
  model_config.json bytes the load parsed and the variables digest those bytes record, which
  the restored values are verified against (directories written before the digest was
  recorded: the digest of the restored values). A directory replaced by a new export while
  it loads (its variables no longer match the config read first) is loaded again."""
  directory = os.path.abspath(os.fspath(directory))
  for attempt in range(3):
    raw = _read_config_bytes(directory)
    try:
      variables, model_config, digest = _restore(directory, _parse_config(directory, raw, True))
    except CheckpointError:
      if attempt < 2 and _config_changed(directory, raw):
        logging.warning("%s was replaced while it loaded; loading it again", directory)
        continue
      raise
    return Loaded(variables, model_config,
                  {"path": directory, "variables_sha256": digest,
                   "config_sha256": hashlib.sha256(raw).hexdigest()})
  raise AssertionError("unreachable")


def _config_changed(directory: str, raw: bytes) -> bool:
  try:
    return _read_config_bytes(directory) != raw
  except (OSError, CheckpointError):
    return True


def _restore(directory: str, model_config: dict[str, Any]) -> tuple[Any, dict[str, Any], str]:
  """(variables, model_config, variables digest) restored against the config's architecture."""
  recorded = _integrity(model_config)
  model_config = {k: v for k, v in model_config.items() if k != INTEGRITY_KEY}
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
  return variables, model_config, _verify(directory, variables, recorded)


def _verify(directory: str, variables: Any, recorded: str | None) -> str:
  """The digest of the restored values, which must match the recorded one; every weight
  finite."""
  digest = variables_digest(variables)
  if recorded is not None and digest != recorded:
    raise _damaged(directory, "its variables do not match the digest recorded when it was "
                   "written (bytes changed on disk)")
  leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
  bad = [jax.tree_util.keystr(p, simple=True, separator="/") for p, x in leaves
         if jnp.issubdtype(x.dtype, jnp.floating) and not np.isfinite(_host_leaf(x)).all()]
  if bad:
    raise CheckpointError(f"{directory} holds NaN/inf weights in {len(bad)} variable(s): "
                          f"{bad[:10]}; the training that wrote it diverged or the file is "
                          "damaged. Use an earlier checkpoint.")
  return digest


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
  not exist is recorded as missing, and a named pipe or device is a SpecialFileError naming it).
  What a job records of a model it LOADED is the identity `read_pt` / `read_model` return, of
  the bytes the load read: this one hashes the path as it is now."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.lexists(path):
    return {"path": path, "missing": True}     # the loader then says so, in its own words
  if not os.path.isdir(path):
    identity.regular_stat(path)                # a pipe, a device: named, never opened
    return identity.file_identity(path, digest=True)
  if not os.path.lexists(os.path.join(path, CONFIG_FILE)):
    return identity.file_identity(path, digest=True)
  raw = _read_config_bytes(path)
  try:
    recorded = _integrity(_parse_config(path, raw, keep_integrity=True))
  except CheckpointError:
    recorded = None
  if recorded is None:      # only the weights and their config; sidecar files do not count
    variables = os.path.join(path, VARIABLES_DIR)
    recorded = (identity.file_identity(variables, digest=True)["sha256"]
                if os.path.isdir(variables) else None)
  return {"path": path, "variables_sha256": recorded,
          "config_sha256": hashlib.sha256(raw).hexdigest()}


def read_pt(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """({torch key: array}, identity) of a PyTorch file read once: the identity (path, size,
  SHA-256: `identity.file_identity(path, digest=True)`'s form) is of the very bytes the state
  dict is loaded from. A named pipe or device is a SpecialFileError naming it."""
  path = os.path.abspath(os.fspath(path))
  if not os.path.lexists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist (pass a converted directory "
                            "or a PyTorch .pt file)")
  with identity.open_regular(path) as f:
    data = f.read()
  sd = convert.torch_io.load_state_dict(path, data=data)
  return sd, {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# ------------------------------------------------------------------------- PyTorch files
def pt_to_directory(checkpoint: str, out: str, num_heads: int | None = None,
                    family: str | None = None, overwrite: bool = False) -> dict[str, Any]:
  """Reads the `.pt` `checkpoint`, writes the converted directory `out`; returns its config.
  `out` is replaced only when it is empty or an earlier conversion, or with `overwrite`; never
  when it is or holds the input (files.check_replaceable: checked before any work)."""
  files.check_replaceable(out, folder=True, ours=SAVED, inputs=[checkpoint], overwrite=overwrite,
                          example=_free(os.path.splitext(os.path.abspath(checkpoint))[0]))
  sd, _ = read_pt(checkpoint)
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
