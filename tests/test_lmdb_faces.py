"""Tests for exfiqa_jax/data/lmdb_faces.py: an LMDB written here in the official ViT-FIQA layout
(lmdb_dataset.py: single file, b"<i>" → WebP, pickled __keys__/__labels__/__len__) reads back
image for image and label for label; a pickle with a global in it is refused."""
from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

lmdb = pytest.importorskip("lmdb")

from exfiqa_jax.data import lmdb_faces  # noqa: E402


def webp(seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "webp", lossless=False, quality=100)
  return buf.getvalue()


def write_official(path: str, labels, *, keys=None, extra=None, drop=()) -> list[bytes]:
  """As LmdbDataset._create_database_from_image_folder: subdir=False, keys str(i) ascii."""
  images = [webp(k) for k in range(len(labels))]
  keys = keys or [str(k).encode("ascii") for k in range(len(labels))]
  env = lmdb.open(path, subdir=False, map_size=1 << 24)
  with env.begin(write=True) as txn:
    for key, data in zip(keys, images):
      if key not in drop:
        txn.put(key, data)
    txn.put(b"__keys__", pickle.dumps(keys))
    txn.put(b"__labels__", pickle.dumps([int(l) for l in labels]))
    txn.put(b"__len__", pickle.dumps(len(keys)))
    for k, v in (extra or {}).items():
      txn.put(k, v)
  env.close()
  return images


def test_official_layout_reads_back(tmp_path):
  path = str(tmp_path / "ms1mv2.lmdb")
  labels = [0, 0, 2, 1, 2, 1]
  images = write_official(path, labels)
  faces = lmdb_faces.LmdbFaces(path)
  assert len(faces) == 6 and faces.num_classes == 3 and faces.keys is None
  np.testing.assert_array_equal(faces.labels, labels)
  for k, data in enumerate(images):
    assert faces.image(k) == data
  os.chmod(path, 0o444)                          # read-only file, no lock file needed
  again = lmdb_faces.LmdbFaces(path)
  assert again.image(5) == images[5]


def test_other_keys_and_a_folder(tmp_path):
  """Keys other than "0".."n-1" are followed; an LMDB folder (subdir=True) opens too."""
  os.makedirs(tmp_path / "db")
  env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
  with env.begin(write=True) as txn:
    txn.put(b"a/1", b"x")
    txn.put(b"__keys__", pickle.dumps([b"a/1"], protocol=2))
    txn.put(b"__labels__", pickle.dumps([4], protocol=2))
    txn.put(b"__len__", pickle.dumps(1, protocol=2))
  env.close()
  faces = lmdb_faces.LmdbFaces(str(tmp_path / "db"))
  assert faces.keys == [b"a/1"] and faces.image(0) == b"x" and faces.num_classes == 5


class Evil:
  def __reduce__(self):
    return (os.system, ("echo pwned",))


@pytest.mark.parametrize("field, value, match", [
    (b"__labels__", pickle.dumps([0, Evil()]), "refused to load global"),
    (b"__labels__", pickle.dumps(np.arange(2)), "refused to load global"),
    (b"__labels__", pickle.dumps([0]), r"__labels__ holds 1 entries but __len__ says 2"),
    (b"__labels__", pickle.dumps([0, -1]), "not identity indices"),
    (b"__len__", b"not a pickle", "not a readable pickle"),
], ids=["code", "numpy", "short", "negative", "garbage"])
def test_bad_index_is_refused(tmp_path, field, value, match):
  path = str(tmp_path / "bad.lmdb")
  write_official(path, [0, 1], extra={field: value})
  with pytest.raises(lmdb_faces.LmdbError, match=match):
    lmdb_faces.LmdbFaces(path)


def test_missing_index_and_key(tmp_path):
  path = str(tmp_path / "half.lmdb")
  env = lmdb.open(path, subdir=False, map_size=1 << 22)
  with env.begin(write=True) as txn:
    txn.put(b"0", webp(0))
  env.close()
  with pytest.raises(lmdb_faces.LmdbError, match="has no __len__, __keys__, __labels__"):
    lmdb_faces.LmdbFaces(path)
  path = str(tmp_path / "gap.lmdb")
  write_official(path, [0, 1], keys=[b"0", b"9"], drop=[b"9"])
  faces = lmdb_faces.LmdbFaces(path)
  assert faces.image(0)
  with pytest.raises(lmdb_faces.LmdbError, match=r"lists b'9' \(image 1\) but"):
    faces.image(1)
  with pytest.raises(FileNotFoundError, match="--config.data.root"):
    lmdb_faces.LmdbFaces(str(tmp_path / "none.lmdb"))
