"""The IJB-C-shaped release of bench/ijbc_scale.py at a tiny size, through the same code path:
exfiqa_jax/testing/ijbc_release.py writes it, the IJB-C builder aligns and reads it."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from exfiqa_jax.data import builders
from exfiqa_jax.metrics import comparisons
from exfiqa_jax.testing import ijbc_release, subproc

FRACTION = 1 / 4096          # 115 face lines, 6 templates in 2 subjects, 3,823 pairs


def test_structure_scales_and_is_deterministic():
  small, again = ijbc_release.structure(FRACTION), ijbc_release.structure(FRACTION)
  for field in ("template_id", "media_id", "pair_a", "pair_b", "label"):
    np.testing.assert_array_equal(getattr(small, field), getattr(again, field))
  c = ijbc_release.counts(1 / 64)
  assert (c["images"], c["templates"], c["pairs"]) == (7334, 361, 244664)
  assert ijbc_release.counts(1.0) == ijbc_release.FULL


def test_release_goes_through_the_builder(tmp_path):
  release, data_dir = tmp_path / "IJBC", tmp_path / "tfds"
  counts = ijbc_release.write_release(release, FRACTION)
  st = ijbc_release.structure(FRACTION)
  # The real media structure: several media in a template, media ids shared across templates.
  groups = {(t, m) for t, m in zip(st.template_id.tolist(), st.media_id.tolist())}
  per_template = {t: sum(1 for g in groups if g[0] == t) for t in set(st.template_id.tolist())}
  assert max(per_template.values()) >= 3
  owners = {}
  for t, m in groups:
    owners.setdefault(m, set()).add(t)
  assert any(len(ts) > 1 for ts in owners.values())
  genuine = st.label.astype(bool)
  assert 0 < genuine.sum() < len(genuine)

  source, info = builders.load("ijbc", str(release), str(data_dir), decode=True)
  assert info.num_records == counts["images"] == len(st.template_id)
  assert info.pair_kind == "template"
  np.testing.assert_array_equal(info.record_arrays["template_id"], st.template_id)
  np.testing.assert_array_equal(info.record_arrays["media_id"], st.media_id)
  np.testing.assert_array_equal(info.pairs["template_a"], st.pair_a)
  np.testing.assert_array_equal(info.pairs["template_b"], st.pair_b)
  np.testing.assert_array_equal(info.pairs["is_genuine"], genuine)
  index = comparisons.TemplateIndex.build(info.record_arrays["template_id"],
                                          info.record_arrays["media_id"])
  assert index.group_template.size == counts["media"] == len(groups)
  assert index.pair_rows(np.stack([st.pair_a, st.pair_b], 1)).shape == (counts["pairs"], 2)
  # The landmarks say where the face is: the aligned crop is the subject's pattern again.
  bases = ijbc_release.subject_bases(64, 0)
  for k in (0, len(source) // 2, len(source) - 1):
    aligned = source[k]["image"].astype(np.float32)
    own = bases[st.subject[k] % 64]
    other = bases[(st.subject[k] + 1) % 64]
    corr = [np.corrcoef(aligned.ravel(), b.ravel())[0, 1] for b in (own, other)]
    assert corr[0] > 0.8 and corr[0] > corr[1] + 0.3, (k, corr)


def test_killed_build_restarts_and_removes_what_it_left(tmp_path):
  """A build SIGKILLed half-way (no cleanup) leaves TFDS's incomplete.* folder; the next build
  removes it and writes the same records as an uninterrupted build."""
  release = tmp_path / "IJBC"
  ijbc_release.write_release(release, FRACTION)
  killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
  code = textwrap.dedent(f"""
      import os
      from exfiqa_jax.data import builders
      from exfiqa_jax.data.builders import base
      prepare, calls = base.prepare_image, [0]
      def dying(entry):
        calls[0] += 1
        if calls[0] > 60:            # half-way through the 115 crops
          os._exit(137)
        return prepare(entry)
      base.prepare_image = dying
      builders.build("ijbc", {str(release)!r}, {str(killed_dir)!r})
      """)
  proc = subprocess.run([sys.executable, "-c", code], cwd=subproc.ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 137, proc.stderr[-3000:]
  leftovers = glob.glob(str(killed_dir / "ijbc" / "*" / "incomplete.*"))
  assert len(leftovers) == 1

  directory = builders.build("ijbc", str(release), str(killed_dir))
  assert not glob.glob(str(killed_dir / "ijbc" / "*" / "incomplete.*"))
  builders.build("ijbc", str(release), str(clean_dir))
  (killed, info), (clean, _) = (builders.load("ijbc", str(release), str(d))
                                for d in (killed_dir, clean_dir))
  assert os.path.isdir(directory) and len(killed) == len(clean) == info.num_records == 115
  for k in range(len(clean)):
    assert killed[k]["image"] == clean[k]["image"] and killed[k]["name"] == clean[k]["name"]


def test_a_build_over_tfds_memory_buffer_needs_no_tensorflow(tmp_path):
  """TFDS's writer spills past 1 GB through tf.io.gfile (TensorFlow is not installed); with its
  buffer limit at 0 every example would take that path. Builds go through spill.SpillStore:
  no TensorFlow, the same records as a build of the same release in this process."""
  release = tmp_path / "IJBC"
  ijbc_release.write_release(release, FRACTION)
  code = textwrap.dedent(f"""
      import sys
      from tensorflow_datasets.core import shuffle
      shuffle.MAX_MEM_BUFFER_SIZE = 0
      from exfiqa_jax.data import builders
      source, info = builders.load("ijbc", {str(release)!r}, {str(tmp_path / "spilled")!r})
      assert "tensorflow" not in sys.modules, "TensorFlow was imported"
      print(len(source))
      """)
  proc = subprocess.run([sys.executable, "-c", code], cwd=subproc.ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split()[-1] == "115"
  (spilled, _), (here, _) = (builders.load("ijbc", str(release), str(tmp_path / d))
                             for d in ("spilled", "here"))
  assert [spilled[k]["image"] for k in range(115)] == [here[k]["image"] for k in range(115)]
  assert not glob.glob(str(tmp_path / "*" / "ijbc" / "*" / "*" / "spill_*.tmp"))


def test_spill_store_orders_keys_and_rejects_duplicates(tmp_path):
  from tensorflow_datasets.core import shuffle
  from exfiqa_jax.data.builders import spill
  rng = np.random.default_rng(0)
  keys = rng.permutation(500).tolist()
  store = spill.SpillStore(tmp_path)
  for k in keys:
    store.add(k, f"record {k}".encode() * (k % 7 + 1))
  assert store.num_examples == 500 and store.size == sum(
      len(f"record {k}".encode()) * (k % 7 + 1) for k in keys)
  assert list(store) == [(k, f"record {k}".encode() * (k % 7 + 1)) for k in range(500)]
  assert not list(tmp_path.iterdir())                    # the spill file is gone
  twice = spill.SpillStore(tmp_path)
  for k in (3, 1, 3):
    twice.add(k, b"x%d" % k)
  with pytest.raises(shuffle.DuplicatedKeysError):
    list(twice)
  kept = spill.SpillStore(tmp_path, ignore_duplicates=True)
  for k in (2, 2, 5):
    kept.add(k, b"y")
  assert [k for k, _ in kept] == [2, 5]
  with pytest.raises(TypeError, match="integer example keys"):
    spill.SpillStore(tmp_path).add("a", b"z")
