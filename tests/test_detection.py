"""Face detection for raw photos (exfiqa_jax/detection/) against the facenet-pytorch MTCNN.

Reference: facenet-pytorch 2.6.0 (`pip install --no-deps facenet-pytorch==2.6.0`) on the CPU
with its own weights. Its code imports torchvision, whose PyPI wheels do not import beside this
torch build, so `exfiqa_jax.testing.mtcnn_reference` imports it with a stand-in torchvision in
`sys.modules` (only during the import): `torchvision.ops.boxes.batched_nms` is a plain-torch NMS
with torchvision's semantics and `transforms.functional.to_tensor` a plain conversion; the
reference's own code runs unchanged and is tapped between its stages (ReferenceTap).

Photos: scikit-image's `astronaut` and `camera` (public domain), and composites that paste the
astronaut's face into 640×480 canvases at known positions, scales (0.5, 1.0, 1.5) and small
rotations (0°, +8°, −10°; the last canvas also holds a second, smaller face): their landmarks
are the reference's astronaut landmarks mapped through the paste transform. A canvas without a
face checks the no-face report.

Tolerances (measured here in brackets):
  faces per stage (P-Net boxes into the R-Net, boxes into the O-Net, final faces): equal;
  boxes and landmarks ≤ 1e-3 px [≤ 6.2e-5 px]; P-Net, R-Net, O-Net probabilities ≤ 1e-5
  [≤ 1.5e-6] — float rounding of the convolutions and XLA's fused multiply-adds only; the
  pyramid and crop resampling are bit-exact;
  landmark NME on the composites (mean point error / inter-ocular distance of the pasted truth)
  ≤ 0.08 [0.055 at 21 px IOD, 0.019 at 42 px, 0.020 at 63 px], ours = the reference's ± 1e-4;
  aligned crops of the astronaut vs align_face(reference landmarks): ≤ 1 grey level [≤ 1];
  batched vs one by one: the same faces, boxes ≤ 1e-3 px [≤ 3.1e-5].
"""
from __future__ import annotations

import csv
import importlib.util
import os
import zipfile

import jax
import numpy as np
import pytest

if importlib.util.find_spec("facenet_pytorch") is None:
  pytest.skip("the MTCNN reference needs facenet-pytorch: pip install --no-deps "
              "facenet-pytorch==2.6.0", allow_module_level=True)
skdata = pytest.importorskip("skimage.data")
torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from exfiqa_jax.convert import mtcnn_keys  # noqa: E402
from exfiqa_jax.convert.strict import CheckpointError  # noqa: E402
from exfiqa_jax.data import align  # noqa: E402
from exfiqa_jax.detection import detector as detector_lib  # noqa: E402
from exfiqa_jax.detection import faces as faces_lib  # noqa: E402
from exfiqa_jax.detection import rows, settings  # noqa: E402
from exfiqa_jax.models import mtcnn  # noqa: E402
from exfiqa_jax.testing import mtcnn_reference  # noqa: E402

BOX_TOL, PROB_TOL, NME_BOUND = 1e-3, 1e-5, 0.08
H, W = 480, 640
FACE_CROP = (slice(0, 260), slice(100, 350))      # the astronaut's head, rows and columns
# (scale, degrees, tx, ty) of each composite; the last one gets a second face (below)
PASTES = [(0.5, 0.0, 60, 80), (1.0, 8.0, 330, 150), (1.5, -10.0, 120, 40)]
SECOND_FACE = (0.45, 0.0, 470, 300)


def _paste(canvas: np.ndarray, source: np.ndarray, scale: float, degrees: float, tx: float,
           ty: float) -> tuple[np.ndarray, np.ndarray]:
  theta = np.deg2rad(degrees)
  a = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
  matrix = np.concatenate([a, [[tx], [ty]]], axis=1)
  warped = align.warp_affine(source, matrix, (W, H)).astype(np.float32)
  mask = align.warp_affine(np.full(source.shape[:2], 255, np.uint8), matrix,
                           (W, H)).astype(np.float32)[..., None] / 255
  return np.clip(np.rint(warped * mask + canvas * (1 - mask)), 0, 255).astype(np.uint8), matrix


@pytest.fixture(scope="module")
def world():
  reference = mtcnn_reference.reference_mtcnn()
  astronaut = skdata.astronaut()
  camera = np.repeat(skdata.camera()[..., None], 3, axis=-1)
  _, _, points = reference.detect(Image.fromarray(astronaut), landmarks=True)
  truth_astronaut = points[0].astype(np.float64)
  yy, xx = np.mgrid[0:H, 0:W]
  wave = 110 + 50 * np.sin(xx / 45.0) * np.cos(yy / 60.0)
  background = np.clip(np.stack([wave, wave * 0.9 + 10, wave * 0.8 + 20], -1), 0,
                       255).astype(np.uint8)
  head = astronaut[FACE_CROP]
  offset = np.array([FACE_CROP[1].start, FACE_CROP[0].start], np.float64)
  composites, truths = [], []
  for k, paste in enumerate(PASTES):
    canvas, matrix = _paste(background, head, *paste)
    if k == len(PASTES) - 1:
      canvas, _ = _paste(canvas, head, *SECOND_FACE)
    composites.append(canvas)
    truths.append((truth_astronaut - offset) @ matrix[:, :2].T + matrix[:, 2])
  photos = {"astronaut": astronaut, "camera": camera,
            **{f"composite{k}": c for k, c in enumerate(composites)}, "no_face": background}
  ref = {}
  for name, photo in photos.items():
    with mtcnn_reference.ReferenceTap(reference) as tap:
      boxes, probs, points = reference.detect(Image.fromarray(photo), landmarks=True)
    ref[name] = {"tap": tap, "boxes": boxes, "probs": probs, "points": points}
  detector = detector_lib.get_detector(batch_size=4)
  square = detector.detect([astronaut, camera], stages=True)
  wide = detector.detect(composites + [background], stages=True)
  ours = dict(zip(photos, square + wide))
  return {"reference": reference, "photos": photos, "ref": ref, "ours": ours,
          "truths": truths, "detector": detector}


def _final(ref: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The reference's faces by decreasing probability (its output is sorted by area)."""
  if ref["boxes"] is None:
    return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2))
  boxes = np.asarray(ref["boxes"], np.float64)
  probs = np.asarray(ref["probs"], np.float64)
  order = np.argsort(-probs, kind="stable")
  return boxes[order], probs[order], np.asarray(ref["points"], np.float64)[order]


# ------------------------------------------------------------------------------------------
def test_networks_and_strict_conversion(tmp_path):
  fnp = mtcnn_reference.import_facenet_pytorch()
  variables = mtcnn_keys.load_variables()
  rng = np.random.default_rng(0)
  for name, cls, shape in (("pnet", fnp.PNet, (2, 31, 37, 3)), ("rnet", fnp.RNet, (3, 24, 24, 3)),
                           ("onet", fnp.ONet, (3, 48, 48, 3))):
    net = cls().eval()
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    with torch.no_grad():
      theirs = [t.numpy() for t in net(torch.from_numpy(x).permute(0, 3, 1, 2))]
    ours = mtcnn.NETS[name]().apply(variables[name], x)
    for t, o in zip(theirs, ours):
      t = t.transpose(0, 2, 3, 1) if t.ndim == 4 else t      # P-Net maps are NCHW
      np.testing.assert_allclose(np.asarray(o), t, atol=1e-5)
    back = mtcnn_keys.to_torch(name, variables[name])
    assert sorted(back) == sorted(net.state_dict())
    for key, value in net.state_dict().items():
      np.testing.assert_array_equal(back[key], value.numpy())
  # every missing and mis-shaped key at once
  sd = {k: v.numpy() for k, v in fnp.RNet().state_dict().items()}
  sd.pop("dense4.bias")
  sd["conv1.weight"] = sd["conv1.weight"][:, :2]
  with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\).*dense4.bias.*conv1.weight"):
    mtcnn_keys.to_flax("rnet", sd)
  # the same weights from a wheel file (zip) and a folder; a clear error when absent
  folder = mtcnn_keys.installed_data_dir()
  wheel = tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as z:
    for file in ("pnet.pt", "rnet.pt", "onet.pt"):
      z.write(os.path.join(folder, file), f"facenet_pytorch/data/{file}")
  for source in (str(wheel), folder):
    release, _ = mtcnn_keys.read_release(source)
    for name in variables:
      flax = mtcnn_keys.to_flax(name, release[name])
      for layer in flax["params"]:
        for leaf, value in flax["params"][layer].items():
          np.testing.assert_array_equal(value, variables[name]["params"][layer][leaf])
  with pytest.raises(mtcnn_keys.WeightsNotFound, match="pip install --no-deps facenet-pytorch"):
    mtcnn_keys.read_release(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["astronaut", "camera", "composite0", "composite1",
                                  "composite2"])
def test_every_stage_matches_the_reference(world, name):
  ref, ours = world["ref"][name], world["ours"][name]
  tap, st = ref["tap"], ours.stages
  assert not ours.overflow
  for stage, boxes, scores, valid, net_scores, tap_boxes, tap_net in (
      ("P-Net → R-Net", st["stage1_boxes"], st["stage1_scores"], st["stage1_valid"],
       st["rnet_scores"], tap.stage1, tap.rnet),
      ("R-Net → O-Net", st["stage2_boxes"], st["stage2_scores"], st["stage2_valid"],
       st["onet_scores"], tap.stage2, tap.onet)):
    n = int(valid.sum())
    assert valid[:n].all() and n == len(tap_boxes), (stage, n, len(tap_boxes))
    np.testing.assert_allclose(boxes[:n], tap_boxes[:, :4], atol=BOX_TOL, err_msg=stage)
    np.testing.assert_allclose(scores[:n], tap_boxes[:, 4], atol=PROB_TOL, err_msg=stage)
    np.testing.assert_allclose(net_scores[:n], tap_net, atol=PROB_TOL, err_msg=stage)
  boxes, probs, points = _final(ref)
  assert len(ours) == len(boxes) >= 1
  np.testing.assert_allclose(ours.boxes, boxes, atol=BOX_TOL)
  np.testing.assert_allclose(ours.scores, probs, atol=PROB_TOL)
  np.testing.assert_allclose(ours.landmarks, points, atol=BOX_TOL)


def test_landmarks_on_composites_within_the_stated_error(world):
  for k, truth in enumerate(world["truths"]):
    name = f"composite{k}"
    faces = world["ours"][name]
    iod = np.linalg.norm(truth[1] - truth[0])
    # the face whose eyes lie nearest the pasted truth (composite2 holds two faces)
    errors = [np.linalg.norm(lm - truth, axis=1).mean() / iod for lm in faces.landmarks]
    j = int(np.argmin(errors))
    assert errors[j] <= NME_BOUND, (name, errors[j])
    _, _, ref_points = _final(world["ref"][name])
    ref_nme = np.linalg.norm(ref_points[j] - truth, axis=1).mean() / iod
    assert abs(errors[j] - ref_nme) <= 1e-4


def test_primary_face_is_the_references_center_weighted_choice(world):
  photo = world["photos"]["composite2"]
  faces = world["ours"]["composite2"]
  assert len(faces) == 2
  ref = world["ref"]["composite2"]
  for face, method in (("primary", "center_weighted_size"), ("largest", "largest"),
                       ("probability", "probability")):
    chosen, _, _ = world["reference"].select_boxes(
        ref["boxes"], ref["probs"], ref["points"], Image.fromarray(photo), method=method)
    pick = faces_lib.select_faces(faces, H, W, face)
    assert len(pick) == 1
    np.testing.assert_allclose(faces.boxes[pick[0]], np.asarray(chosen[0], np.float64),
                               atol=BOX_TOL)
  assert sorted(faces_lib.select_faces(faces, H, W, "all")) == [0, 1]


def test_aligned_crop_is_the_alignment_of_the_reference_landmarks(world):
  astronaut = world["photos"]["astronaut"]
  found = faces_lib.detect_and_align([astronaut, world["photos"]["camera"]],   # compiled bucket
                                     detector=world["detector"])
  expected = align.align_face(astronaut, np.asarray(world["ref"]["astronaut"]["points"][0],
                                                    np.float64))
  assert found.crops.shape == (2, 112, 112, 3) and found.no_face == []
  assert np.abs(found.crops[0].astype(int) - expected.astype(int)).max() <= 1


def test_no_face_is_reported(world):
  assert world["ref"]["no_face"]["boxes"] is None
  assert len(world["ours"]["no_face"]) == 0
  photos = [world["photos"][n] for n in ("no_face", "composite0", "composite1", "composite2")]
  found = faces_lib.detect_and_align(photos, detector=world["detector"])
  assert found.no_face == [0] and list(found.image) == [1, 2, 3] and len(found.crops) == 3


def test_batched_equals_one_by_one(world):
  names = ["composite0", "composite1", "composite2", "no_face"]
  single = detector_lib.Detector(batch_size=1)
  for name in names:
    alone = single.detect([world["photos"][name]])[0]
    batched = world["ours"][name]
    assert len(alone) == len(batched) and alone.overflow == batched.overflow
    np.testing.assert_allclose(alone.boxes, batched.boxes, atol=BOX_TOL)
    np.testing.assert_allclose(alone.landmarks, batched.landmarks, atol=BOX_TOL)
    np.testing.assert_allclose(alone.scores, batched.scores, atol=PROB_TOL)


def test_score_a_folder_of_raw_photos(world, tmp_path):
  """configs/score.py with data.align=detect: rows are detected faces with their columns,
  photos without a face in no_face.txt; the scores are the model's on the aligned crops."""
  from configs import score as score_config
  from exfiqa_jax import inference
  from exfiqa_jax.tasks import score
  from exfiqa_jax.testing import torch_reference, worlds
  photos = tmp_path / "photos"
  photos.mkdir()
  names = ["astronaut", "camera", "composite0", "composite1", "composite2", "no_face"]
  for name in names:
    Image.fromarray(world["photos"][name]).save(photos / f"{name}.png")
  twin = torch_reference.VitFiqaTorch(**torch_reference.tiny_kwargs("token"))
  torch_reference.random_init_(twin, seed=3)
  torch.save(twin.state_dict(), tmp_path / "tiny.pt")
  heads = torch_reference.tiny_kwargs("token")["num_heads"]
  config = worlds.override(score_config.get_config("size=tiny"), images=str(photos),
                           output=str(tmp_path / "out"),
                           **{"quality_model.path": str(tmp_path / "tiny.pt"),
                              "quality_model.num_heads": heads, "data.align": "detect",
                              "data.detect_batch_size": 4, "data.face": "all"})
  result = score.run(config)
  with open(result["scores"], newline="") as f:
    rows = list(csv.reader(f))
  header = rows[0]
  depth = torch_reference.tiny_kwargs("token")["depth"]
  plain = (["image"] + [f"exit_{l}" for l in range(1, depth + 1)] + ["ex_fiqa_f", "ex_fiqa_fw"]
           + [f"attn_{l}" for l in range(1, depth + 1)])
  added = (["face", "num_faces", "det_score", "box_x1", "box_y1", "box_x2", "box_y2"]
           + [f"lm{p}_{c}" for p in range(1, 6) for c in "xy"])
  assert header[:len(plain)] == plain and header[-len(added):] == added
  assert [r[0] for r in rows[1:]] == ["astronaut.png", "camera.png", "composite0.png",
                                      "composite1.png", "composite2.png", "composite2.png"]
  assert open(tmp_path / "out" / "no_face.txt").read() == "no_face.png\n"
  assert result["no_face"] == ["no_face.png"]
  values = {c: np.asarray([float(r[header.index(c)]) for r in rows[1:]]) for c in header[1:]}
  order = ["astronaut", "camera", "composite0", "composite1", "composite2"]
  expected = []
  for name in order:
    faces = world["ours"][name]
    for rank, j in enumerate(faces_lib.face_order(faces, *world["photos"][name].shape[:2],
                                                  "all")):
      expected.append((rank, len(faces), faces.scores[j], faces.boxes[j]))
  np.testing.assert_array_equal(values["face"], [e[0] for e in expected])
  np.testing.assert_array_equal(values["num_faces"], [e[1] for e in expected])
  np.testing.assert_allclose(values["det_score"], [e[2] for e in expected], atol=1e-6)
  np.testing.assert_allclose(np.stack([values[c] for c in added[3:7]], 1),
                             np.stack([e[3] for e in expected]), atol=1e-3)
  # the Python API on the same photos: the same faces and scores
  model = inference.load(str(tmp_path / "tiny.pt"), num_heads=heads, batch_size=8)
  api = model.score([world["photos"][n] for n in names], align="detect", face="all")
  assert list(api["image"]) == [0, 1, 2, 3, 4, 4] and list(api["no_face"]) == [5]
  np.testing.assert_allclose(api["exit_scores"],
                             np.stack([values[f"exit_{l}"] for l in range(1, depth + 1)], 1),
                             atol=1e-5)


def test_image_folder_builder_aligns_raw_photos(world, tmp_path):
  from exfiqa_jax.data import builders
  from exfiqa_jax.detection import folder  # noqa: F401  registers align="detect"
  root = tmp_path / "people"
  for identity, names in {"astro": ["composite0", "composite1"],
                          "scene": ["no_face", "composite2"]}.items():
    (root / identity).mkdir(parents=True)
    for name in names:
      Image.fromarray(world["photos"][name]).save(root / identity / f"{name}.png")
  source, info = builders.load("image_folder", root, tmp_path / "data", align="detect",
                               decode=True)
  names = sorted(source[i]["name"] for i in range(len(source)))
  assert names == ["astro/composite0.png", "astro/composite1.png", "scene/composite2.png"]
  built = next(p for p in (tmp_path / "data").rglob("no_face.txt"))
  assert built.read_text() == "scene/no_face.png\n"
  record = next(source[i] for i in range(len(source))
                if source[i]["name"] == "astro/composite0.png")
  faces = world["ours"]["composite0"]
  expected = align.align_face(world["photos"]["composite0"],
                              faces.landmarks[faces_lib.select_faces(faces, H, W)[0]])
  np.testing.assert_array_equal(record["image"], expected)
  with pytest.raises(ValueError, match="no aligner for align='detected'"):
    builders.load("image_folder", root, tmp_path / "data_typo", align="detected")


class _StubDetector:
  """Stands in for `Detector`: photo i (a flat PNG of grey level 10·i) has the faces `truth[i]`."""
  config = settings.DetectorConfig(max_faces=4)

  def __init__(self, truth):
    self.truth = truth

  def detect(self, photos):
    return [self.truth[int(p[0, 0, 0]) // 10] for p in photos]


def test_detections_are_shared_between_hosts(monkeypatch, tmp_path):
  """photo_rows on two processes: process p detects photos p, p + 2, ...; one all-gather gives
  every process every photo's faces. Both hosts' views must equal the one-process answer.
  The hosts run one after another here, so the all-gather is simulated in two rounds: a real
  one returns when every host has sent, which the second round's calls see."""
  from jax.experimental import multihost_utils
  rng = np.random.default_rng(0)
  shapes = [(480, 640), (512, 512), (300, 200), (480, 640), (10, 10)]   # photo 4: unreadable
  truth, paths, names = {}, [], []
  for i, (shape, n) in enumerate(zip(shapes, [1, 2, 0, 3, 1])):
    truth[i] = detector_lib.Faces(
        rng.uniform(0, 100, (n, 4)).astype(np.float32), rng.uniform(0.7, 1, n).astype(np.float32),
        rng.uniform(0, 100, (n, 5, 2)).astype(np.float32), overflow=i == 3)
    paths.append(str(tmp_path / f"photo{i}.png"))
    names.append(f"photo{i}.png")
    Image.fromarray(np.full(shape + (3,), 10 * i, np.uint8)).save(paths[-1])
  stub, photo_settings = _StubDetector(truth), settings.PhotoSettings(face="all")
  one = rows.photo_rows(paths, names, photo_settings, detector=stub)
  assert one.no_face == ["photo2.png"] and one.overflow == ["photo3.png"]
  assert list(one.unreadable) == [4] and "too small" in one.unreadable[4]
  assert [(r.image, r.face) for r in one.records] == [(0, 0), (1, 0), (1, 1), (3, 0), (3, 1),
                                                     (3, 2)]
  sent = {}

  def all_gather(tree):
    sent[jax.process_index()] = tree
    if len(sent) < 2:          # first round, first host: the other has not sent yet
      return tuple(np.stack([t, t]) for t in tree)
    return tuple(np.stack([sent[0][k], sent[1][k]]) for k in range(len(tree)))

  monkeypatch.setattr(multihost_utils, "process_allgather", all_gather)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  views = {}
  for _ in range(2):
    for host in (0, 1):
      monkeypatch.setattr(jax, "process_index", lambda host=host: host)
      views[host] = rows.photo_rows(paths, names, photo_settings, detector=stub)
  for host, view in views.items():
    assert (view.names, view.no_face, view.overflow) == (one.names, one.no_face, one.overflow)
    assert list(view.unreadable) == [4], host
    assert view.unreadable[4] == (one.unreadable[4] if host == 0 else
                                  "unreadable (reported by another host)")
    assert len(view.records) == len(one.records)
    for got, want in zip(view.records, one.records):
      assert (got.image, got.face, got.num_faces, got.score) == (
          want.image, want.face, want.num_faces, want.score), host
      np.testing.assert_array_equal(got.box, want.box)
      np.testing.assert_array_equal(got.landmarks, want.landmarks)
    for name, column in view.columns().items():
      np.testing.assert_array_equal(column, one.columns()[name])
