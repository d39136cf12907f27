"""The two pixel protocols (docs/data.md, "Protocols: published and lossless") on a miniature
IJB-C release (un-aligned JPEG loose crops + the three meta files), an insightface `.bin`
(JPEG bytes in the pickle) and XQLFW, all written here in the real formats.

`published` must equal a plain reimplementation of the CR-FIQA scripts with OpenCV
(extract_IJB.py / extract_bin.py / extract_xqlfw.py, then cv2.imread as getQualityScore.py
reads): the stored JPEG byte for byte and the pixels the model sees exactly. The only step not
taken from OpenCV is the warp (the project's NumPy warp, tested against cv2 in
tests/test_align.py); with cv2.warpAffine itself the difference is bounded below. `lossless`
must equal the stored pixels.
"""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from configs import eval_ijbc, eval_verification
from exfiqa_jax.data import align, builders, protocols
from exfiqa_jax.evaluation import benchmarks

import cv2  # noqa: E402  test-only dependency (pip install -e .[dev]); never imported by the toolkit


def _face_like(rng, h, w):
  ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([np.sin(xs * rng.uniform(3, 9) + rng.uniform(0, 6)),
                   np.cos(ys * rng.uniform(3, 9) + rng.uniform(0, 6)),
                   np.sin((xs + ys) * rng.uniform(3, 9))], -1)
  image = np.clip(128 + 90 * base + rng.normal(0, 14, base.shape), 0, 255).astype(np.uint8)
  return cv2.GaussianBlur(image, (3, 3), 1.0)


def _jpeg(rgb, quality=90):
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """IJBC/ (6 images, 3 templates, un-aligned JPEG loose crops), bins/mini.bin (4 pairs of
  JPEG bytes), xqlfw/ (3 pairs); returns the folders."""
  root = tmp_path_factory.mktemp("release")
  rng = np.random.default_rng(13)
  ijbc = root / "IJBC"
  (ijbc / "loose_crop").mkdir(parents=True)
  (ijbc / "meta").mkdir()
  five, tid = [], []
  for k in range(6):
    name = f"{k + 1}.jpg"
    loose = _face_like(rng, int(rng.integers(140, 200)), int(rng.integers(120, 190)))
    (ijbc / "loose_crop" / name).write_bytes(_jpeg(loose, 92))
    angle, scale = rng.uniform(-0.4, 0.4), rng.uniform(0.9, 1.4)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    to_loose = np.array([[c, -s, rng.uniform(0, 15)], [s, c, rng.uniform(0, 20)]])
    marks = (align.arcface_template() @ to_loose[:, :2].T + to_loose[:, 2]
             + rng.normal(0, 0.8, (5, 2)))
    five.append(" ".join([name] + [f"{v:.6f}" for v in marks.ravel()] + ["0.9"]))
    tid.append(f"{name} {101 + k // 2} {k}")
  (ijbc / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(five) + "\n")
  (ijbc / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid) + "\n")
  (ijbc / "meta" / "ijbc_template_pair_label.txt").write_text(
      "101 102 0\n101 103 0\n102 103 0\n101 101 1\n")
  (root / "bins").mkdir()
  images = [_jpeg(_face_like(rng, 112, 112), 95) for _ in range(8)]
  with open(root / "bins" / "mini.bin", "wb") as f:
    pickle.dump((images, [True, False, True, False]), f, protocol=2)
  xq = root / "xqlfw"
  for person in ("Ann_A", "Bob_B"):
    (xq / "xqlfw_aligned_112" / person).mkdir(parents=True)
    for i in (1, 2):
      (xq / "xqlfw_aligned_112" / person / f"{person}_{i:04d}.jpg").write_bytes(
          _jpeg(_face_like(rng, 112, 112), 85))
  (xq / "xqlfw_pairs.txt").write_text("header\nAnn_A 1 2\nBob_B 1 2\nAnn_A 1 Bob_B 2\n")
  return {"root": root, "ijbc": ijbc, "bins": root / "bins", "xqlfw": xq,
          "data_dir": root / "tfds"}


def _open(name, release, protocol, **data):
  config = (eval_ijbc.get_config("size=tiny") if name == "ijbc"
            else eval_verification.get_config(f"benchmarks={name},size=tiny"))
  config.data.manual_dir = str(release["ijbc" if name == "ijbc" else
                                       "xqlfw" if name == "xqlfw" else "bins"])
  config.data.data_dir = str(release["data_dir"])
  config.data.protocol = protocol
  for key, value in data.items():
    config.data[key] = value
  bench = benchmarks.open_benchmark(name, config)
  return bench, bench.read(np.arange(bench.num_images))


def _raw_records(name, release, protocol):
  """The records (stored bytes, not decoded) of the data set a protocol builds."""
  cls, options = builders.loader.resolve(name if name != "mini" else "verification_bin/mini", {})
  options.update(protocols.build_options(cls.name, protocol))
  source, info = builders.load(name if name != "mini" else "verification_bin/mini", None,
                               release["data_dir"], decode=False, **options)
  return [source[k] for k in range(len(source))], info


def _cv2_script_file(bgr_or_rgb_array, tmp_path, name):
  """cv2.imwrite of the array the script holds, then cv2.imread as getQualityScore.py does."""
  path = str(tmp_path / f"{name}.jpg")
  assert cv2.imwrite(path, bgr_or_rgb_array)
  with open(path, "rb") as f:
    data = f.read()
  return data, cv2.imread(path)


def _meta_landmarks(release):
  lines = (release["ijbc"] / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()
  # float32, as extract_IJB.py parses them (np.array(..., dtype=np.float32))
  return {t[0]: np.array([float(v) for v in t[1:11]], dtype=np.float32).reshape(5, 2)
          for t in (line.split() for line in lines)}


def test_ijbc_published_is_the_scripts_file_and_pixels(release, tmp_path):
  bench, (pixels, names) = _open("ijbc", release, "published")
  assert bench.protocol == "published" and bench.identity["channel_order"] == "bgr"
  records, info = _raw_records("ijbc", release, "published")
  landmarks = _meta_landmarks(release)
  warp_gap = []
  for k, name in enumerate(names):
    # extract_IJB.py: imread (BGR) → similarity to the template → warp → RGB2BGR → imwrite
    bgr = cv2.imread(str(release["ijbc"] / "loose_crop" / name))
    matrix = align.similarity_transform(landmarks[name], align.arcface_template())
    script = cv2.cvtColor(align.warp_affine(bgr, matrix, 112), cv2.COLOR_RGB2BGR)
    data, fed = _cv2_script_file(script, tmp_path, f"ijbc_{k}")
    assert records[k]["name"] == name and records[k]["image"] == data   # byte for byte
    np.testing.assert_array_equal(pixels[k], fed)                        # what the model sees
    # the same with cv2.warpAffine as the warp (the only non-OpenCV step above)
    theirs = cv2.cvtColor(cv2.warpAffine(bgr, matrix, (112, 112), borderValue=0.0),
                          cv2.COLOR_RGB2BGR)
    warp_gap.append(np.abs(_cv2_script_file(theirs, tmp_path, "w")[1].astype(int) - pixels[k]))
  gap = np.stack(warp_gap)
  # measured with OpenCV 5.0: max 2, mean 4e-4 grey levels (warp max 1 grey level before JPEG)
  assert gap.max() <= 8 and gap.mean() < 0.05, (gap.max(), gap.mean())


def test_ijbc_lossless_is_the_aligned_crop(release):
  bench, (pixels, names) = _open("ijbc", release, "lossless", image_format="png")
  assert bench.protocol == "lossless" and bench.identity["channel_order"] == "rgb"
  records, _ = _raw_records("ijbc", release, "lossless")
  landmarks = _meta_landmarks(release)
  for k, name in enumerate(names):
    rgb = np.asarray(Image.open(release["ijbc"] / "loose_crop" / name).convert("RGB"))
    np.testing.assert_array_equal(pixels[k], align.align_face(rgb, landmarks[name]))
    assert records[k]["image"][:8] == b"\x89PNG\r\n\x1a\n"


def test_bin_published_and_lossless(release, tmp_path):
  with open(release["bins"] / "mini.bin", "rb") as f:
    stored, _ = pickle.load(f)
  bench, (pixels, names) = _open("mini", release, "published")
  records, _ = _raw_records("mini", release, "published")
  for k in range(len(stored)):
    # extract_bin.py: mx.image.imdecode (RGB) → cv2.imwrite; then cv2.imread
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(stored[k], np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    data, fed = _cv2_script_file(rgb, tmp_path, f"bin_{k}")
    assert records[k]["image"] == data
    np.testing.assert_array_equal(pixels[k], fed)
  lossless, (plain, _) = _open("mini", release, "lossless")
  raw, _ = _raw_records("mini", release, "lossless")
  for k in range(len(stored)):
    assert raw[k]["image"] == stored[k]
    np.testing.assert_array_equal(plain[k], np.asarray(Image.open(io.BytesIO(stored[k]))))
  # the protocol is part of the data set's identity: another build, every stage recomputes
  assert lossless.identity["directory"] != bench.identity["directory"]
  assert lossless.identity["protocol"] == "lossless" != bench.identity["protocol"]
  # published ≠ lossless pixels (the JPEG round trip of the channel-swapped array)
  assert np.abs(plain.astype(int) - pixels).max() > 0


def test_xqlfw_published(release, tmp_path):
  _, (pixels, names) = _open("xqlfw", release, "published")
  for k, name in enumerate(names):
    person = name.rsplit("_", 1)[0]
    # extract_xqlfw.py: imread → RGB2BGR → imwrite; then cv2.imread
    bgr = cv2.imread(str(release["xqlfw"] / "xqlfw_aligned_112" / person / f"{name}.jpg"))
    _, fed = _cv2_script_file(cv2.cvtColor(bgr, cv2.COLOR_RGB2BGR), tmp_path, f"xq_{k}")
    np.testing.assert_array_equal(pixels[k], fed)


def test_pil_codec_equals_opencv():
  """PIL's quality-95 JPEG of the swapped array = cv2.imencode, and PIL decode = cv2.imdecode,
  at the sizes and contents of face crops and loose crops."""
  rng = np.random.default_rng(5)
  for k in range(6):
    h, w = (112, 112) if k < 3 else tuple(int(v) for v in rng.integers(60, 260, 2))
    rgb = _face_like(rng, h, w) if k % 2 else rng.integers(0, 256, (h, w, 3), np.uint8)
    ok, encoded = cv2.imencode(".jpg", rgb)          # rgb as the script holds it
    assert ok and protocols.script_jpeg(rgb) == encoded.tobytes()
    np.testing.assert_array_equal(protocols.read_script_jpeg(encoded.tobytes()),
                                  cv2.imdecode(encoded, cv2.IMREAD_COLOR))
    np.testing.assert_array_equal(protocols.published_pixels(rgb),
                                  cv2.imdecode(encoded, cv2.IMREAD_COLOR))


def test_protocol_errors(release):
  with pytest.raises(ValueError, match="config.data.protocol"):
    _open("mini", release, "jpeg")
  with pytest.raises(ValueError, match="contradicts"):
    _open("ijbc", release, "published", image_format="png")
  with pytest.raises(ValueError, match="no image_format option"):
    protocols.build_options("adience", "published", "png")
  assert protocols.build_options("adience", "lossless") == {}
