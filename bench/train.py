"""Training throughput: the input pipeline against the training step it feeds, on one machine.

  python -m bench.train [--parts=pipeline,step,attached] [--configs=tiny,vit_s] [--batch=16]
      [--iters=4] [--augment] [--threads=0,1,2,4] [--workers=1,2,4] [--images=256]

Parts (one run; compare ratios, not absolute numbers: the machine is shared):
  pipeline  train/data.host_batches alone, as the loop consumes it: ViT-S's source (`--images`
            synthetic faces as 112² JPEGs, q 95 like insightface's packs, an identity folder,
            FolderData) decoded by `--threads` threads or by `--workers` Grain processes (one
            decode thread each), and the tiny config's source (synthetic faces re-degraded on
            the host every batch). Images/s of wall clock, and images per CPU-second (this
            process and its workers): the per-core figure, steadier than wall clock on a loaded
            machine. Process rows start timing at their first batch (start-up printed apart).
            The tiny source runs at the step's batch (`--batch`): its JAX degradations pad
            each subset to ≥ 16 rows, so their cost per image depends on the batch.
  step      one jitted training step alone (forward + backward + AdamW, CosFace + CR loss over
            `classes` centres), its batch already on the device, each config's own recipe:
            tiny without augmentation, ViT-S with the on-device gridsample augmentation
            (--augment: both settings for both configs); compile time apart.
  attached  the trainer's loop body (host_batches → make_array_from_process_local_data → step)
            over the config's source, one step of each kind in turn (`iters` rounds, medians):
            attached ÷ alone is the share of the step rate the pipeline keeps (target ≥ 0.95).
            Where the device is this CPU, the pipeline's CPU time is taken from the step's:
            "CPU-shared limit" = 1 / (1 + step images/s ÷ pipeline images per CPU-second) is
            what attached ÷ alone can reach here; an accelerator's step leaves the host free.
The per-core figure says how many host cores an accelerator needs: the ViT-S training images/s
at each chip's dense bf16 peak (bench/peaks.py; 3 × the forward GFLOPs of models.gflops per
image, backward ≈ 2 × forward; an upper bound at 100 % utilisation) ÷ images per CPU-second.
Augmentation runs inside the step on the accelerator, so the host decodes only.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
import psutil
from PIL import Image

from bench import peaks
from configs import train_tiny, train_vitfiqa
from exfiqa_jax import models, parallel
from exfiqa_jax.data import synthetic
from exfiqa_jax.train import augment, optim, step as step_lib, trainer
from exfiqa_jax.train import data as data_lib

CONFIGS = {"tiny": train_tiny.get_config, "vit_s": train_vitfiqa.get_config}


def cpu_seconds() -> float:
  """CPU seconds of this process and its live children (the Grain workers)."""
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


# ------------------------------------------------------------------------------- sources
def jpeg_folder(directory: str, n: int, identities: int = 32) -> str:
  """n synthetic faces (rendered, degraded) as q-95 JPEGs in `identities` identity folders."""
  sizes = synthetic.SplitSizes(train=identities, per_identity=-(-n // identities))
  faces = synthetic.make_split(0, "train", sizes).images[:n]
  for k, face in enumerate(faces):
    folder = os.path.join(directory, f"id{k % identities:03d}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(face).save(os.path.join(folder, f"{k:05d}.jpg"), quality=95)
  return directory


def tiny_source(batch: int) -> data_lib.TrainData:
  """The tiny config's training set (synthetic, re-degraded every batch) at `batch`."""
  config = train_tiny.get_config()
  config.batch_size = batch
  return data_lib.synthetic_data(config)[0]


def time_pipeline(data: data_lib.TrainData, steps: int, workers: int) -> dict:
  """host_batches timed over `steps` (≥ 25 per worker) once its buffers are full (10 steps per
  worker in): images/s, images per CPU-second, and the seconds to its first batch."""
  warm = 10 * max(workers, 1)
  steps = max(steps, 25 * workers)          # far more than the workers hold buffered
  t0 = time.perf_counter()
  batches = data_lib.host_batches(data, 0, warm + steps, workers=workers)
  n = len(next(batches)["label"]) * steps
  start_s = time.perf_counter() - t0
  for _ in range(warm - 1):
    next(batches)
  wall, cpu = time.perf_counter(), cpu_seconds()
  for _ in range(steps):
    next(batches)
  wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
  batches.close()
  return {"images_per_s": n / wall, "images_per_cpu_s": n / max(cpu, 1e-9), "start_s": start_s}


def gil_free_share(folder: str, repeats: int = 5) -> tuple[float, float]:
  """(µs of CPU per decode_image of the folder's JPEGs, the share of it inside PIL's C decoder,
  which releases the GIL): the rest holds it, so threads scale to about 1 / (1 - share)."""
  from exfiqa_jax.data import preprocess
  paths = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
  blobs = [open(p, "rb").read() for p in paths]
  inside, original = [0.0], Image._getdecoder

  class Timed:
    def __init__(self, decoder):
      self.decoder = decoder

    def __getattr__(self, name):
      return getattr(self.decoder, name)

    def decode(self, data):
      t = time.thread_time()
      out = self.decoder.decode(data)
      inside[0] += time.thread_time() - t
      return out

  Image._getdecoder = lambda *a, **k: Timed(original(*a, **k))
  try:
    t = time.thread_time()
    for _ in range(repeats):
      for blob in blobs:
        preprocess.decode_image(blob)
    total = time.thread_time() - t
  finally:
    Image._getdecoder = original
  return total / (repeats * len(blobs)) * 1e6, inside[0] / total


# ---------------------------------------------------------------------------------- step
def make_step(name: str, batch: int, classes: int, with_augment: bool):
  """(jitted step, initial state, config) of config `name` with random weights."""
  config = CONFIGS[name]()
  model, cfg = trainer.build_model(config.architecture, config.compute_dtype)
  mesh = parallel.mesh(1)
  tx, schedule = optim.make_optimizer(config.optim.lr, 10, 1000)
  state, sh = step_lib.init_state(model, tx, jax.random.key(0), classes, cfg.embed_dim, mesh)
  fn = step_lib.make_train_step(
      model, tx, mesh=mesh, shardings=sh, schedule=schedule,
      augment=augment.AugmentConfig() if with_augment else None,
      loss_kwargs=dict(scale=config.loss.scale, margins=tuple(config.loss.margins),
                       alpha=config.loss.alpha, num_classes=classes))
  return fn, state, cfg


def bench_step(name: str, batch: int, iters: int, classes: int, with_augment: bool,
               data: data_lib.TrainData | None) -> dict:
  """The step alone (compile, then steps on one batch already on the device) and, with `data`,
  the trainer's loop body on host_batches(data): `iters` rounds of one step each way, in turn,
  so that load from other jobs falls on both alike; rates from the median step times."""
  fn, state, cfg = make_step(name, batch, classes, with_augment)
  sharding = parallel.batch_sharding(parallel.mesh(1))
  rng = np.random.default_rng(0)
  host = {"image": rng.integers(0, 256, (batch, 112, 112, 3)).astype(np.uint8),
          "label": rng.integers(0, classes, batch).astype(np.int32)}
  placed = {k: jax.device_put(v, sharding) for k, v in host.items()}
  key = jax.random.key(1)
  t = time.perf_counter()
  state, m = fn(state, placed, key)
  jax.block_until_ready(m)
  row = {"config": name, "augment": with_augment, "compile_s": time.perf_counter() - t}
  batches = data_lib.host_batches(data, 0, iters + 1) if data is not None else None
  times: dict[str, list[float]] = {"alone": [], "attached": []}
  for i in range(iters + 1):                 # round 0 warms the loop up, untimed
    t = time.perf_counter()
    state, m = fn(state, placed, key)
    jax.block_until_ready(m)
    times["alone"].append(time.perf_counter() - t)
    if batches is not None:
      t = time.perf_counter()                # the trainer's loop body
      b = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                       next(batches))
      state, m = fn(state, {**b, "label": b["label"] % classes}, key)
      jax.block_until_ready(m)
      times["attached"].append(time.perf_counter() - t)
  for k, v in times.items():
    if v:
      row[k] = batch / float(np.median(v[1:]))
  return row


# ---------------------------------------------------------------------------------- main
def ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x != ""]


def pipeline_rows(args, folder: str) -> list[dict]:
  rows = []
  for threads in ints(args.threads):
    data = data_lib.FolderData(folder, args.pipeline_batch, threads=threads)
    rows.append({"source": "JPEG folder (ViT-S)", "how": f"{threads} threads",
                 **time_pipeline(data, args.pipeline_steps, 0)})
  for workers in ints(args.workers):
    data = data_lib.FolderData(folder, args.pipeline_batch, threads=0)
    rows.append({"source": "JPEG folder (ViT-S)", "how": f"{workers} processes",
                 **time_pipeline(data, args.pipeline_steps, workers)})
  args.decode_us, args.gil_free = gil_free_share(folder)
  rows.append({"source": "synthetic re-degraded (tiny)", "how": f"1 thread, batch {args.batch}",
               **time_pipeline(tiny_source(args.batch), args.pipeline_steps, 0)})
  return rows


def print_report(args, pipe: list[dict], steps: list[dict]) -> None:
  print(f"CPU: {parallel.cpu_model()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end; JAX {jax.devices()[0].platform}, "
        f"{jax.device_count()} device(s)")
  if pipe:
    print(f"\ninput pipeline alone (train/data.host_batches, batch {args.pipeline_batch})")
    print(f"one JPEG decode: {args.decode_us:.0f} µs of CPU, {args.gil_free:.0%} of it in PIL's "
          f"C decoder (GIL released): threads reach ≈ {1 / (1 - args.gil_free):.1f} cores' "
          "worth of decoding, whatever the core count")
    print("| source | decoding | images/s | images per CPU-s | start-up (s) |")
    print("|---|---|---|---|---|")
    for r in pipe:
      print(f"| {r['source']} | {r['how']} | {r['images_per_s']:.0f} | "
            f"{r['images_per_cpu_s']:.0f} | {r['start_s']:.1f} |")
  if steps:
    print(f"\ntraining step (batch {args.batch}, {args.classes} classes) and the pipeline "
          "attached")
    print("| config | augment | compile (s) | step alone img/s | attached img/s | attached ÷ "
          "alone | CPU-shared limit | pipeline ÷ step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in steps:
      source = "synthetic" if r["config"] == "tiny" else "JPEG"
      pipe_rate = max((p["images_per_s"] for p in pipe if source in p["source"]), default=None)
      pipe_cpu = np.median([p["images_per_cpu_s"] for p in pipe if source in p["source"]] or [0])
      attached, alone = r.get("attached"), r["alone"]
      cells = ["—" if attached is None else f"{attached:.1f}",
               "—" if attached is None else f"{attached / alone:.2f}",
               "—" if not pipe_cpu else f"{1 / (1 + alone / pipe_cpu):.2f}",
               "—" if pipe_rate is None else f"{pipe_rate / alone:.0f}"]
      print(f"| {r['config']} | {r['augment']} | {r['compile_s']:.1f} | {alone:.1f} | "
            + " | ".join(cells) + " |")
  jpeg = [p for p in pipe if "JPEG" in p["source"]]
  if jpeg:
    per_core = float(np.median([p["images_per_cpu_s"] for p in jpeg]))
    train_gflops = 3 * float(models.gflops(train_vitfiqa.get_config().architecture)[0][-1])
    print(f"\nhost cores per chip to feed ViT-S training at the chip's peak: {per_core:.0f} "
          "JPEG images per CPU-second here (median of the rows above); "
          f"{train_gflops:.1f} GFLOPs per training image (3 × forward), dense bf16 peak, "
          "100 % utilisation (an upper bound)")
    print("| chip | bf16 TFLOP/s | images/s at peak | host cores |")
    print("|---|---|---|---|")
    for _, p in peaks.PEAKS:
      rate = p.bf16_tflops * 1e3 / train_gflops
      print(f"| {p.name} | {p.bf16_tflops:g} | {rate:.0f} | {rate / per_core:.1f} |")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--parts", default="pipeline,step,attached")
  parser.add_argument("--configs", default="tiny,vit_s")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--iters", type=int, default=4)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--augment", action="store_true")
  parser.add_argument("--threads", default="0,1,2,4")
  parser.add_argument("--workers", default="1,2,4")
  parser.add_argument("--images", type=int, default=256)
  parser.add_argument("--pipeline_batch", type=int, default=64)
  parser.add_argument("--pipeline_steps", type=int, default=24)
  args = parser.parse_args()
  parts = set(args.parts.split(","))
  with tempfile.TemporaryDirectory() as tmp:
    folder = jpeg_folder(tmp, args.images) if parts & {"pipeline", "attached"} else ""
    pipe = pipeline_rows(args, folder) if "pipeline" in parts else []
    steps = []
    for name in args.configs.split(",") if parts & {"step", "attached"} else []:
      own = bool(CONFIGS[name]().augment.get("enabled", False))
      data = None
      if "attached" in parts:
        data = (tiny_source(args.batch) if name == "tiny"
                else data_lib.FolderData(folder, args.batch, threads=2))
      for aug in ([own, not own] if args.augment else [own]):
        steps.append(bench_step(name, args.batch, args.iters, args.classes, aug,
                                data if aug == own else None))
  print_report(args, pipe, steps)


if __name__ == "__main__":
  main()
