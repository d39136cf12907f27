"""identity.py: the one canonical JSON form, plain (stamps, configs) and exact (stage
fingerprints: every cached stage of an earlier run must stay valid)."""
from __future__ import annotations

import json

import ml_collections
import numpy as np

from exfiqa_jax import identity
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
