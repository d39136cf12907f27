"""TFDS builders on miniatures of the real formats, built inside the tests; every bad input."""
from __future__ import annotations

import io
import os
import pickle
import threading

import numpy as np
import pytest
from PIL import Image

from exfiqa_jax import files
from exfiqa_jax.data import align, builders
from exfiqa_jax.data import pairs as pairs_lib
from exfiqa_jax.data.builders import base, verification_bin
from exfiqa_jax.data.preprocess import ImageError


def _face_like(rng, h=112, w=112):
  """Random non-trivial content: smooth colour gradients plus noise and a few blobs."""
  ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([np.sin(xs * rng.uniform(2, 9) + rng.uniform(0, 6)),
                   np.cos(ys * rng.uniform(2, 9) + rng.uniform(0, 6)),
                   np.sin((xs + ys) * rng.uniform(2, 9))], -1)
  image = 128 + 90 * base + rng.normal(0, 12, (h, w, 3))
  for _ in range(3):
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 15)
    image[(ys * max(h, w) - cy) ** 2 + (xs * max(h, w) - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
  return np.clip(image, 0, 255).astype(np.uint8)


def _encode(array, fmt="JPEG"):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def _pil_decode(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _write_bin(path, images, issame, protocol=pickle.HIGHEST_PROTOCOL):
  with open(path, "wb") as f:
    pickle.dump((images, issame), f, protocol=protocol)


def _records_by_name(source):
  return {r["name"]: r for r in source}


# --- verification .bin ----------------------------------------------------------------------------
@pytest.fixture()
def bin_dir(tmp_path):
  rng = np.random.default_rng(0)
  images = [_encode(_face_like(rng)) for _ in range(8)]
  issame = [True, False, False, True]
  manual = tmp_path / "bins"
  manual.mkdir()
  _write_bin(manual / "lfw.bin", images, issame)
  return manual, images, issame


def test_verification_bin_records_and_pairs(bin_dir, tmp_path):
  manual, images, issame = bin_dir
  source, info = builders.load("lfw", manual, tmp_path / "data")
  assert len(source) == 8 and info.num_records == 8 and info.channel_order == "rgb"
  by_name = _records_by_name(source)
  for k, data in enumerate(images):
    record = by_name[f"{k:05d}"]
    assert record["image"] == data and record["image_id"] == k   # stored bytes untouched
  names = [source[int(k)]["name"] for k in info.pairs["index_a"]]
  names_b = [source[int(k)]["name"] for k in info.pairs["index_b"]]
  assert names == [f"{2 * i:05d}" for i in range(4)]
  assert names_b == [f"{2 * i + 1:05d}" for i in range(4)]
  np.testing.assert_array_equal(info.pairs["is_genuine"], issame)
  # Same data set under its builder/config name; decode=True gives the PIL pixels.
  source2, info2 = builders.load("verification_bin/lfw", None, tmp_path / "data", decode=True)
  assert info2.directory == info.directory
  record = source2[3]
  np.testing.assert_array_equal(record["image"], _pil_decode(images[record["image_id"]]))
  bgr, _ = builders.load("lfw", None, tmp_path / "data", decode=True, channel_order="bgr")
  np.testing.assert_array_equal(bgr[3]["image"], record["image"][..., ::-1])


def test_pairs_follow_record_ids_not_record_order(bin_dir, tmp_path):
  # Records are written in plan order, but pairs must be resolved through each record's own
  # image_id: with a wrong side-file the loader re-reads the ids from the records.
  manual, _, issame = bin_dir
  _, info = builders.load("lfw", manual, tmp_path / "data")
  np.testing.assert_array_equal(info.image_ids, np.arange(8))
  np.save(os.path.join(info.directory, "record_image_ids.npy"), np.arange(8)[::-1].copy())
  source, info = builders.load("lfw", None, tmp_path / "data")
  np.testing.assert_array_equal(info.image_ids, np.arange(8))
  for a, b in zip(info.pairs["index_a"], info.pairs["index_b"]):
    assert int(source[int(b)]["name"]) == int(source[int(a)]["name"]) + 1


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_bin_numpy_buffers_and_bools_are_accepted(tmp_path, protocol):
  # Some writers append cv2.imencode() output (uint8 arrays) and numpy bools.
  rng = np.random.default_rng(1)
  raw = [_encode(_face_like(rng)) for _ in range(4)]
  stored = [np.frombuffer(raw[0], np.uint8), raw[1], bytearray(raw[2]),
            np.frombuffer(raw[3], np.uint8).copy()]
  for issame in ([np.bool_(True), np.bool_(False)], np.array([True, False]), (True, 0)):
    path = tmp_path / f"x{protocol}.bin"
    _write_bin(path, stored, issame, protocol)
    images, labels = verification_bin.read_bin(path)
    assert images == raw
    np.testing.assert_array_equal(labels, [True, False])


class _Exploit:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["system", "eval", "dict_label", "float_dtype"])
def test_malicious_bin_is_refused(tmp_path, payload):
  marker = tmp_path / "pwned"
  images = [b"\xff\xd8x", b"\xff\xd8y"]
  if payload == "system":
    obj = (images + [_Exploit(marker)], [True])
  elif payload == "eval":
    obj = (images, [eval])   # a builtins global
  elif payload == "dict_label":
    obj = (images, [{"a": 1}])
  else:
    obj = (images, np.array([1.5]))
  path = tmp_path / "evil.bin"
  with open(path, "wb") as f:
    pickle.dump(obj, f)
  with pytest.raises(verification_bin.UnsafePickleError, match="refused|not a bool|dtype"):
    verification_bin.read_bin(path)
  assert not marker.exists()
  os.rename(path, tmp_path / "evil_set.bin")
  with pytest.raises(verification_bin.UnsafePickleError):
    builders.load("verification_bin", tmp_path, tmp_path / "data", dataset="evil_set")
  assert not marker.exists()


def test_bin_structure_errors(tmp_path):
  rng = np.random.default_rng(2)
  images = [_encode(_face_like(rng)) for _ in range(3)]
  _write_bin(tmp_path / "odd.bin", images, [True])
  with pytest.raises(builders.DataError, match="2 images per pair"):
    verification_bin.read_bin(tmp_path / "odd.bin")
  _write_bin(tmp_path / "empty.bin", [], [])
  with pytest.raises(builders.DataError, match="empty"):
    verification_bin.read_bin(tmp_path / "empty.bin")
  (tmp_path / "junk.bin").write_bytes(b"not a pickle at all")
  with pytest.raises(builders.DataError, match="not a readable"):
    verification_bin.read_bin(tmp_path / "junk.bin")


def test_missing_manual_dir_prints_layout(bin_dir, tmp_path):
  manual, _, _ = bin_dir
  with pytest.raises(builders.ManualDirError, match=r"(?s)not built yet.*<dataset>\.bin"):
    builders.load("lfw", None, tmp_path / "data")
  with pytest.raises(builders.ManualDirError, match=r"(?s)does not exist.*Expected layout"):
    builders.load("lfw", tmp_path / "nowhere", tmp_path / "data")
  with pytest.raises(builders.ManualDirError, match=r"(?s)agedb_30\.bin.*lfw\.bin"):
    builders.load("agedb_30", manual, tmp_path / "data")


def test_corrupt_image_error_then_skip(tmp_path):
  rng = np.random.default_rng(3)
  images = [_encode(_face_like(rng)) for _ in range(6)]
  images[3] = images[3][:200]           # truncated JPEG
  (tmp_path / "bins").mkdir()
  _write_bin(tmp_path / "bins" / "cplfw.bin", images, [True, False, True])
  with pytest.raises(ImageError, match=r"00003.*--config\.data\.skip_corrupt=True"):
    builders.load("cplfw", tmp_path / "bins", tmp_path / "data")
  source, info = builders.load("cplfw", tmp_path / "bins", tmp_path / "data", skip_corrupt=True)
  assert len(source) == 5 and info.skipped == ["00003"]
  assert info.metadata["num_pairs_dropped"] == 1
  assert os.path.exists(os.path.join(info.directory, "skipped_images.txt"))
  pairs = [(source[int(a)]["name"], source[int(b)]["name"])
           for a, b in zip(info.pairs["index_a"], info.pairs["index_b"])]
  assert pairs == [("00000", "00001"), ("00004", "00005")]
  np.testing.assert_array_equal(info.pairs["is_genuine"], [True, True])


def test_options_are_checked_and_separate_configs(bin_dir, tmp_path):
  manual, _, _ = bin_dir
  with pytest.raises(ValueError, match="unknown option"):
    builders.load("lfw", manual, tmp_path / "data", max_pairs=3)
  with pytest.raises(ValueError, match="unknown data set"):
    builders.load("nope", manual, tmp_path / "data")
  _, plain = builders.load("lfw", manual, tmp_path / "data")
  _, skipping = builders.load("lfw", manual, tmp_path / "data", skip_corrupt=True)
  assert plain.directory != skipping.directory
  other = tmp_path / "other"
  other.mkdir()
  os.link(manual / "lfw.bin", other / "lfw.bin")
  with pytest.raises(ValueError, match="already holds"):
    builders.load("lfw", other, tmp_path / "data")


# --- XQLFW -------------------------------------------------------------------------------------------
def _xqlfw_tree(root, rng, lines):
  root.mkdir()
  people = {"Ann_A": 3, "Bob_B": 2, "Cy_C": 1}
  for person, count in people.items():
    (root / "xqlfw_aligned_112" / person).mkdir(parents=True)
    for i in range(1, count + 1):
      (root / "xqlfw_aligned_112" / person / f"{person}_{i:04d}.jpg").write_bytes(
          _encode(_face_like(rng)))
  (root / "xqlfw_pairs.txt").write_text("10\t300\n" + "\n".join(lines) + "\n")


def test_xqlfw_pairs(tmp_path):
  rng = np.random.default_rng(4)
  lines = ["Ann_A 1 2", "Ann_A 1 3", "Bob_B 1 2", "Ann_A 2 Bob_B 1", "Cy_C 1 Ann_A 1"]
  _xqlfw_tree(tmp_path / "x", rng, lines)
  source, info = builders.load("xqlfw", tmp_path / "x", tmp_path / "data")
  assert len(source) == 6    # Ann 1..3, Bob 1..2, Cy 1 (each once although named repeatedly)
  got = [(source[int(a)]["name"], source[int(b)]["name"], bool(g)) for a, b, g in
         zip(info.pairs["index_a"], info.pairs["index_b"], info.pairs["is_genuine"])]
  assert got == [("Ann_A_0001", "Ann_A_0002", True), ("Ann_A_0001", "Ann_A_0003", True),
                 ("Bob_B_0001", "Bob_B_0002", True), ("Ann_A_0002", "Bob_B_0001", False),
                 ("Cy_C_0001", "Ann_A_0001", False)]
  record = _records_by_name(source)["Bob_B_0002"]
  assert record["identity"] == "Bob_B"
  assert record["image"] == (tmp_path / "x/xqlfw_aligned_112/Bob_B/Bob_B_0002.jpg").read_bytes()


def test_xqlfw_bad_inputs(tmp_path):
  rng = np.random.default_rng(5)
  _xqlfw_tree(tmp_path / "a", rng, ["Ann_A 1 2", "Ann_A 1 x 2 3"])
  with pytest.raises(builders.DataError, match=r"xqlfw_pairs.txt:3"):
    builders.load("xqlfw", tmp_path / "a", tmp_path / "data")
  _xqlfw_tree(tmp_path / "b", rng, ["Ann_A 1 9"])
  with pytest.raises(builders.DataError, match="Ann_A_0009.jpg"):
    builders.load("xqlfw", tmp_path / "b", tmp_path / "data")
  _xqlfw_tree(tmp_path / "c", rng, [])
  with pytest.raises(builders.DataError, match="no pairs"):
    builders.load("xqlfw", tmp_path / "c", tmp_path / "data")
  (tmp_path / "d").mkdir()
  with pytest.raises(builders.ManualDirError, match="xqlfw_pairs.txt"):
    builders.load("xqlfw", tmp_path / "d", tmp_path / "data")


# --- Adience -----------------------------------------------------------------------------------------
def test_adience_all_pairs_and_cap(tmp_path):
  rng = np.random.default_rng(6)
  folder = tmp_path / "adience"
  folder.mkdir()
  files = ["p_7_img_0", "p_7_img_1", "p_12_img_2", "p_12_img_3", "p_12_img_4", "p_3_img_5"]
  for f in files:
    (folder / f"{f}.jpg").write_bytes(_encode(_face_like(rng)))
  (folder / "._p_7_img_0.jpg").write_bytes(b"\x00\x05\x16\x07")   # macOS metadata: no face
  (folder / "p_9_img_9.jpg").mkdir()                                # a folder named like one
  source, info = builders.load("adience", folder, tmp_path / "data")
  names = [source[k]["name"] for k in range(len(source))]
  person = {n: n.split("_")[1] for n in names}
  got = {(names[a], names[b]): bool(g) for a, b, g in
         zip(info.pairs["index_a"], info.pairs["index_b"], info.pairs["is_genuine"])}
  expected = {}
  ordered = sorted(files)
  for i in range(len(ordered)):
    for j in range(i + 1, len(ordered)):
      expected[(ordered[i], ordered[j])] = person[ordered[i]] == person[ordered[j]]
  assert got == expected and len(got) == 15
  _, capped = builders.load("adience", folder, tmp_path / "data", max_pairs=5, seed=1)
  _, again = builders.load("adience", folder, tmp_path / "data2", max_pairs=5, seed=1)
  assert len(capped.pairs["is_genuine"]) == 5
  for key in ("index_a", "index_b"):
    np.testing.assert_array_equal(capped.pairs[key], again.pairs[key])
  _, keep = builders.load("adience", folder, tmp_path / "data", max_pairs=6,
                          keep_all_genuine=True)
  assert keep.pairs["is_genuine"].sum() == sum(expected.values()) == 4
  (folder / "stray.jpg").write_bytes(_encode(_face_like(rng)))
  with pytest.raises(builders.DataError, match="p_<person>_img_<k>"):
    builders.load("adience", folder, tmp_path / "data3")


@pytest.mark.parametrize("n,cap,keep", [(9, 7, False), (40, 100, False), (40, 100, True),
                                        (12, 66, True), (30, 3, True)])
def test_all_unordered_pairs_sampling(n, cap, keep):
  identities = np.random.default_rng(n).integers(0, 5, n)
  a, b, g = pairs_lib.all_unordered_pairs(identities, cap, keep, seed=3)
  full = {(i, j) for i in range(n) for j in range(i + 1, n)}
  got = list(zip(a.tolist(), b.tolist()))
  assert len(got) == len(set(got)) == min(cap, len(full)) and set(got) <= full
  assert got == sorted(got)                       # row-major order kept
  np.testing.assert_array_equal(g, identities[a] == identities[b])
  genuine = {(i, j) for i, j in full if identities[i] == identities[j]}
  if keep:
    assert genuine <= set(got) or len(got) == cap < len(genuine)
  k = np.arange(len(full))
  i, j = pairs_lib.unordered_pair_from_index(k, n)
  assert list(zip(i.tolist(), j.tolist())) == sorted(full)


# --- IJB-C ---------------------------------------------------------------------------------------
def _bilinear_at(image, x, y):
  """Independent reference sampler: out-of-image neighbours count as 0."""
  h, w = image.shape[:2]
  x0, y0 = int(np.floor(x)), int(np.floor(y))
  fx, fy = x - x0, y - y0
  out = np.zeros(image.shape[2])
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      yy, xx = y0 + dy, x0 + dx
      if 0 <= yy < h and 0 <= xx < w:
        out += wy * wx * image[yy, xx]
  return out


def _ijbc_tree(root, rng, templates=((101, 7, 2), (102, 8, 1), (103, 9, 2))):
  """3 templates; each (template, media, n_images). Loose crops are PNG (lossless)."""
  (root / "loose_crop").mkdir(parents=True)
  (root / "meta").mkdir()
  five, tid, truth = [], [], {}
  k = 0
  for template, media, count in templates:
    for _ in range(count):
      k += 1
      name = f"{k}.png"
      loose = _face_like(rng, 150, 130)
      (root / "loose_crop" / name).write_bytes(_encode(loose, "PNG"))
      angle, scale = rng.uniform(-0.4, 0.4), rng.uniform(0.9, 1.3)
      c, s = scale * np.cos(angle), scale * np.sin(angle)
      to_loose = np.array([[c, -s, rng.uniform(0, 15)], [s, c, rng.uniform(0, 20)]])
      landmarks = align.arcface_template() @ to_loose[:, :2].T + to_loose[:, 2]
      faceness = rng.uniform(0.5, 1)
      five.append(" ".join([name] + [f"{v:.6f}" for v in landmarks.ravel()] + [f"{faceness:.4f}"]))
      tid.append(f"{name} {template} {media}")
      truth[name] = (loose, to_loose, template, media, faceness)
  (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(five) + "\n")
  (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid) + "\n")
  (root / "meta" / "ijbc_template_pair_label.txt").write_text(
      "101 102 1\n101 103 0\n102 103 0\n")
  return truth


def test_ijbc_alignment_ids_and_template_pairs(tmp_path):
  rng = np.random.default_rng(8)
  root = tmp_path / "IJB_release" / "IJBC"
  truth = _ijbc_tree(root, rng)
  source, info = builders.load("ijbc", tmp_path, tmp_path / "data", decode=True,
                               image_format="png")
  assert len(source) == 5 and info.pair_kind == "template"
  np.testing.assert_array_equal(info.pairs["template_a"], [101, 101, 102])
  np.testing.assert_array_equal(info.pairs["template_b"], [102, 103, 103])
  np.testing.assert_array_equal(info.pairs["is_genuine"], [True, False, False])
  for k in range(len(source)):
    record = source[k]
    loose, to_loose, template, media, faceness = truth[record["name"]]
    assert (record["template_id"], record["media_id"]) == (template, media)
    assert info.record_arrays["template_id"][k] == template
    assert info.record_arrays["media_id"][k] == media
    np.testing.assert_allclose(info.record_arrays["faceness"][k], faceness, atol=1e-4)
    np.testing.assert_allclose(record["faceness"], faceness, atol=1e-4)
    # Output pixel p (template frame) must show the loose crop at to_loose(p).
    expected = np.empty((112, 112, 3))
    for y in range(112):
      for x in range(112):
        sx, sy = to_loose @ np.array([x, y, 1.0])
        expected[y, x] = _bilinear_at(loose.astype(np.float64), sx, sy)
    diff = np.abs(record["image"].astype(np.float64) - expected)
    # landmarks written with 6 decimals; uint8 rounding: at most 1 grey level off
    assert diff.max() <= 1.0, diff.max()
  _, small = builders.load("ijbc", tmp_path, tmp_path / "data", subset=2, image_format="png")
  assert small.num_records == 3 and set(small.record_arrays["template_id"]) == {101, 102}
  np.testing.assert_array_equal(small.pairs["template_a"], [101])
  np.testing.assert_array_equal(small.pairs["template_b"], [102])


def test_ijbc_repeated_template_pairs_are_counted():
  """A pair listed twice (in either order) is counted for the build's warning; distinct pairs
  are not."""
  from exfiqa_jax.data.builders import ijbc
  assert ijbc.count_repeated_pairs(np.array([1, 1, 2, 3, 1]), np.array([2, 3, 1, 4, 2])) == 2
  assert ijbc.count_repeated_pairs(np.array([1, 2]), np.array([2, 3])) == 0
  assert ijbc.count_repeated_pairs(np.array([], int), np.array([], int)) == 0


def test_ijbc_bad_inputs(tmp_path):
  rng = np.random.default_rng(9)
  _ijbc_tree(tmp_path / "a", rng)
  meta = tmp_path / "a" / "meta"
  lines = (meta / "ijbc_face_tid_mid.txt").read_text().splitlines()
  lines[1], lines[2] = lines[2], lines[1]
  (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(lines) + "\n")
  with pytest.raises(builders.DataError, match="disagree at line 2"):
    builders.load("ijbc", tmp_path / "a", tmp_path / "data")
  _ijbc_tree(tmp_path / "b", rng)
  with open(tmp_path / "b" / "meta" / "ijbc_template_pair_label.txt", "a") as f:
    f.write("101 999 0\n")
  with pytest.raises(builders.DataError, match="no image"):
    builders.load("ijbc", tmp_path / "b", tmp_path / "data")
  _ijbc_tree(tmp_path / "c", rng)
  five = tmp_path / "c" / "meta" / "ijbc_name_5pts_score.txt"
  five.write_text(five.read_text().replace(" ", "  ", 1).rsplit(" ", 1)[0] + "\n")
  with pytest.raises(builders.DataError, match="12 columns"):
    builders.load("ijbc", tmp_path / "c", tmp_path / "data")
  _ijbc_tree(tmp_path / "d", rng)
  (tmp_path / "d" / "loose_crop" / "2.png").write_bytes(b"\x89PNG broken")
  with pytest.raises(ImageError, match="2.png"):
    builders.load("ijbc", tmp_path / "d", tmp_path / "data")
  _ijbc_tree(tmp_path / "e", rng)
  (tmp_path / "e" / "meta" / "ijbc_template_pair_label.txt").unlink()
  with pytest.raises(builders.ManualDirError, match="ijbc_template_pair_label.txt"):
    builders.load("ijbc", tmp_path / "e", tmp_path / "data")


# --- CR-FIQA quality_data ------------------------------------------------------------------------
def test_quality_data_layout_channel_order_and_pairs(tmp_path):
  rng = np.random.default_rng(10)
  folder = tmp_path / "CR-FIQA" / "quality_data" / "lfw"
  (folder / "images").mkdir(parents=True)
  raw = []
  for k in range(6):
    raw.append(_encode(_face_like(rng)))
    (folder / "images" / f"{k:05d}.jpg").write_bytes(raw[-1])
  (folder / "image_path_list.txt").write_text(
      "".join(f"quality_data/lfw/images/{k:05d}.jpg\n" for k in range(6)))
  (folder / "pair_list.txt").write_text("00000 00001 00001\n00002 00003 00000\n"
                                        "00004 00005 00001\n")
  source, info = builders.load("quality_data/lfw", tmp_path / "CR-FIQA", tmp_path / "data",
                               decode=True)
  assert info.channel_order == "bgr"
  record = _records_by_name(source)["00004"]
  assert record["path"] == "quality_data/lfw/images/00004.jpg"
  np.testing.assert_array_equal(record["image"], _pil_decode(raw[4])[..., ::-1])
  assert [source[int(k)]["name"] for k in info.pairs["index_b"]] == ["00001", "00003", "00005"]
  np.testing.assert_array_equal(info.pairs["is_genuine"], [True, False, True])
  rgb, _ = builders.load("quality_data", None, tmp_path / "data", dataset="lfw",
                         channel_order="rgb", decode=True)
  np.testing.assert_array_equal(_records_by_name(rgb)["00004"]["image"], _pil_decode(raw[4]))
  # XQLFW flavour: duplicated lines, '.jpg' in pair names; manual_dir = the data set folder.
  xq = tmp_path / "qd" / "XQLFW"
  (xq / "images").mkdir(parents=True)
  for n in ("a_0001", "a_0002", "b_0001"):
    (xq / "images" / f"{n}.jpg").write_bytes(_encode(_face_like(rng)))
  (xq / "image_path_list.txt").write_text("quality_data/XQLFW/images/a_0001.jpg\n"
                                          "quality_data/XQLFW/images/a_0002.jpg\n"
                                          "quality_data/XQLFW/images/a_0001.jpg\n"
                                          "quality_data/XQLFW/images/b_0001.jpg\n")
  (xq / "pair_list.txt").write_text("a_0001.jpg a_0002.jpg 1\na_0001.jpg b_0001.jpg 0\n")
  source, info = builders.load("quality_data", xq, tmp_path / "data", dataset="XQLFW")
  assert len(source) == 3
  assert [source[int(k)]["name"] for k in info.pairs["index_b"]] == ["a_0002", "b_0001"]
  # A pair naming an unknown image; an empty list.
  (xq / "pair_list.txt").write_text("a_0001.jpg zz_0009.jpg 0\n")
  with pytest.raises(builders.DataError, match="zz_0009"):
    builders.load("quality_data", xq, tmp_path / "data", dataset="XQLFW", overwrite=True)
  (xq / "image_path_list.txt").write_text("\n")
  with pytest.raises(builders.DataError, match="no images"):
    builders.load("quality_data", xq, tmp_path / "data", dataset="XQLFW", overwrite=True)


# --- identity folders ----------------------------------------------------------------------------
def test_image_folder_labels_pairs_and_errors(tmp_path):
  rng = np.random.default_rng(11)
  root = tmp_path / "ids"
  for identity, count in (("carol", 2), ("alice", 3), ("bob", 1)):
    (root / identity).mkdir(parents=True)
    for k in range(count):
      (root / identity / f"{k}.jpg").write_bytes(_encode(_face_like(rng)))
  gray = Image.fromarray(_face_like(rng)[..., 0])
  gray.save(root / "bob" / "g.png")
  (root / "pairs.txt").write_text("alice/0 alice/2.jpg 1\nbob/g carol/1 0\n")
  source, info = builders.load("image_folder", root, tmp_path / "data", pair_list="pairs.txt",
                               decode=True)
  assert len(source) == 7
  records = _records_by_name(source)
  assert {n: r["label"] for n, r in records.items()} == {
      "alice/0.jpg": 0, "alice/1.jpg": 0, "alice/2.jpg": 0, "bob/0.jpg": 1, "bob/g.png": 1,
      "carol/0.jpg": 2, "carol/1.jpg": 2}
  assert records["bob/g.png"]["identity"] == "bob"
  np.testing.assert_array_equal(records["bob/g.png"]["image"], np.repeat(
      np.asarray(gray)[..., None], 3, -1))               # grey → RGB, lossless
  np.testing.assert_array_equal(info.record_arrays["label"],
                                [source[k]["label"] for k in range(len(source))])
  assert [(source[int(a)]["name"], source[int(b)]["name"]) for a, b in
          zip(info.pairs["index_a"], info.pairs["index_b"])] == [
              ("alice/0.jpg", "alice/2.jpg"), ("bob/g.png", "carol/1.jpg")]
  (root / "pairs.txt").write_text("alice/0 dave/1 0\n")
  with pytest.raises(builders.DataError, match="dave/1"):
    builders.load("image_folder", root, tmp_path / "data", pair_list="pairs.txt",
                  overwrite=True)
  _, plain = builders.load("image_folder", root, tmp_path / "data")
  assert plain.pairs is None
  empty = tmp_path / "empty"
  (empty / "nobody").mkdir(parents=True)
  with pytest.raises(builders.DataError, match="no images"):
    builders.load("image_folder", empty, tmp_path / "data_empty")
  (empty / "loose.jpg").write_bytes(_encode(_face_like(rng)))
  with pytest.raises(builders.DataError, match="sub-folder"):
    builders.load("image_folder", empty, tmp_path / "data_empty", overwrite=True)


@pytest.mark.skipif(not (hasattr(os, "mkfifo") and os.path.exists("/dev/zero")),
                    reason="needs named pipes and /dev/zero")
def test_image_folder_skips_what_is_not_an_image_and_says_so(tmp_path, special_opens, caplog):
  rng = np.random.default_rng(13)
  faces = {name: _encode(_face_like(rng, 16, 16)) for name in
           ("alice/0.jpg", "alice/1.jpg", "bob/0.jpg")}
  clean, messy = tmp_path / "clean", tmp_path / "messy"
  for root in (clean, messy):
    for name, data in faces.items():
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      (root / name).write_bytes(data)
  junk = b"\x00\x05\x16\x07 AppleDouble"
  for name in ("._root.jpg", "alice/._0.jpg", "__MACOSX/alice/._0.jpg", ".thumbnails/0.jpg",
               "alice/x.heic", "bob/notes.txt"):
    (messy / name).parent.mkdir(parents=True, exist_ok=True)
    (messy / name).write_bytes(junk)
  os.mkfifo(messy / "alice" / "pipe.jpg")
  os.symlink("/dev/zero", messy / "bob" / "zero.png")
  for bad in (b"bob/bad\xff.jpg", b"carol\xfe/0.jpg"):      # names that are not UTF-8
    path = os.fsencode(messy) + b"/" + bad
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(faces["bob/0.jpg"])
  want, want_info = builders.load("image_folder", clean, tmp_path / "data_clean")
  with caplog.at_level("INFO"):
    got, info = builders.load("image_folder", messy, tmp_path / "data_messy")
  assert [(r["name"], r["identity"], r["label"]) for r in got] == [
      (r["name"], r["identity"], r["label"]) for r in want]
  assert info.metadata["identities"] == want_info.metadata["identities"] == ["alice", "bob"]
  lines = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
  assert len(lines) == 1 and "10 entries" in lines[0] and "pipe.jpg" in lines[0]
  assert "carol\\xfe" in lines[0] and "__MACOSX" in lines[0] and ".heic" in lines[0]


def test_image_folder_records_are_upright_by_their_exif_orientation(tmp_path):
  # the one policy (docs/data.md): a stored JPEG keeps its tag and is turned when decoded; a
  # re-encoded one (greyscale → RGB PNG) is turned before it is stored
  rng = np.random.default_rng(14)
  root = tmp_path / "ids"
  expected = {}
  for name, mode, orientation in (("alice/rgb.jpg", "RGB", 6), ("bob/grey.jpg", "L", 8)):
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_face_like(rng, 16, 24)).convert(mode).save(root / name, exif=exif)
    upright = Image.open(root / name).convert("RGB").transpose(
        Image.Transpose.ROTATE_270 if orientation == 6 else Image.Transpose.ROTATE_90)
    expected[name] = np.asarray(upright.resize((112, 112), Image.BILINEAR))
  source, _ = builders.load("image_folder", root, tmp_path / "data", decode=True)
  for record in source:
    np.testing.assert_array_equal(record["image"], expected[record["name"]])


def test_threaded_image_preparation_keeps_order_and_reports_errors():
  from exfiqa_jax.data.builders import base
  rng = np.random.default_rng(12)
  raw = [_encode(_face_like(rng, 16, 16)) for _ in range(23)]
  raw[9] = b"garbage"
  entries = [base.ImageEntry(100 + k, f"im{k}", data) for k, data in enumerate(raw)]
  out = list(base.prepared_images(entries, chunk=4))
  assert [p for p, _, _ in out] == list(range(23))
  assert [e.name for _, e, _ in out] == [f"im{k}" for k in range(23)]
  for k, (_, _, data) in enumerate(out):
    if k == 9:
      assert isinstance(data, ImageError) and "im9" in str(data)
    else:
      assert data == raw[k]


# --- one build per data set at a time (issue 21, item 2) -----------------------------------------
def test_a_second_build_into_the_same_data_dir_waits_and_reuses_the_first(bin_dir, tmp_path,
                                                                          monkeypatch):
  """Job B asks for the same data set while job A's build is live (its `incomplete.*` folder
  exists, A holds the lock): B waits, never removes A's folder as "left by a killed build",
  and reuses A's build instead of building it again."""
  manual, _, _ = bin_dir
  real_side_files, real_sleep = base.Builder._write_side_files, files.time.sleep
  b_waits, outcome, built = threading.Event(), {}, []

  def job_b():
    try:
      outcome["directory"] = builders.build("lfw", manual, tmp_path / "data")
    except BaseException as e:      # noqa: BLE001  reported by the main thread
      outcome["error"] = e

  def side_files_then_b_arrives(self, *args, **kwargs):
    real_side_files(self, *args, **kwargs)
    built.append(os.fspath(self.data_path))       # A's live incomplete.* folder
    thread = threading.Thread(target=job_b)
    thread.start()
    assert b_waits.wait(timeout=20), "job B did not wait for job A's build"
    assert os.path.isdir(built[-1])                # B removed nothing of A's
    outcome["thread"] = thread

  monkeypatch.setattr(base.Builder, "_write_side_files", side_files_then_b_arrives)
  monkeypatch.setattr(files.time, "sleep", lambda s: (b_waits.set(), real_sleep(0.01)))
  directory = builders.build("lfw", manual, tmp_path / "data")      # job A
  outcome["thread"].join(timeout=20)
  assert "error" not in outcome, outcome.get("error")
  assert outcome["directory"] == directory and len(built) == 1      # built once, reused
  assert "incomplete." in os.path.basename(built[0])
  source, info = builders.load("lfw", None, tmp_path / "data")
  assert len(source) == 8 and info.directory == directory
  assert not os.path.exists(os.path.join(os.path.dirname(directory), files.LOCK_NAME))
