"""Atomic writes: a file exists complete or not at all; no temporary file is left behind."""
from __future__ import annotations

import os

import numpy as np
import pytest

from exfiqa_jax import files


def test_writers_round_trip_and_leave_no_temporaries(tmp_path):
  files.write_text(tmp_path / "a" / "t.txt", "héllo\n")
  files.write_json(tmp_path / "j.json", {"x": np.float32(1.5), "y": np.arange(3)})
  files.save_npz(tmp_path / "z.npz", a=np.arange(4))
  files.save_npy(tmp_path / "y.npy", np.ones(2))
  assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
  assert files.read_json(tmp_path / "j.json") == {"x": 1.5, "y": [0, 1, 2]}
  assert np.load(tmp_path / "z.npz")["a"].tolist() == [0, 1, 2, 3]
  assert np.load(tmp_path / "y.npy").tolist() == [1.0, 1.0]
  assert sorted(os.listdir(tmp_path)) == ["a", "j.json", "y.npy", "z.npz"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "keep.txt"
  files.write_text(path, "old")
  with pytest.raises(RuntimeError):
    with files.atomic_path(path) as tmp:
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("disk full")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]


def test_slug():
  assert files.slug("precomputed:a/b c.npy") == "precomputed_a_b_c.npy"
  assert files.slug("///") == "x"
