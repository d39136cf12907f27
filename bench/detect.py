"""Raw photos → quality: detection + alignment + scoring, ours against the reference, one run.

  python -m bench.detect [--photos=16] [--rounds=3] [--threads=0] [--model=vit_s]

Photos: `--photos` 640×480 RGB composites (scikit-image's public-domain pictures as cluttered
backgrounds, the astronaut's face pasted at a random position, scale 0.4–1.3 and rotation
±10°). Routes, each timed on the whole set, warmed up first, then once per round in a shuffled
order (load from other jobs falls on all alike; medians over rounds):
  ours   detect   exfiqa_jax/detection/, one jitted program for the batch (640×480 bucket)
         align    data/align.py on the primary face (host NumPy)
         score    QualityModel.score on the crops (ViT-S, random weights, float32)
         total    detect_and_align + score, as a user calls them
  ref    detect   facenet-pytorch 2.6.0 MTCNN.detect on the same batch (torch CPU), primary face
                  by its select_boxes("center_weighted_size")
         align    insightface's norm_crop: skimage SimilarityTransform + cv2.warpAffine (when
                  OpenCV is installed; else data/align.py)
         score    the PyTorch twin of the same ViT-S with the same weights
                  (exfiqa_jax/testing/torch_reference.py)
         total    the three in a row
The reference's torchvision NMS is a plain-torch stand-in here (exfiqa_jax/testing/
mtcnn_reference.py; PyPI torchvision does not import beside this torch build); its share is
measured and shown, and "ref total − NMS" removes it (an optimistic reference: real NMS is not
free). Printed: photos/s, CPU-s per photo, ours/ref ratios, and the fraction of the scoring time
that detection + alignment add. A parity line checks both found the same faces. Needs the dev
extras and facenet-pytorch (`pip install --no-deps facenet-pytorch==2.6.0`). Default run ≈ 2–5
minutes on a 2-core CPU. Measured on this project's shared 2-core CPU (load ≈ 4): detection
0.9x the reference's speed (the fixed-size lists cost on a CPU what the reference saves by
running only its real candidates), scoring 1.9x, end to end 1.2–1.4x; detection + alignment
add ≈ 1.7–1.9x the scoring time of ViT-S.
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a shared machine torch's spinning threads
# otherwise take cycles from XLA's routes and inflate the reference's own CPU time (set before
# torch is imported; an explicit OMP_WAIT_POLICY wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from exfiqa_jax import inference  # noqa: E402
from exfiqa_jax.convert import vit_keys  # noqa: E402
from exfiqa_jax.data import align  # noqa: E402
from exfiqa_jax.detection import detector as detector_lib  # noqa: E402
from exfiqa_jax.detection import faces as faces_lib  # noqa: E402
from exfiqa_jax.models import vit  # noqa: E402
from exfiqa_jax.testing import mtcnn_reference  # noqa: E402
from exfiqa_jax.testing import torch_reference as tr  # noqa: E402

H, W = 480, 640


def _cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_routes(routes: dict[str, Callable[[], object]], rounds: int
                ) -> dict[str, tuple[float, float]]:
  """Median (wall, CPU) seconds of each route: a warm-up call, then shuffled rounds."""
  for fn in routes.values():
    fn()
  rng = np.random.default_rng(0)
  times: dict[str, list[tuple[float, float]]] = {n: [] for n in routes}
  for _ in range(rounds):
    for name in rng.permutation(list(routes)):
      wall, cpu = time.perf_counter(), _cpu()
      routes[name]()
      times[name].append((time.perf_counter() - wall, _cpu() - cpu))
  return {n: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t))
          for n, t in times.items()}


def make_photos(n: int, seed: int = 0) -> np.ndarray:
  """n uint8 [480, 640, 3] composites (see the module doc)."""
  from skimage import data as skdata
  from PIL import Image
  rng = np.random.default_rng(seed)
  astronaut = skdata.astronaut()
  head = astronaut[0:260, 100:350]
  scenes = [skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.hubble_deep_field(),
            np.repeat(skdata.camera()[..., None], 3, -1), skdata.immunohistochemistry()]
  photos = []
  for k in range(n):
    scene = np.asarray(Image.fromarray(scenes[k % len(scenes)]).resize((W, H), Image.BILINEAR))
    scale, theta = rng.uniform(0.4, 1.3), np.deg2rad(rng.uniform(-10, 10))
    a = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    t = rng.uniform([0, 0], [W - 250 * scale, H - 260 * scale])
    matrix = np.concatenate([a, t[:, None]], axis=1)
    warped = align.warp_affine(head, matrix, (W, H)).astype(np.float32)
    mask = align.warp_affine(np.full(head.shape[:2], 255, np.uint8), matrix,
                             (W, H)).astype(np.float32)[..., None] / 255
    photos.append(np.clip(np.rint(warped * mask + scene * (1 - mask)), 0, 255).astype(np.uint8))
  return np.stack(photos)


def norm_crop(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
  """insightface's norm_crop (skimage + OpenCV), or data/align.py without OpenCV."""
  try:
    import cv2
    from skimage import transform
  except ImportError:
    return align.align_face(photo, landmarks)
  src, dst = np.asarray(landmarks, np.float64), align.arcface_template(112)
  if hasattr(transform.SimilarityTransform, "from_estimate"):      # scikit-image >= 0.26
    tform = transform.SimilarityTransform.from_estimate(src, dst)
  else:
    tform = transform.SimilarityTransform()
    tform.estimate(src, dst)
  return cv2.warpAffine(photo, tform.params[0:2, :], (112, 112), borderValue=0.0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--photos", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
  args = parser.parse_args()
  import torch
  from PIL import Image
  threads = args.threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  torch.set_grad_enabled(False)

  photos = make_photos(args.photos)
  pil = [Image.fromarray(p) for p in photos]
  n = len(photos)
  detector = detector_lib.Detector(batch_size=n)
  cfg = vit.vit_s_config("token")
  twin = tr.random_init_(tr.VitFiqaTorch(
      mode=cfg.mode, width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
      patch_size=cfg.patch_size, img_size=cfg.img_size, mlp_dim=cfg.mlp_dim,
      embed_dim=cfg.embed_dim, mask_token=cfg.has_mask_token), seed=0).eval()
  variables = vit_keys.state_dict_to_variables(
      {k: v.numpy() for k, v in twin.state_dict().items()}, cfg.to_dict())
  model = inference.QualityModel(vit.VisionTransformer(cfg), variables, cfg.to_dict(),
                                 batch_size=n)
  mtcnn = mtcnn_reference.reference_mtcnn()
  module = mtcnn_reference.detect_face_module()
  nms_seconds = [0.0]
  stand_in = module.batched_nms

  def timed_nms(*a, **k):
    start = time.perf_counter()
    try:
      return stand_in(*a, **k)
    finally:
      nms_seconds[0] += time.perf_counter() - start
  module.batched_nms = timed_nms

  state: dict[str, object] = {}

  def ours_detect():
    out = detector.detect_batch(photos)
    state["ours_found"] = [detector_lib.faces_of(out, i) for i in range(n)]

  def ours_align():
    found = state["ours_found"]
    state["ours_crops"] = np.stack([
        align.align_face(photos[i], f.landmarks[faces_lib.select_faces(f, H, W)[0]])
        for i, f in enumerate(found) if len(f)])

  def ours_score():
    state["ours_scores"] = model.score(state["ours_crops"])["exit_scores"][:, -1]

  def ours_total():
    faces = faces_lib.detect_and_align(list(photos), detector=detector)
    return model.score(faces.crops)["exit_scores"]

  def ref_detect():
    boxes, probs, points = mtcnn.detect(pil, landmarks=True)
    state["ref_found"] = mtcnn.select_boxes(boxes, probs, points, pil,
                                            method="center_weighted_size")

  def ref_align():
    _, _, points = state["ref_found"]
    state["ref_crops"] = np.stack([norm_crop(photos[i], p[0]) for i, p in enumerate(points)
                                   if p is not None])

  def ref_score():
    x = torch.from_numpy((state["ref_crops"].astype(np.float32) / 255 - 0.5) / 0.5)
    state["ref_scores"] = twin(x.permute(0, 3, 1, 2).contiguous())[1].numpy()

  def ref_total():
    ref_detect(), ref_align(), ref_score()

  routes = {"ours detect": ours_detect, "ours align": ours_align, "ours score": ours_score,
            "ours total": ours_total, "ref detect": ref_detect, "ref align": ref_align,
            "ref score": ref_score, "ref total": ref_total}
  started = time.perf_counter()
  load = os.getloadavg()[0]
  ours_detect(), ours_align(), ours_score(), ref_detect(), ref_align(), ref_score()  # order
  nms_seconds[0] = 0.0
  calls = {"ref detect": 0, "ref total": 0}

  def counting(name, fn):
    def run():
      calls[name] += 1
      fn()
    return run
  routes = {k: counting(k, v) if k in calls else v for k, v in routes.items()}
  times = time_routes(routes, args.rounds)
  nms_per_call = nms_seconds[0] / max(1, sum(calls.values()))
  load = max(load, os.getloadavg()[0])

  # Parity: the same faces, the same crops up to interpolation, the same scores nearby.
  ours_found, ref_boxes = state["ours_found"], state["ref_found"][0]
  faces_ours = sum(bool(len(f)) for f in ours_found)
  faces_ref = sum(b is not None for b in ref_boxes)
  box_err = max((float(np.abs(ours_found[i].boxes[faces_lib.select_faces(ours_found[i], H, W)[0]]
                              - np.asarray(b[0], np.float64)).max())
                 for i, b in enumerate(ref_boxes) if b is not None and len(ours_found[i])),
                default=0.0)
  crop_err = (int(np.abs(state["ours_crops"].astype(int) - state["ref_crops"].astype(int)).max())
              if state["ours_crops"].shape == state["ref_crops"].shape else -1)
  score_err = (float(np.abs(state["ours_scores"] - state["ref_scores"]).max())
               if state["ours_scores"].shape == state["ref_scores"].shape else float("nan"))

  print(f"bench/detect: {n} photos 640x480 in one batch, {jax.devices()[0].platform} "
        f"({jax.device_count()} device), torch {torch.__version__} {threads} threads, "
        f"{args.rounds} rounds, load average {load:.1f}")
  print(f"parity: faces found ours {faces_ours}/{n}, reference {faces_ref}/{n}; primary box "
        f"max |Δ| {box_err:.2e} px; crops max |Δ| {crop_err} grey levels (norm_crop vs ours); "
        f"final-exit scores max |Δ| {score_err:.2e}")
  print()
  print("| route | photos/s | ms/photo | CPU-s/photo |")
  print("|---|---|---|---|")
  for name, (wall, cpu) in times.items():
    print(f"| {name} | {n / wall:.2f} | {1e3 * wall / n:.1f} | {cpu / n:.3f} |")
  ref_total_nms = times["ref total"][0] - nms_per_call
  print(f"| ref total − stand-in NMS ({1e3 * nms_per_call / n:.1f} ms/photo) | "
        f"{n / ref_total_nms:.2f} | {1e3 * ref_total_nms / n:.1f} | – |")
  print()
  o, r = times, times
  print(f"ours / reference, end to end: {r['ref total'][0] / o['ours total'][0]:.2f}x faster "
        f"({ref_total_nms / o['ours total'][0]:.2f}x against the reference without its NMS); "
        f"detection alone {r['ref detect'][0] / o['ours detect'][0]:.2f}x; scoring alone "
        f"{r['ref score'][0] / o['ours score'][0]:.2f}x")
  extra_ours = (o["ours detect"][0] + o["ours align"][0]) / o["ours score"][0]
  extra_ref = (r["ref detect"][0] + r["ref align"][0]) / r["ref score"][0]
  print(f"detection + alignment add {100 * extra_ours:.0f} % to the scoring time (ours; "
        f"detection {100 * o['ours detect'][0] / o['ours score'][0]:.0f} %, alignment "
        f"{100 * o['ours align'][0] / o['ours score'][0]:.0f} %), reference "
        f"{100 * extra_ref:.0f} %; of ours' end-to-end time detection is "
        f"{100 * o['ours detect'][0] / o['ours total'][0]:.0f} %")
  print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
  main()
