"""Strict conversion of the MTCNN weights that the facenet-pytorch wheel ships (pnet.pt, rnet.pt,
onet.pt; MIT) into the Flax modules of exfiqa_jax/models/mtcnn.py.

The weights are read from the installed package's data folder (found without importing the
package, which needs torchvision) or from a path: the wheel file itself (read with zipfile) or a
folder holding the three files. Nothing is downloaded. Each file is loaded with
`torch.load(weights_only=True)` and checked like every other family (convert/strict.py): every
missing, unexpected or mis-shaped key is listed at once. Torch → Flax: conv weights
[O, I, kh, kw] → kernels [kh, kw, I, O], dense weights [O, I] → [I, O], PReLU weights → `alpha`.
The dense layers need no reordering of their inputs: the Flax modules flatten in the release's
(W, H, C) order (models/mtcnn.py). MTCNN is not registered in convert/families.py: it is not a
quality or FR model and must never be detected from a user's checkpoint.
docs/data.md, "Raw photos: detection and alignment".
"""
from __future__ import annotations

import functools
import importlib.util
import io
import os
import pickle
import zipfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax.convert import torch_io
from exfiqa_jax.convert.strict import CheckpointError, check_state_dict
from exfiqa_jax.models import mtcnn

PACKAGE = "facenet_pytorch"
INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"
FILES = {name: f"{name}.pt" for name in mtcnn.NETS}
WHEEL_DIR = "facenet_pytorch/data"


class WeightsNotFound(FileNotFoundError):
  """The MTCNN weights are not installed and no wheel or folder holding them was given."""


def _missing_message(detail: str) -> str:
  return (f"{detail}. Face detection (align=detect) reads the MTCNN weights that the "
          f"facenet-pytorch wheel ships; install it without its (old, pinned) dependencies: "
          f"`{INSTALL}` (torch is needed to read them: pip install torch==2.13.0), or pass the "
          "wheel file or a folder holding pnet.pt, rnet.pt, onet.pt as the detector weights "
          "(--config.data.detector_weights=PATH, `weights=` in Python)")


def installed_data_dir() -> str | None:
  """facenet_pytorch's data folder, located without importing the package."""
  try:
    spec = importlib.util.find_spec(PACKAGE)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  for location in spec.submodule_search_locations:
    folder = os.path.join(location, "data")
    if all(os.path.isfile(os.path.join(folder, f)) for f in FILES.values()):
      return folder
  return None


def _load_bytes(data: bytes, label: str) -> dict[str, np.ndarray]:
  torch = torch_io.import_torch()
  try:
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise CheckpointError(f"{label} is not a plain state_dict of tensors (refused by "
                          f"weights_only=True): {str(e).splitlines()[0]}") from None
  except Exception as e:  # noqa: BLE001  torch raises assorted types for damaged files
    raise CheckpointError(f"cannot read {label} as a PyTorch checkpoint: {e}") from e
  sd = torch_io.unwrap(obj, label)
  bad = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
  if bad:
    raise CheckpointError(f"{label}: non-tensor entries {bad}")
  return {k: v.detach().cpu().float().numpy() for k, v in sd.items()}


def read_release(source: str | os.PathLike | None = None) -> tuple[dict[str, dict], str]:
  """({"pnet": sd, "rnet": sd, "onet": sd}, where they came from).

  `source`: None/"" = the installed facenet_pytorch; a `.whl` file; or a folder with the files.
  """
  if source in (None, ""):
    folder = installed_data_dir()
    if folder is None:
      raise WeightsNotFound(_missing_message("facenet-pytorch is not installed"))
    source = folder
  source = os.fspath(source)
  if os.path.isdir(source):
    missing = [f for f in FILES.values() if not os.path.isfile(os.path.join(source, f))]
    if missing:
      raise WeightsNotFound(_missing_message(f"{source} lacks {missing}"))
    out = {}
    for name, file in FILES.items():
      with open(os.path.join(source, file), "rb") as f:
        out[name] = _load_bytes(f.read(), os.path.join(source, file))
    return out, source
  if not os.path.isfile(source):
    raise WeightsNotFound(_missing_message(f"{source} does not exist"))
  try:
    with zipfile.ZipFile(source) as wheel:
      members = set(wheel.namelist())
      missing = [f for f in FILES.values() if f"{WHEEL_DIR}/{f}" not in members]
      if missing:
        raise WeightsNotFound(_missing_message(f"{source} holds no {WHEEL_DIR}/{missing}"))
      bad = wheel.testzip()
      if bad is not None:
        raise CheckpointError(f"{source} is damaged: {bad} fails its CRC-32 check")
      out = {name: _load_bytes(wheel.read(f"{WHEEL_DIR}/{file}"), f"{source}:{file}")
             for name, file in FILES.items()}
  except zipfile.BadZipFile as e:
    raise WeightsNotFound(_missing_message(f"{source} is neither a folder nor a wheel "
                                           f"(zip) file ({e})")) from e
  return out, source


@functools.lru_cache(maxsize=None)
def _param_shapes(name: str) -> dict:
  module = mtcnn.NETS[name]()
  size = mtcnn.INPUT_SIZES[name]
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, size, size, 3), jnp.float32))
  return jax.tree.map(lambda s: tuple(s.shape), shapes["params"])


def _torch_shape(leaf: str, shape: tuple) -> tuple:
  if leaf == "kernel":
    return tuple(shape[::-1]) if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
  return shape


def _torch_leaf(leaf: str) -> str:
  return "bias" if leaf == "bias" else "weight"


def expected_shapes(name: str) -> dict[str, tuple]:
  """Every key of the release's `<name>.pt` and its torch shape (from the Flax module)."""
  return {f"{layer}.{_torch_leaf(leaf)}": _torch_shape(leaf, shape)
          for layer, leaves in _param_shapes(name).items() for leaf, shape in leaves.items()}


def to_flax(name: str, sd: Mapping[str, np.ndarray]) -> dict:
  """One network's torch state dict → Flax {"params": ...}, strict."""
  check_state_dict(expected_shapes(name), sd,
                   hint=f"expected the facenet-pytorch 2.6.0 {FILES[name]} ({INSTALL})")
  params: dict[str, dict[str, np.ndarray]] = {}
  for layer, leaves in _param_shapes(name).items():
    params[layer] = {}
    for leaf, shape in leaves.items():
      value = np.asarray(sd[f"{layer}.{_torch_leaf(leaf)}"], np.float32)
      if leaf == "kernel":
        value = value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
      params[layer][leaf] = np.ascontiguousarray(value)
      assert params[layer][leaf].shape == shape
  return {"params": params}


def to_torch(name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The inverse of `to_flax` (round trips and tests)."""
  out = {}
  for layer, leaves in variables["params"].items():
    for leaf, value in leaves.items():
      value = np.asarray(value)
      if leaf == "kernel":
        value = value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
      out[f"{layer}.{_torch_leaf(leaf)}"] = np.ascontiguousarray(value)
  return out


def load_variables(source: str | os.PathLike | None = None) -> dict[str, dict]:
  """{"pnet": variables, "rnet": ..., "onet": ...} from the release (see `read_release`)."""
  return _load_cached(os.fspath(source) if source else "")


@functools.lru_cache(maxsize=4)
def _load_cached(source: str) -> dict[str, dict]:
  release, _ = read_release(source or None)
  return {name: to_flax(name, sd) for name, sd in release.items()}
