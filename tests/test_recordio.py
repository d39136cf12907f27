"""Tests for exfiqa_jax/data/recordio.py and the recordio_faces builder: a RecordIO folder written
here by a packer made from the format (dmlc framing, IRHeader, insightface header record) reads
back image for image and label for label, directly and through TFDS; a wrong .idx is refused."""
from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

from exfiqa_jax.data import recordio

MAGIC_WORD = struct.pack("<I", 0xCED7230A)


# ------------------------------------------------ a packer written from the format, not the module
def frame(data: bytes) -> bytes:
  """dmlc RecordIOWriter::WriteRecord: the data is cut at every 4-byte aligned magic word (the
  word itself dropped); parts are [magic][cflag << 29 | length][bytes], padded to 4 bytes."""
  out, start = [], 0
  for i in range(0, len(data) // 4 * 4, 4):
    if data[i:i + 4] == MAGIC_WORD:
      out.append(MAGIC_WORD + struct.pack("<I", (1 if start == 0 else 2) << 29 | (i - start))
                 + data[start:i])
      start = i + 4
  out.append(MAGIC_WORD + struct.pack("<I", (3 if start else 0) << 29 | (len(data) - start))
             + data[start:])
  body = b"".join(out)
  return body + b"\0" * (-len(data) % 4)


def ir_pack(label, payload: bytes, id_: int, id2: int = 0) -> bytes:
  """mxnet.recordio.pack: IRHeader <IfQQ; an array label goes after it with flag = its size."""
  if np.ndim(label) == 0:
    return struct.pack("<IfQQ", 0, float(label), id_, id2) + payload
  label = np.asarray(label, "<f4")
  return struct.pack("<IfQQ", label.size, 0.0, id_, id2) + label.tobytes() + payload


def jpeg(seed: int) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def write_faces(root, labels, classes: int, *, header: bool = True, array_labels=(),
                magic_in=(), magic_in_header=()) -> list[bytes]:
  """An insightface folder: record 0 (label [N, N + ids]), images 1..N-1, identity records
  (label [start, end)); returns the JPEGs. Images in `magic_in` carry the magic word after
  their JPEG end (aligned: a 3-part record); those in `magic_in_header` carry it as their id."""
  os.makedirs(root, exist_ok=True)
  images, records = [], {}
  n = len(labels) + 1
  for k, label in enumerate(labels):
    data = jpeg(k)
    head = 24 + (8 if k in array_labels else 0)
    if k in magic_in:
      data += b"\0" * (-(head + len(data)) % 4) + MAGIC_WORD + b"tail" + MAGIC_WORD + b"e"
    images.append(data)
    lab = [label, 7.0] if k in array_labels else label
    records[k + 1] = ir_pack(lab, data, 0xCED7230A if k in magic_in_header else k + 1)
  if header:
    records[0] = ir_pack([n, n + classes], b"", 0)
    for c in range(classes):
      members = [k + 1 for k, l in enumerate(labels) if l == c]
      records[n + c] = ir_pack([min(members), max(members) + 1], b"", n + c)
  offset, index = 0, []
  with open(os.path.join(root, "train.rec"), "wb") as f:
    for key in sorted(records):
      blob = frame(records[key])
      index.append(f"{key}\t{offset}\n")
      f.write(blob)
      offset += len(blob)
  with open(os.path.join(root, "train.idx"), "w") as f:
    f.write("".join(index))
  with open(os.path.join(root, "property"), "w") as f:
    f.write(f"{classes},112,112")
  return images


LABELS = [0, 0, 1, 2, 1, 2, 0, 1]


def test_packer_splits_where_the_magic_word_is():
  """The test's own packer: a payload with two aligned magic words becomes 3 parts (1, 2, 3)."""
  blob = frame(b"abcd" + MAGIC_WORD + b"efgh" + MAGIC_WORD + b"xy")
  words = struct.unpack("<8I", blob[:32])
  assert words[0] == 0xCED7230A and words[1] == (1 << 29 | 4)
  assert len(blob) % 4 == 0 and blob.count(MAGIC_WORD) == 3


def test_records_read_back_image_for_image(tmp_path):
  """Header record, float and array labels, 3-part records and a split header all read back:
  the stored JPEG bytes, the decoded pixels and every label."""
  root = str(tmp_path / "faces_emore")
  images = write_faces(root, LABELS, 3, array_labels=(2,), magic_in=(1, 5), magic_in_header=(4,))
  faces = recordio.FaceRecords(root)
  assert len(faces) == len(LABELS) and faces.num_classes == 3
  np.testing.assert_array_equal(faces.keys, np.arange(1, len(LABELS) + 1))
  np.testing.assert_array_equal(faces.labels, LABELS)
  for k, data in enumerate(images):
    record = faces.record(k)
    assert record.image == data and record.label == LABELS[k], k
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(faces.image(k)))),
                                  np.asarray(Image.open(io.BytesIO(data))))
  assert faces.record(2).labels == (1.0, 7.0) and faces.record(4).id == 0xCED7230A
  assert MAGIC_WORD in faces.image(1)            # the cut words are put back
  assert recordio.verification_bins(root) == []


def test_without_header_record_every_record_is_an_image(tmp_path):
  root = str(tmp_path / "plain")
  write_faces(root, [1, 0, 1], 2, header=False)
  os.remove(os.path.join(root, "property"))
  faces = recordio.FaceRecords(root)
  np.testing.assert_array_equal(faces.keys, [1, 2, 3])
  np.testing.assert_array_equal(faces.labels, [1, 0, 1])
  assert faces.num_classes == 2                  # no property: the largest label + 1


def test_an_index_of_another_rec_is_refused(tmp_path):
  """An .idx that disagrees with the .rec names both files and the flag, and says what is wrong."""
  root = str(tmp_path / "bad")
  write_faces(root, LABELS, 3)
  idx = os.path.join(root, "train.idx")
  lines = open(idx).read().splitlines()
  key, offset = lines[3].split("\t")
  lines[3] = f"{key}\t{int(offset) + 8}"          # inside the record, aligned
  with open(idx, "w") as f:
    f.write("\n".join(lines) + "\n")
  faces = recordio.FaceRecords(root)
  with pytest.raises(recordio.RecordIOError, match=r"train\.idx says record 3 starts at byte "
                     r"\d+ of .*train\.rec.*not the RecordIO magic.*--config\.data\.root"):
    faces.image(2)
  with pytest.raises(recordio.RecordIOError, match="does not belong to this .rec"):
    recordio.FaceRecords(root).labels
  lines[3] = f"{key}\t{os.path.getsize(os.path.join(root, 'train.rec')) + 4}"
  with open(idx, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(recordio.RecordIOError, match=r"not a 4-byte aligned position inside"):
    recordio.FaceRecords(root)
  lines[2] += " 5"                               # even field count, odd fields on two lines
  lines[3] = f"{key} {offset} 7"
  with open(idx, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(recordio.RecordIOError, match=r"train\.idx, line 3: .* not a RecordIO index"):
    recordio.FaceRecords(root)


def test_missing_files_and_bad_property_name_the_flag(tmp_path):
  with pytest.raises(FileNotFoundError, match="--config.data.root"):
    recordio.FaceRecords(str(tmp_path))
  root = str(tmp_path / "p")
  write_faces(root, [0, 1], 2)
  with open(os.path.join(root, "property"), "w") as f:
    f.write("1,112,112")
  with pytest.raises(recordio.RecordIOError, match="says 1 identities"):
    recordio.FaceRecords(root).labels


def test_builder_writes_the_same_records(tmp_path):
  """The recordio_faces builder: array_record records hold the .rec's JPEGs, keys and labels."""
  from exfiqa_jax.data import builders
  root = str(tmp_path / "faces_emore")
  images = write_faces(root, LABELS, 3, magic_in=(1,), magic_in_header=(4,))
  source, info = builders.load("recordio_faces", manual_dir=root,
                               data_dir=str(tmp_path / "tfds"))
  assert len(source) == len(LABELS) and info.metadata["num_identities"] == 3
  np.testing.assert_array_equal(info.record_arrays["label"], LABELS)
  np.testing.assert_array_equal(info.image_ids, np.arange(1, len(LABELS) + 1))
  for k in range(len(LABELS)):
    record = source[k]
    assert record["image"] == images[k] and record["label"] == LABELS[k]
    assert record["name"] == str(k + 1)
