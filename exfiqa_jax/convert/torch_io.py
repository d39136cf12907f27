"""Reading and writing PyTorch `.pt` state dicts as plain numpy (torch is imported lazily).

Only tensors are accepted (`torch.load(..., weights_only=True)`): a checkpoint that pickles
Python objects is refused with instructions to re-save it. Wrappers used by the released
checkpoints are undone here, once for every family:
  {"state_dict": sd} | {"model": sd} | sd, and a `module.` / `net.` prefix shared by every key
  (DataParallel / DDP and CVLFace's model wrapper).
A safetensors file that torch cannot read is named as such, with how to re-save it as a `.pt`.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from exfiqa_jax.convert.strict import CheckpointError
from exfiqa_jax import files, identity

WRAPPER_KEYS = ("state_dict", "model")
PREFIXES = ("module.", "net.")
INSTALL_HINT = ("reading/writing PyTorch checkpoints needs torch; install the CPU build with "
                "`pip install torch==2.13.0` (see requirements-dev.txt), or convert the "
                "checkpoint once on a machine that has it (exfiqa-torch-to-flax)")


def import_torch():
  """torch, or an ImportError that says how to install a CPU build."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(INSTALL_HINT) from e
  return torch


def unwrap(obj: Any, path: str = "<checkpoint>") -> dict[str, Any]:
  """{"state_dict"|"model": sd} → sd; strips a `module.`/`net.` prefix shared by all keys."""
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of "
                          "tensors); save `model.state_dict()` instead of the model")
  for key in WRAPPER_KEYS:
    if isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  sd = dict(obj)
  stripped = True
  while sd and stripped:
    stripped = False
    for prefix in PREFIXES:
      if all(isinstance(k, str) and k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        stripped = True
  return sd


def _refusal(path: str, error: Exception) -> CheckpointError:
  lines = [l.strip() for l in str(error).splitlines() if "Unsupported" in l or "global" in l]
  reason = (lines[0] if lines else str(error).splitlines()[0]).split(" Please use")[0]
  return CheckpointError(
      f"{path} is not a plain state_dict: it pickles Python objects that torch refuses to "
      f"load safely (weights_only=True): {reason}\n"
      "Re-save it as plain tensors where its code is importable (trusted files only: "
      "unpickling runs arbitrary code):\n"
      "  obj = torch.load(path, map_location='cpu', weights_only=False)\n"
      "  torch.save(obj.state_dict() if hasattr(obj, 'state_dict') else obj['state_dict'], "
      "'plain.pt')\n"
      "then convert plain.pt.")


def is_safetensors(data: bytes) -> bool:
  """Whether `data` (a file's bytes) is a safetensors file: an 8-byte little-endian header
  length, then that many bytes of JSON header."""
  size = int.from_bytes(data[:8], "little")
  return len(data) >= 9 and data[8:9] == b"{" and 2 <= size <= len(data) - 8


def check_archive(data: bytes, path: str) -> None:
  """A zip-format `.pt` (torch >= 1.6) is read member by member against its CRC-32s; torch
  itself does not check them, so flipped bytes would load as changed weights. Legacy (pickle
  format) files carry no checksums and pass unchecked."""
  if data[:2] != b"PK":
    return
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      bad = archive.testzip()
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
    raise CheckpointError(f"{path} is damaged: not a complete zip archive ({e}); download or "
                          "copy the checkpoint again") from e
  if bad is not None:
    raise CheckpointError(f"{path} is damaged: {bad} fails its CRC-32 check (changed or "
                          "truncated bytes); download or copy the checkpoint again")


def load_state_dict(path: str | os.PathLike, data: bytes | None = None
                    ) -> dict[str, np.ndarray]:
  """A `.pt`/`.pth` file → {torch key: numpy array} (float tensors keep their dtype).

  The file is read once (`data`: its bytes, already read by a caller that hashed them) and
  everything is checked and loaded from those bytes: a file replaced meanwhile cannot mix in."""
  torch = import_torch()
  path = os.fspath(path)
  if data is None:
    if not os.path.exists(path):
      raise FileNotFoundError(f"checkpoint {path} does not exist")
    with identity.open_regular(path) as f:      # a pipe or a folder: refused by name
      data = f.read()
  check_archive(data, path)
  try:
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except Exception as e:   # torch wraps the refusal in other types in some versions
    if is_safetensors(data):      # torch reads one only when named .safetensors, via that package
      raise CheckpointError(
          f"{path} is a safetensors file, not a PyTorch pickle: the toolkit reads .pt/.pth state "
          "dicts. Re-save it as one (tensors only, nothing to trust): pip install safetensors, "
          f"then `from safetensors.torch import load_file; torch.save(load_file({path!r}), "
          "'model.pt')`, and pass model.pt") from None
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e) \
        or "Unsupported global" in str(e):
      raise _refusal(path, e) from None
    raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e
  sd = unwrap(obj, path)
  bad = sorted(f"{k} ({type(v).__name__})" for k, v in sd.items()
               if not isinstance(v, torch.Tensor))
  if bad:
    raise CheckpointError(f"{path}: the state_dict holds non-tensor entries {bad}; a model "
                          "state_dict maps names to tensors only (pass the inner dict)")
  out = {}
  for k, v in sd.items():
    v = v.detach().cpu()
    if v.dtype == torch.bfloat16:   # numpy has no bfloat16; float32 holds it exactly
      v = v.float()
    out[k] = v.numpy()
  return out


def save_state_dict(state_dict: dict[str, np.ndarray], path: str | os.PathLike) -> None:
  """{key: numpy} → a plain `.pt` state dict (tensors only), written atomically."""
  torch = import_torch()
  tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state_dict.items()}
  with files.atomic_path(path) as tmp:
    torch.save(tensors, tmp)
