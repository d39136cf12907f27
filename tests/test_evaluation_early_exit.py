"""The early-exit study's benchmark splits (exfiqa_jax/evaluation/early_exit.py); the study itself
runs end to end in tests/test_tasks_early_exit.py."""
from __future__ import annotations

import numpy as np

from exfiqa_jax.evaluation import benchmarks
from exfiqa_jax.evaluation import early_exit as study


def test_split_without_labels_keeps_connected_pairs_together():
  rng = np.random.default_rng(0)
  n = 40                                      # .bin-style: pair i = images 2i, 2i+1
  pairs = np.stack([np.arange(0, n, 2), np.arange(1, n, 2)], 1)
  gen = np.arange(n // 2) % 2 == 0
  images = rng.integers(0, 255, (n, 112, 112, 3), np.uint8)
  bench = benchmarks.array_benchmark("mini", images, [f"{i}.png" for i in range(n)], pairs, gen)
  cal, ev, how = study.split_benchmark(bench, 0.5, seed=1)
  assert how == "connected pairs"
  assert len(cal.is_genuine) + len(ev.is_genuine) == len(pairs)     # no comparison lost
  assert cal.num_images + ev.num_images == n
  a, _ = cal.read(np.arange(cal.num_images))
  b, _ = ev.read(np.arange(ev.num_images))
  assert not (set(map(bytes, a)) & set(map(bytes, b)))               # disjoint images


def test_split_with_labels_is_identity_disjoint():
  rng = np.random.default_rng(1)
  n = 60
  ids = np.repeat(np.arange(12), 5)
  pairs = rng.integers(0, n, (300, 2))
  gen = ids[pairs[:, 0]] == ids[pairs[:, 1]]
  images = np.zeros((n, 112, 112, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(n)
  bench = benchmarks.array_benchmark("mini", images, [f"{i}.png" for i in range(n)], pairs, gen,
                                     extra={"identity": ids})
  cal, ev, how = study.split_benchmark(bench, 0.5, seed=0)
  assert how == "identity" and cal.name == "mini_calibration" and ev.name == "mini_evaluation"
  assert set(cal.extra["identity"]).isdisjoint(set(ev.extra["identity"]))
  assert cal.num_images >= n // 2 and cal.num_images + ev.num_images == n
  a, _ = cal.read(np.arange(cal.num_images))
  np.testing.assert_array_equal(a[:, 0, 0, 0], cal.identity["rows"])   # the right images


def test_a_split_reads_its_names_without_decoding():
  """A split of a benchmark that can read names without decoding (the TFDS sets) does too: the
  scoring stages and the score-file matching ask for the names of every row."""
  n = 40
  pairs = np.stack([np.arange(0, n, 2), np.arange(1, n, 2)], 1)
  bench = benchmarks.array_benchmark("mini", np.zeros((n, 112, 112, 3), np.uint8),
                                     [f"{i}.png" for i in range(n)], pairs,
                                     np.arange(n // 2) % 2 == 0)

  def decoded(rows):
    raise AssertionError("names were read by decoding the images")
  names = [f"{i}.png" for i in range(n)]
  bench.read_names, bench.read = (lambda rows: [names[r] for r in rows]), decoded
  cal, ev, _ = study.split_benchmark(bench, 0.5, seed=1)
  got = list(benchmarks.image_names(ev, 0, ev.num_images))
  assert got == [names[r] for r in ev.identity["rows"]]
