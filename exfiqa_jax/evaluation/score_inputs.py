"""What the score job reads, before it scores anything (exfiqa_jax/tasks/score.py): every input
checked with an error that names its flag, the stored cascade --config.cascade asks for, the
model loaded, and the identity the outputs are stamped with (docs/caching.md: any change to
what the scores are made from recomputes them).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import jax
from absl import logging

from exfiqa_jax import checkpoints, files, identity, inference, parallel
from exfiqa_jax.convert import strict
from exfiqa_jax.data import preprocess
from exfiqa_jax.evaluation import score_chunks
from exfiqa_jax.methods import registry
from exfiqa_jax.models import exits

FORMAT = 3   # 3: "" no longer means only the ViT-FIQA pass (an FR ViT adds ViTNT columns)
METHOD_FLAG = "--config.quality_model.method="


def identity_of(config, path, method, paths, names, channel_order, exit: int,
                dtype: str = "float32") -> dict[str, Any]:
  """What the scores are made from (docs/caching.md): any change recomputes them. The
  checkpoint as its path is now, for the stamp check; a run records what it loaded
  (loaded_checkpoint)."""
  asked = registry.identity(method, registry.config_options(config.quality_model))
  return {"format": FORMAT,
          "checkpoint": checkpoints.checkpoint_identity(path),
          "num_heads": config.quality_model.num_heads,
          "family": config.quality_model.family or "", "channel_order": channel_order,
          "exit": exit, "skip_unreadable": bool(config.skip_unreadable),
          "names": identity.names_identity(names), "images": identity.files_identity(paths),
          **({"compute_dtype": dtype} if dtype != "float32" else {}),   # float32 stamps stay valid
          **asked}                              # {} for the ViT-FIQA pass: old stamps stay valid


@contextlib.contextmanager
def naming_flag(flag: str):
  """A special file (a named pipe, a device) where a file is needed: the error names the flag."""
  try:
    yield
  except identity.SpecialFileError as e:
    raise identity.SpecialFileError(f"{e}; pass {flag}") from None


def check_inputs(config, path: str) -> tuple[str, list[str], list[str]]:
  """(channel order, image paths, names): every input problem before any work."""
  if not path or not config.images:
    raise ValueError("pass --config.quality_model.path=<converted dir or .pt> and "
                     "--config.images=<image folder or list file>")
  channel_order = preprocess.check_channel_order(config.data.channel_order)
  with naming_flag("--config.images=<image folder or list file>"):   # a pipe, a device
    paths, names = preprocess.read_image_list(config.images, config.image_root or None)
  if not paths:
    raise ValueError(f"no images in {config.images}: a folder needs image files "
                     f"({', '.join(preprocess.IMAGE_EXTENSIONS)}) somewhere below it, a list "
                     "file one path per line")
  if int(config.batch_size) < 1:
    raise ValueError(f"--config.batch_size must be at least 1, got {config.batch_size}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist; pass "
                            "--config.quality_model.path=<converted dir or .pt>")
  if not os.path.isdir(path):
    with naming_flag("--config.quality_model.path=<converted dir or .pt>"):
      identity.regular_stat(path)            # a pipe or a device is never opened
  score_chunks.check_chunk_images(config)
  if parallel.is_writer():
    files.check_output_dir(config.output)    # before any compute
  return channel_order, paths, names


def stored_cascade(config, path: str, method: str, exit: int
                   ) -> exits.CascadeThresholds | None:
  """The stored cascade --config.cascade asks for (inference.stored_cascade), or None."""
  asked = str(config.get("cascade", "") or "").strip()
  if not asked:
    return None
  try:
    target = None if asked == "stored" else float(asked)
  except ValueError:
    raise ValueError(f"--config.cascade={asked!r}: 'stored' (the headline cascade stored with "
                     "the model), an agreement target such as 0.95, or '' (off)") from None
  why = ("it runs the ViT's own exits; a quality method has none" if method else
         "pass --config.exit=0: the cascade decides where each image stops" if exit else
         "the cascade runs on one host" if jax.process_count() > 1 else
         f"the early_exit job stores cascades in a converted model directory; {path} is a file"
         if not os.path.isdir(path) else "")
  if why:
    raise ValueError(f"--config.cascade={asked}: {why}")
  try:
    return inference.stored_cascade(path, target)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"{e} (--config.cascade={asked})") from None


def load_model(config, path: str, method: str, dtype: str
               ) -> inference.QualityModel | inference.MethodModel:
  """The quality model or method (errors name the flags that fix them)."""
  with strict.flags_named(family="--config.quality_model.family=",
                          num_heads="--config.quality_model.num_heads=", method=METHOD_FLAG):
    return inference.load(path, method=method, num_heads=config.quality_model.num_heads,
                          family=config.quality_model.family or None,
                          batch_size=config.batch_size, dtype=dtype,
                          method_options=registry.config_options(config.quality_model))


def loaded_checkpoint(path: str, before: dict[str, Any], model) -> dict[str, Any]:
  """The checkpoint identity the scores record: that of the bytes the model was loaded from
  (model.identity: checkpoints.read_pt / read_model), not of the path hashed `before` the load
  for the completion-stamp check, which a file re-exported in between would misname. A
  directory written before its variables digest was recorded identifies its loaded values in
  another form than checkpoint_identity: it keeps `before` when hashing it again after the
  load gives the same, so that its stamp can match the next run's check."""
  loaded = model.identity
  if loaded == before:
    return loaded
  if os.path.isdir(path) and checkpoints.recorded_digest(path) is None and (
      checkpoints.checkpoint_identity(path) == before):
    return before
  logging.warning("%s changed between the completion-stamp check and its load; the scores "
                  "record the checkpoint that was loaded", path)
  return loaded
