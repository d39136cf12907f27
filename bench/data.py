"""Input pipeline throughput: images/s decoded and batched, by source and decode threads.

  python -m bench.data [--images=2000] [--batch=64] [--repeats=3] [--model_images=128]

Sources, each read through exfiqa_jax.data.pipeline.global_batches (this host's rows decoded in
the thread pool, zero-padded fixed batches, placed on the mesh as global jax.Arrays):
  jpeg_folder  `--images` 112x112 JPEGs (q 90, smooth random content) written to a temp dir,
               decoded with preprocess.decode_image (PIL) via pipeline.image_reader;
  arrays       the same images in memory (pipeline.array_reader): the pipeline's own overhead;
  synthetic    faces rendered and degraded on the fly by exfiqa_jax.data.synthetic (render +
               degrade, jitted JAX on CPU), when that module is present.
Workers 0 (read in the consumer's thread, no overlap), 1, 2, 4. Each figure is the median of
`repeats` full passes after a warm-up pass. For scale, the same run measures the model the
pipeline feeds: ViT-S (token mode, random weights, fp32) scoring images/s alone, and end to end
on `--model_images` images of the JPEG folder with 2 decode threads. The machine has 2 cores and
other jobs run at the same time: compare ratios within one run, not absolute numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from exfiqa_jax.data import pipeline, preprocess

WORKERS = (0, 1, 2, 4)


def write_jpegs(directory: str, n: int, seed: int = 0) -> list[str]:
  """n smooth random 112x112 JPEGs (upsampled 14x14 noise + fine noise: face-crop-like sizes)."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(n):
    coarse = Image.fromarray(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8))
    image = np.asarray(coarse.resize((112, 112), Image.BILINEAR), np.int16)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    paths.append(os.path.join(directory, f"{i:05d}.jpg"))
    Image.fromarray(image).save(paths[-1], quality=90)
  return paths


def synthetic_reader(seed: int = 0, per_identity: int = 10) -> pipeline.Reader:
  """Rows rendered and degraded on demand (row r is identity r // per_identity)."""
  from exfiqa_jax.data import synthetic

  def read(rows):
    rng = np.random.default_rng([seed, int(rows[0])])
    images = synthetic.render(seed, rows // per_identity, rng)
    severity, kind = synthetic.sample_degradations(rng, len(rows))
    return synthetic.degrade(images, severity, kind, rng)

  return read


def rate(read: pipeline.Reader, n: int, batch: int, workers: int, repeats: int) -> float:
  """Median images/s of full passes over n rows (after one warm-up pass)."""
  def one_pass():
    start = time.perf_counter()
    for step in pipeline.global_batches(read, n, batch, workers=workers):
      step.images.block_until_ready()
    return n / (time.perf_counter() - start)

  one_pass()
  return statistics.median(one_pass() for _ in range(repeats))


def model_rates(paths: list[str], batch: int, repeats: int) -> tuple[float, float]:
  """(ViT-S scoring images/s on ready batches, end to end from the JPEG folder, 2 threads)."""
  from exfiqa_jax.models import vit
  cfg = vit.vit_s_config("token")
  module = vit.VisionTransformer(cfg)
  variables = jax.jit(module.init)(jax.random.key(0), np.zeros((1, 112, 112, 3), np.float32))
  forward = jax.jit(lambda v, x: module.apply(v, preprocess.normalize(x))[1]["exit_scores"])
  ready = pipeline.to_global(next(pipeline.host_batches(
      pipeline.array_reader(np.zeros((batch, 112, 112, 3), np.uint8)), batch, batch))).images
  forward(variables, ready).block_until_ready()
  alone = []
  for _ in range(repeats):
    start = time.perf_counter()
    forward(variables, ready).block_until_ready()
    alone.append(batch / (time.perf_counter() - start))
  start = time.perf_counter()
  for step in pipeline.global_batches(pipeline.image_reader(paths), len(paths), batch,
                                      workers=2):
    forward(variables, step.images).block_until_ready()
  return statistics.median(alone), len(paths) / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=2000)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--model_images", type=int, default=128,
                      help="images for the end-to-end model row; 0 skips the model rows")
  args = parser.parse_args()
  batch = -(-args.batch // jax.device_count()) * jax.device_count()

  with tempfile.TemporaryDirectory() as tmp:
    paths = write_jpegs(tmp, args.images)
    kib = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
    arrays = np.stack([preprocess.decode_image(p) for p in paths])
    sources = {"jpeg_folder": pipeline.image_reader(paths),
               "arrays": pipeline.array_reader(arrays), "synthetic": synthetic_reader()}
    results = {(name, w): rate(read, args.images, batch, w, args.repeats)
               for name, read in sources.items() for w in WORKERS}
    model = (model_rates(paths[:args.model_images], batch, args.repeats)
             if args.model_images else None)

  print(f"Input pipeline, {args.images} images 112x112 (JPEGs {kib:.1f} KiB on average), global "
        f"batch {batch}, {jax.device_count()} device(s), {os.cpu_count()} cores, median of "
        f"{args.repeats} passes; shared machine, timings are noisy")
  print("| source | decode threads | images/s | vs 1 thread |")
  print("|---|---|---|---|")
  for (name, w), r in results.items():
    label = "0 (inline)" if w == 0 else str(w)
    print(f"| {name} | {label} | {r:,.0f} | {r / results[(name, 1)]:.2f}x |")
  if model is not None:
    alone, end_to_end = model
    best_jpeg = max(r for (name, _), r in results.items() if name == "jpeg_folder")
    print(f"\nViT-S scoring (token mode, fp32, batch {batch}) on ready batches: {alone:.1f} "
          f"images/s; end to end from {args.model_images} JPEGs with 2 decode threads: "
          f"{end_to_end:.1f} images/s ({end_to_end / alone:.2f}x of the model alone); JPEG "
          f"decoding at its best is {best_jpeg / alone:.0f}x the model's rate")


if __name__ == "__main__":
  main()
