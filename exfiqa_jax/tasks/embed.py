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

from exfiqa_jax import embedding, files, inference, parallel
from exfiqa_jax.data import pipeline, preprocess


def run(config) -> dict[str, Any]:
  """Embeds `config.images` with the FR model `config.fr`; writes embeddings.npy, image_list.txt and
  embed_config.json into `config.output` (atomic; skipped when already complete)."""
  from tqdm import tqdm
  convention = embedding.check_convention(config.fr.convention)
  out_dir = config.output
  emb_path = os.path.join(out_dir, "embeddings.npy")
  list_path = os.path.join(out_dir, "image_list.txt")
  paths, names = preprocess.read_image_list(config.images, config.get("image_root") or None)
  if not paths:
    raise ValueError(f"no images found in {config.images}")
  if os.path.exists(emb_path) and os.path.exists(list_path):
    with open(list_path, encoding="utf-8") as f:
      if f.read().split("\n")[:-1] == names:
        logging.info("embeddings already complete in %s; nothing to do", out_dir)
        return {"embeddings": emb_path, "image_list": list_path, "skipped": True}
  module, variables, model_config = inference.load_fr_model(
      config.fr.path, config.fr.family or None, config.fr.input_scale or None,
      config.fr.num_heads)
  input_scale = model_config["input_scale"]
  batch_size = parallel.round_up_to_devices(config.fr.batch_size)
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
    files.save_npy(emb_path, embeddings)
    files.write_json(os.path.join(out_dir, "embed_config.json"), {
        "model": config.fr.path, "model_config": model_config, "convention": convention,
        "channel_order": config.data.channel_order, "count": len(paths),
        "dim": int(embeddings.shape[1])})
    files.write_text(list_path, "".join(n + "\n" for n in names))   # last: marks completion
  logging.info("embedded %d images (%.1f images/s) into %s", len(paths), rate, out_dir)
  return {"embeddings": emb_path, "image_list": list_path, "skipped": False,
          "images_per_second": rate}
