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
