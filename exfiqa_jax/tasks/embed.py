"""Task "embed": FR embeddings of an image folder or list file (configs/embed.py).

Writes embeddings.npy [N, D], image_list.txt (same order) and embed_config.json; the flip
conventions and input scales are in exfiqa_jax/embedding.py.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from absl import logging

from exfiqa_jax import checkpoints, embedding, files, identity, inference, parallel
from exfiqa_jax.convert import strict
from exfiqa_jax.data import pipeline, preprocess

STAMP = "embed_config.json"    # written LAST, with the identity of what the embeddings are of
FORMAT = 2
PATH_FIELDS = ("output", "images", "image_root", "fr.path", "compile_cache")   # `~` expanded


def _identity(config, paths, names, convention) -> dict[str, Any]:
  """What the embeddings are made from (docs/caching.md): any change recomputes them."""
  return {"format": FORMAT, "fr": checkpoints.checkpoint_identity(config.fr.path),
          "family": config.fr.family or "", "num_heads": config.fr.num_heads,
          "input_scale": config.fr.input_scale or "", "convention": convention,
          "channel_order": config.data.channel_order,
          "names": identity.names_identity(names), "images": identity.files_identity(paths)}


def run(config) -> dict[str, Any]:
  """Embeds `config.images` with the FR model `config.fr`; writes embeddings.npy, image_list.txt and
  embed_config.json into `config.output` (atomic; skipped when already complete)."""
  config = files.with_user_paths(config, PATH_FIELDS)
  convention = embedding.check_convention(config.fr.convention)
  out_dir = config.output
  emb_path = os.path.join(out_dir, "embeddings.npy")
  list_path = os.path.join(out_dir, "image_list.txt")
  paths, names = preprocess.read_image_list(config.images, config.get("image_root") or None)
  if not paths:
    raise ValueError(f"no images found in {config.images}")
  preprocess.check_channel_order(config.data.channel_order)
  if int(config.fr.batch_size) < 1:
    raise ValueError(f"--config.fr.batch_size must be at least 1, got {config.fr.batch_size}")
  if not config.fr.path:
    raise ValueError("pass --config.fr.path=<converted FR directory or .pt>")
  if parallel.is_writer():
    files.check_output_dir(out_dir)          # before any compute
  with files.folder_lock(out_dir, "embed", "--config.output",      # one run per folder
                         enabled=parallel.is_writer()):
    return _run(config, convention, paths, names, emb_path, list_path)


def _run(config, convention: str, paths: list[str], names: list[str], emb_path: str,
         list_path: str) -> dict[str, Any]:
  from tqdm import tqdm
  out_dir = config.output
  stamp_path = os.path.join(out_dir, STAMP)
  ident = _identity(config, paths, names, convention)
  if identity.begin_run(stamp_path, ident, (emb_path, list_path), "embeddings"):
    return {"embeddings": emb_path, "image_list": list_path, "skipped": True}
  try:
    with strict.flags_named(family="--config.fr.family=", num_heads="--config.fr.num_heads="):
      module, variables, model_config, ident["fr"] = inference.read_fr_model(  # what was loaded
          config.fr.path, config.fr.family or None, config.fr.input_scale or None,
          config.fr.num_heads)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{e}; pass --config.fr.path=<converted FR directory or .pt>"
                            ) from None
  input_scale = model_config["input_scale"]
  batch_size = parallel.round_up_to_devices(int(config.fr.batch_size))
  embed_fn = embedding.make_embed_fn(module, convention, input_scale)
  variables = embedding.replicate(variables)
  chunks, start = [], time.time()
  with tqdm(total=len(paths), unit="img", desc="embed", smoothing=0.1) as bar:
    for step in pipeline.global_batches(pipeline.image_reader(paths, config.data.channel_order),
                                        len(paths), batch_size,
                                        workers=config.data.decode_threads):
      chunks.append(parallel.global_to_host(embed_fn(variables, step.images))[:step.num_rows])
      bar.update(step.num_rows)
  embeddings = np.concatenate(chunks).astype(np.float32)
  rate = len(paths) / max(time.time() - start, 1e-9)
  if parallel.is_writer():
    written = {emb_path: files.save_npy(emb_path, embeddings),
               list_path: files.write_text(list_path, "".join(n + "\n" for n in names))}
    if identity.files_identity(paths) != ident["images"]:
      logging.warning("images under %s changed while this run read them; the embeddings are "
                      "written but not marked complete, so the next run computes them again",
                      config.images)
    else:
      identity.write_stamp(stamp_path, ident, written,   # LAST: marks completion
                           model=config.fr.path, model_config=model_config,
                           convention=convention, channel_order=config.data.channel_order,
                           count=len(paths), dim=int(embeddings.shape[1]))
  logging.info("embedded %d images (%.1f images/s) into %s", len(paths), rate, out_dir)
  return {"embeddings": emb_path, "image_list": list_path, "skipped": False,
          "images_per_second": rate}
