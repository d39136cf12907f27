"""Identity-disjoint splits: the one owner of "no identity on both sides" (docs/evaluation.md,
"Early exits and thresholds").

Whatever is fitted on data (thresholds, a cascade, fusion weights) must be reported on data it
was not fitted on, and images of one identity are not independent: a split or a fold that puts
one identity on both sides reports optimistic numbers. Everything here assigns whole groups
(identities, templates, or connected components of the pair graph when a benchmark has no
labels) to one side, in a seeded random order of the groups:
  * `split_groups`: a calibration / evaluation split by a fraction of the images (benchmarks)
    or of the groups;
  * `group_folds`: K cross-validation folds (robust_cascade);
  * `image_groups`: the groups of a benchmark's images: its identity labels, else the connected
    components of its pair graph (`components`, union-find), else (one component holding most
    images) every image alone.
Plain NumPy.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SPLIT_STREAM = 0x5B17    # the random stream of a benchmark's calibration / evaluation split
FOLD_STREAM = 0xC5F      # the random stream of cross-validation folds
COUNTS = ("images", "groups")


def shuffled_groups(groups: np.ndarray, seed: int, stream: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(inverse [N]: each item's group index into the sorted distinct groups, order [G]: a seeded
  permutation of the group indices). `stream` draws from [seed, stream] instead of seed, so
  that the splits and the folds of one seed are independent."""
  uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
  rng = np.random.default_rng(int(seed) if stream is None else [int(seed), int(stream)])
  return inverse.reshape(-1), rng.permutation(uniq.size)


def split_groups(groups: np.ndarray, fraction: float, seed: int = 0, *, count: str = "images",
                 stream: int | None = SPLIT_STREAM) -> np.ndarray:
  """bool [N]: True for the items of the first part (calibration), False for the rest; no group
  on both sides. The groups are taken in a seeded random order until the first part holds
  `fraction` of the images (count="images": the group crossing the mark is included) or
  round(fraction·G) of the G groups (count="groups"); at least one group either way."""
  if count not in COUNTS:
    raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
  if not 0 < fraction < 1:
    raise ValueError(f"the split fraction must be in (0, 1), got {fraction}")
  inverse, order = shuffled_groups(groups, seed, stream)
  if order.size < 2:
    raise ValueError("need at least two groups to split calibration from evaluation data")
  if count == "groups":
    take = max(1, int(round(fraction * order.size)))
  else:
    sizes = np.bincount(inverse)[order]
    take = max(1, int(np.searchsorted(np.cumsum(sizes), fraction * inverse.size)) + 1)
  first = np.zeros(order.size, bool)
  first[order[:take]] = True
  return first[inverse]


def group_folds(groups: np.ndarray, folds: int, seed: int = 0) -> tuple[np.ndarray, int]:
  """(fold [N] in 0..k-1, k): k = folds (at least 2, at most one fold per group) folds with every
  group in one; a group's fold is its entry of a seeded permutation of the groups, mod k."""
  inverse, order = shuffled_groups(groups, seed, FOLD_STREAM)
  k = max(2, min(int(folds), order.size))
  return order[inverse] % k, k


def components(num_items: int, pairs: np.ndarray) -> np.ndarray:
  """[N] the connected component (its smallest item) of each item of the pair graph
  (union-find): items linked by any comparison share one."""
  parent = np.arange(num_items)

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for a, b in np.asarray(pairs, np.int64):
    ra, rb = find(a), find(b)
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)
  return np.asarray([find(i) for i in range(num_items)])


def image_groups(num_images: int, pairs: np.ndarray, identity: Sequence | None = None
                 ) -> tuple[np.ndarray, str]:
  """(group per image, how): `identity` when the labels exist ("identity"), else the connected
  components of the pair graph ("connected pairs": no comparison crosses a split), else (one
  component holding more than half the images, e.g. Adience) every image alone ("image")."""
  if identity is not None:
    return np.asarray(identity), "identity"
  groups = components(num_images, pairs)
  if num_images and np.bincount(np.unique(groups, return_inverse=True)[1]).max() > num_images / 2:
    return np.arange(num_images), "image"
  return groups, "connected pairs"
