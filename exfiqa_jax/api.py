"""Python API: load a quality model and score uint8 face crops at every exit in one call.

    import exfiqa_jax as fx
    model = fx.load("vitfiqa_token.pt", num_heads=8)   # or a converted directory
    out = model.score(images)    # uint8 [B, H, W, 3] RGB, any B
    out["exit_scores"] [B, L]  out["ex_fiqa_f"] [B]  out["ex_fiqa_fw"] [B]
    out["attn_scores"] [B, L]  out["embedding"] [B, E]  (+ out["attn_maps"] [B, L, N])

Mode "fr" models (insightface/CVLFace ViTs) have no quality head: their result holds
attn_scores, embedding (and attn_maps) only. Higher = better quality in every score.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from PIL import Image

from converters import families
from converters.strict import CheckpointError
from exfiqa_jax import fusion, parallel
from exfiqa_jax.data import preprocess
from exfiqa_jax.models.vit import QUALITY_MODES


def resize_images(images: np.ndarray, size: int = preprocess.IMAGE_SIZE) -> np.ndarray:
  """uint8 [B, H, W, 3] → [B, size, size, 3], bilinear (PIL, as for decoded files)."""
  if images.shape[1:3] == (size, size):
    return images
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                   for im in images]) if len(images) else images.reshape(0, size, size, 3)


def _next_pow2(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()


class QualityModel:
  """A loaded ViT with its variables on every device; one compiled program per shape/flags."""

  def __init__(self, module: Any, variables: Any, model_config: dict[str, Any],
               batch_size: int = 64):
    self.module = module
    self.model_config = dict(model_config)
    self.mode = model_config["mode"]
    self.num_exits = int(model_config["depth"])
    self.image_size = int(model_config.get("img_size", preprocess.IMAGE_SIZE))
    self.batch_size = parallel.round_up_to_devices(max(1, int(batch_size)))
    self.variables = jax.device_put(variables, parallel.replicated())
    self._fns: dict[bool, Any] = {}

  @property
  def has_exits(self) -> bool:
    """Quality modes have exit scores and fusions; mode "fr" only ATTN-FIQA scores."""
    return self.mode in QUALITY_MODES

  def _forward(self, attn_maps: bool):
    if attn_maps not in self._fns:
      module, has_exits = self.module, self.has_exits

      def forward(variables, images_uint8):
        x = preprocess.normalize(images_uint8)
        _, out = module.apply(variables, x, return_attn_maps=attn_maps)
        result = {"attn_scores": out["attn_scores"], "embedding": out["embedding"]}
        if has_exits:
          result["exit_scores"] = out["exit_scores"]
          result["ex_fiqa_f"] = fusion.fuse_f(out["exit_scores"])
          result["ex_fiqa_fw"] = fusion.fuse_fw(out["exit_scores"])
        if attn_maps:
          result["attn_maps"] = out["attn_maps"]
        return result

      self._fns[attn_maps] = jax.jit(forward)
    return self._fns[attn_maps]

  def run_batch(self, local_images: np.ndarray, attn_maps: bool = False) -> dict[str, np.ndarray]:
    """One sharded call. `local_images`: this process's rows (uint8 [b, S, S, 3]) of a global
    batch whose size is a multiple of the device count; returns the global batch's results."""
    batch = parallel.host_batch_to_global(np.asarray(local_images, np.uint8))
    return parallel.global_to_host(self._forward(bool(attn_maps))(self.variables, batch))

  def padded_size(self, n: int) -> int:
    """Padded rows for a chunk of n ≤ batch_size: powers of two, so few programs compile."""
    return min(self.batch_size, parallel.round_up_to_devices(_next_pow2(n)))

  def score(self, images: np.ndarray, attn_maps: bool = False) -> dict[str, np.ndarray]:
    """uint8 [B, H, W, 3] RGB (any B, H, W) → dict of numpy arrays (see the module doc).

    Chunks of `batch_size` rows, each padded to a power of two (at most log2(batch_size) + 1
    compiled shapes); padded rows are dropped. The CLI pads every batch to one fixed shape.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be uint8 [B, H, W, 3] RGB, got {images.dtype} "
                       f"{list(images.shape)} (decode files with exfiqa_jax.data.preprocess."
                       "decode_image)")
    if jax.process_count() > 1:
      raise NotImplementedError("QualityModel.score feeds from one host; on a multi-host job "
                                "use run_batch with each host's rows (see exfiqa_jax/score.py)")
    images = resize_images(images, self.image_size)
    chunks = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      size = self.padded_size(len(chunk))
      padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                                np.uint8)])
      chunks.append({k: v[:len(chunk)] for k, v in self.run_batch(padded, attn_maps).items()})
    if not chunks:
      result = self.run_batch(np.zeros((self.padded_size(1), self.image_size, self.image_size,
                                        3), np.uint8), attn_maps)
      return {k: v[:0] for k, v in result.items()}
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def load_variables(path: str | os.PathLike, num_heads: int = 8, family: str | None = None
                   ) -> tuple[Any, dict[str, Any]]:
  """(variables, model_config) from a converted directory or a PyTorch file (in memory)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    from exfiqa_jax import checkpoints
    variables, config = checkpoints.load_model(path)
    if "num_heads" in config and num_heads != config["num_heads"]:
      logging.warning("%s records num_heads=%d; ignoring num_heads=%d", path,
                      config["num_heads"], num_heads)
    return variables, config
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist (pass a converted directory "
                            "or a PyTorch .pt file)")
  from converters import torch_io, torch_to_flax
  return torch_to_flax.convert_state_dict(torch_io.load_state_dict(path), num_heads=num_heads,
                                          family=family)


def load(path: str | os.PathLike, num_heads: int = 8, family: str | None = None,
         batch_size: int = 64) -> QualityModel:
  """A QualityModel from a converted directory or a `.pt` file (converted in memory)."""
  variables, config = load_variables(path, num_heads=num_heads, family=family)
  fam = families.family_of_config(config)
  if getattr(fam, "kind", None) != "vit":
    raise CheckpointError(f"{path} is a {fam.name} face-recognition CNN: it has no quality "
                          "or attention scores; use it for embeddings (configs/embed.py)")
  return QualityModel(fam.build(config), variables, config, batch_size=batch_size)
