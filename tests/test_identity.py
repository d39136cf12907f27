"""identity.py: the one canonical JSON form, plain (stamps, configs) and exact (stage
fingerprints: every cached stage of an earlier run must stay valid), and file identities that
stat before they open: a named pipe or a device is named, never read."""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from exfiqa_jax import files, identity
from exfiqa_jax.evaluation import stages


def _deps():
  cfg = ml_collections.ConfigDict(dict(fmrs=(1e-2, 1e-3), limit=0.3, name="x"))
  return {"config": cfg, "alpha": 0.05, "f32": np.float32(0.1), "seed": np.int64(3),
          "flag": True, "labels": np.arange(6, dtype=np.int32).reshape(2, 3), "none": None,
          "upstream": stages.Stage("quality/mini/q", "ab" * 32, {}, False)}


def test_exact_form_keeps_stage_fingerprints():
  # Pinned: the fingerprint the stage cache computed for these deps before canonical JSON had
  # one owner (evaluation/stages.py's own copy); a change here invalidates every cached stage.
  assert stages.fingerprint(_deps()) == (
      "8967fdc7239ab97b82690cdbe0ca610107dbfe3fecc859d4e22b88d8022260fd")


def test_exact_form():
  out = identity.canonical(_deps(), exact=True)
  assert out["alpha"] == "0.05" and out["config"]["limit"] == "0.3"     # floats as repr
  assert out["f32"] == float(np.float32(0.1)) and out["seed"] == 3      # numpy scalars: numbers
  assert out["labels"]["shape"] == [2, 3] and out["labels"]["dtype"] == "int32"
  assert out["upstream"] == {"stage": "quality/mini/q", "fingerprint": "ab" * 32}
  assert list(out) == sorted(out)
  json.dumps(out)


def test_plain_form():
  cfg = ml_collections.ConfigDict(dict(b=(1, 2.5), a=np.float64(0.25), c=np.asarray(3)))
  assert identity.canonical(cfg) == {"a": 0.25, "b": [1, 2.5], "c": 3}
  assert identity.canonical({2: "x", 1: (np.int32(4),)}) == {"1": [4], "2": "x"}
  assert identity.changes({"a": 1.0}, {"a": 2.0}) == ["a: 1.0 → 2.0"]


# --------------------------------------------------------------------------- special files
needs_fifo = pytest.mark.skipif(not (hasattr(os, "mkfifo") and os.path.exists("/dev/zero")),
                                reason="needs named pipes and /dev/zero")


def _specials(folder):
  """A named pipe and a link to a device, both named like images, beside one regular file."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "a.png").write_bytes(b"abc")
  os.mkfifo(folder / "pipe.jpg")
  os.symlink("/dev/zero", folder / "zero.png")
  return folder / "pipe.jpg", folder / "zero.png"


@needs_fifo
def test_a_special_file_is_refused_by_name_never_opened(tmp_path, special_opens):
  pipe, device = _specials(tmp_path)
  for path, kind in ((pipe, "named pipe"), (device, "character device")):
    with pytest.raises(identity.SpecialFileError, match=f"{path.name}.*{kind}"):
      identity.file_identity(path)
    with pytest.raises(identity.SpecialFileError, match=kind):
      identity.sha256_file(path)
    with pytest.raises(identity.SpecialFileError, match=kind):
      identity.open_regular(path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    identity.file_identity(tmp_path / "missing.png")
  with identity.open_regular(tmp_path / "a.png") as f:
    assert f.read() == b"abc"


@needs_fifo
def test_special_entries_of_folders_and_lists_are_recorded_by_kind(tmp_path, special_opens):
  pipe, device = _specials(tmp_path / "f")
  (tmp_path / "f" / "dir.jpg").mkdir()
  folder = identity.file_identity(tmp_path / "f")     # a checkpoint / manual_dir walk
  assert folder["files"] == 3 and folder["size"] == 3
  listed = identity.files_identity([tmp_path / "f" / "a.png", pipe, device,
                                    tmp_path / "f" / "dir.jpg", tmp_path / "gone.png"])
  assert (listed["count"], listed["missing"], listed["not_regular"]) == (5, 1, 3)
  # the kind is part of the identity: a pipe replaced by a file of the same name is a change
  os.remove(pipe)
  pipe.write_bytes(b"")
  assert identity.file_identity(tmp_path / "f")["sha256"] != folder["sha256"]
  again = identity.files_identity([tmp_path / "f" / "a.png", pipe, device,
                                   tmp_path / "f" / "dir.jpg", tmp_path / "gone.png"])
  assert again["sha256"] != listed["sha256"] and "not_regular" in again


def test_identities_of_regular_files_are_unchanged(tmp_path):
  # Pinned: the digest before special files were recorded by kind (stamps stay valid).
  (tmp_path / "f" / "sub").mkdir(parents=True)
  (tmp_path / "f" / "a.png").write_bytes(b"abc")
  (tmp_path / "f" / "sub" / "b.jpg").write_bytes(b"defg")
  assert identity.file_identity(tmp_path / "f")["sha256"] == (
      "84a8f4860660ce1deb3d0d411e46f55f806a6dedc20546df4ed75840c4f2ce65")
  assert "not_regular" not in identity.files_identity([tmp_path / "f" / "a.png"])
  assert identity.names_identity(["a.png", "sub/b.jpg", "é"])["sha256"] == (
      "4e943c7d0e581bb435e285a229c9395a9ac7e7afe04e7b43541f5a5c45712b2f")


def test_names_that_are_not_utf8_have_an_identity():
  # os.listdir gives undecodable bytes as surrogates; the digest is of the bytes on disk
  name = os.fsdecode(b"bad\xff.png")
  assert identity.names_identity([name]) != identity.names_identity(["bad.png"])
  assert identity.names_identity([name]) == identity.names_identity([name])


# Completion stamps describe what their own run wrote (issue 21, item 2).
def _run(out, ident, rows, during=lambda: None):
  """A job's writing end: its output, then (after `during`) the stamp LAST."""
  written = {out / "scores.csv": files.write_text(out / "scores.csv", rows)}
  during()
  identity.write_stamp(out / "stamp.json", ident, written)


def test_a_stamp_does_not_vouch_for_another_runs_files(tmp_path, caplog):
  """Run A writes its rows, run B (other images, same length, same mtime: only the inode
  tells) writes its own in between, A writes its stamp: the stamp records A's file, so a rerun
  of A recomputes instead of returning B's rows as "already complete"."""
  a, b = {"images": "A"}, {"images": "B"}

  def run_b():
    mtime = os.stat(tmp_path / "scores.csv").st_mtime_ns        # A's file, still there
    _run(tmp_path, b, "rows B\n")
    os.utime(tmp_path / "scores.csv", ns=(mtime, mtime))

  _run(tmp_path, a, "rows A\n", during=run_b)
  assert "replaced by another job" in caplog.text
  done, why = identity.check_stamp(tmp_path / "stamp.json", a)
  assert not done and why == "scores.csv was replaced after the run that wrote it"
  _run(tmp_path, a, "rows A\n")                         # A alone: complete
  assert identity.check_stamp(tmp_path / "stamp.json", a) == (True, "complete")


def test_stamps_written_before_inodes_were_recorded_stay_valid(tmp_path):
  files.write_text(tmp_path / "scores.csv", "rows\n")
  st = os.stat(tmp_path / "scores.csv")
  files.write_json(tmp_path / "stamp.json", {
      "stamp_format": identity.STAMP_FORMAT, "identity": {"x": 1},
      "outputs": {"scores.csv": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}}})
  assert identity.check_stamp(tmp_path / "stamp.json", {"x": 1}) == (True, "complete")
