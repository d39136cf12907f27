"""Identity-disjoint splits (exfiqa_jax/calibrate/splits.py): the split by images or by groups,
the cross-validation folds, the groups of a benchmark without labels (union-find)."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.calibrate import splits


def test_split_by_group_count():
  groups = np.repeat(np.arange(40), 3)
  calib = splits.split_groups(groups, 0.25, seed=1, count="groups", stream=None)
  held = ~calib
  assert not np.any(calib & held) and np.all(calib | held)
  assert set(groups[calib]).isdisjoint(set(groups[held]))
  assert calib.sum() == 30
  again = splits.split_groups(groups, 0.25, seed=1, count="groups", stream=None)
  np.testing.assert_array_equal(calib, again)
  with pytest.raises(ValueError, match="two groups"):
    splits.split_groups(np.zeros(5), 0.5)
  with pytest.raises(ValueError, match="fraction"):
    splits.split_groups(groups, 1.0)


def test_split_by_images_fills_the_fraction_with_whole_groups():
  rng = np.random.default_rng(0)
  groups = rng.integers(0, 50, 1000)
  for seed in range(3):
    first = splits.split_groups(groups, 0.3, seed)
    assert set(groups[first]).isdisjoint(set(groups[~first]))
    sizes = np.bincount(groups, minlength=50)
    assert 0.3 * 1000 <= first.sum() < 0.3 * 1000 + sizes.max()   # the crossing group is in
  assert not np.array_equal(splits.split_groups(groups, 0.3, 0),
                            splits.split_groups(groups, 0.3, 1))


def test_folds_keep_groups_whole():
  groups = np.repeat(np.arange(12), 4)
  fold, k = splits.group_folds(groups, 5, seed=2)
  assert k == 5 and set(fold) == set(range(5))
  for g in range(12):
    assert len(set(fold[groups == g])) == 1
  assert splits.group_folds(np.arange(3), 5)[1] == 3            # at most one fold per group
  assert splits.group_folds(np.zeros(4), 5)[1] == 2             # at least two


def test_groups_without_labels():
  pairs = np.array([[0, 1], [1, 2], [4, 5], [7, 6]])
  np.testing.assert_array_equal(splits.components(8, pairs), [0, 0, 0, 3, 4, 4, 6, 6])
  groups, how = splits.image_groups(8, pairs)
  assert how == "connected pairs" and groups.tolist() == [0, 0, 0, 3, 4, 4, 6, 6]
  groups, how = splits.image_groups(8, np.array([[0, 1], [1, 2], [2, 3], [3, 4]]))
  assert how == "image" and groups.tolist() == list(range(8))    # one giant component
  groups, how = splits.image_groups(3, pairs[:1], identity=["a", "b", "a"])
  assert how == "identity" and groups.tolist() == ["a", "b", "a"]
