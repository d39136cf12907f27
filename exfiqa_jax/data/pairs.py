"""Pair lists as NumPy arrays: reading pair files, resolving names, all-pairs protocols, storage.

A pair list is three equal-length arrays `a [P]`, `b [P]` (int64 image or template ids) and
`is_genuine [P]` (bool). Builders store them next to the records as `.npy` files so that
15.7M IJB-C template pairs load in a second (memory-mapped) instead of as records.
"""
from __future__ import annotations

import os

import numpy as np

from exfiqa_jax import files

PAIR_FILES = {"a": "pairs_a.npy", "b": "pairs_b.npy", "is_genuine": "pairs_is_genuine.npy"}


class PairError(ValueError):
  """A pair list that does not fit its images: unknown names, bad lines, wrong lengths."""


def strip_extension(name: str) -> str:
  """`"images/00012.jpg"` → `"images/00012"`; names without a known image extension stay."""
  root, ext = os.path.splitext(name)
  return root if ext.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp") else name


def parse_label(token: str, where: str) -> bool:
  """`1`/`0` (also zero-padded `00001`, CR-FIQA `np.savetxt` style), `true`/`false`."""
  low = token.strip().lower()
  if low in ("true", "false"):
    return low == "true"
  try:
    value = int(low)
  except ValueError:
    value = None
  if value not in (0, 1):
    raise PairError(f"{where}: label {token!r} is not 0/1 (1 = genuine, 0 = impostor)")
  return bool(value)


def read_pair_file(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
  """Reads `name_a name_b label` lines (blank lines ignored) → (names_a, names_b, is_genuine [P])."""
  names_a, names_b, labels = [], [], []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      tokens = line.split()
      if not tokens:
        continue
      where = f"{path}:{number}"
      if len(tokens) != 3:
        raise PairError(f"{where}: expected 3 tokens 'name_a name_b label', got {len(tokens)}: "
                        f"{line.strip()!r}")
      names_a.append(tokens[0])
      names_b.append(tokens[1])
      labels.append(parse_label(tokens[2], where))
  return names_a, names_b, np.asarray(labels, dtype=bool)


def resolve_names(names: list[str], name_to_id: dict[str, int], what: str) -> np.ndarray:
  """Maps pair-file names to ids; every unknown name is an error (first few are listed)."""
  ids = np.empty(len(names), dtype=np.int64)
  unknown = []
  for k, name in enumerate(names):
    found = name_to_id.get(name)
    if found is None:
      found = name_to_id.get(strip_extension(name))
    if found is None:
      unknown.append(name)
      ids[k] = -1
    else:
      ids[k] = found
  if unknown:
    shown = ", ".join(repr(n) for n in unknown[:5])
    raise PairError(f"{what}: {len(unknown)} pair entries name images that are not in the data "
                    f"set (first: {shown}). Check that the pair list belongs to these images "
                    f"(names are matched with and without their extension).")
  return ids


def validate_pairs(a: np.ndarray, b: np.ndarray, is_genuine: np.ndarray, num: int | None = None,
                   what: str = "pairs") -> None:
  """Equal lengths, at least one pair, ids in [0, num) when `num` is given."""
  if not (len(a) == len(b) == len(is_genuine)):
    raise PairError(f"{what}: lengths differ ({len(a)}, {len(b)}, {len(is_genuine)})")
  if len(a) == 0:
    raise PairError(f"{what}: the pair list is empty; an evaluation needs at least one pair")
  if num is not None and len(a):
    low = min(int(np.min(a)), int(np.min(b)))
    high = max(int(np.max(a)), int(np.max(b)))
    if low < 0 or high >= num:
      raise PairError(f"{what}: pair ids span [{low}, {high}] but only {num} images exist")


def num_unordered_pairs(n: int) -> int:
  return n * (n - 1) // 2


def unordered_pair_from_index(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Linear index k in the row-major order of (i, j), i < j < n → (i, j). Vectorised, exact."""
  k = np.asarray(k, dtype=np.int64)
  # offset(i) = i (2n - i - 1) / 2 pairs come before row i.
  m = 2 * n - 1
  i = np.floor((m - np.sqrt(np.maximum(m * m - 8.0 * k, 0.0))) / 2).astype(np.int64)
  i = np.clip(i, 0, n - 2)
  offset = lambda r: r * (2 * n - r - 1) // 2
  i = np.where(offset(i) > k, i - 1, i)              # float rounding, either direction
  i = np.where(offset(i + 1) <= k, i + 1, i)
  j = k - offset(i) + i + 1
  return i, j


def all_unordered_pairs(identities: np.ndarray, max_pairs: int | None = None,
                        keep_all_genuine: bool = False, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every pair (i, j), i < j, of N images with identity labels `identities` [N].

  Adience protocol (docs/evaluation.md): label = same identity; pairs in row-major order. With
  `max_pairs`, a deterministic (seeded) uniform sample without replacement, kept in the same
  order; `keep_all_genuine` keeps every genuine pair and fills the rest with sampled impostors
  (genuine pairs are rare in all-pairs sets, so a uniform cap can leave too few).
  Returns (a [P], b [P], is_genuine [P]).
  """
  identities = np.asarray(identities)
  n = len(identities)
  total = num_unordered_pairs(n)
  if total == 0:
    raise PairError(f"all-pairs protocol needs at least 2 images, got {n}")
  if max_pairs is not None and max_pairs <= 0:
    raise PairError(f"max_pairs must be positive, got {max_pairs}")
  if max_pairs is None or max_pairs >= total:
    a = np.concatenate([np.full(n - 1 - i, i, dtype=np.int64) for i in range(n - 1)])
    b = np.concatenate([np.arange(i + 1, n, dtype=np.int64) for i in range(n - 1)])
    return a, b, identities[a] == identities[b]
  rng = np.random.default_rng(seed)
  if not keep_all_genuine:
    k = np.sort(rng.choice(total, size=max_pairs, replace=False))
    a, b = unordered_pair_from_index(k, n)
    return a, b, identities[a] == identities[b]
  genuine = _genuine_linear_indices(identities)
  if len(genuine) >= max_pairs:
    k = np.sort(rng.choice(genuine, size=max_pairs, replace=False))
  else:
    need = max_pairs - len(genuine)
    draw = min(total, int(need * 1.2) + 64)
    while True:
      candidates = rng.choice(total, size=draw, replace=False)
      candidates = candidates[~np.isin(candidates, genuine)]
      if len(candidates) >= need or draw == total:
        break
      draw = min(total, draw * 2)
    k = np.sort(np.concatenate([genuine, candidates[:need]]))
  a, b = unordered_pair_from_index(k, n)
  return a, b, identities[a] == identities[b]


def _genuine_linear_indices(identities: np.ndarray) -> np.ndarray:
  n = len(identities)
  out = []
  order = np.argsort(identities, kind="stable")
  sorted_ids = identities[order]
  starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
  for start, stop in zip(starts, np.r_[starts[1:], n]):
    members = np.sort(order[start:stop])
    if len(members) > 1:
      ii, jj = np.triu_indices(len(members), 1)
      i, j = members[ii], members[jj]
      out.append(i * (2 * n - i - 1) // 2 + (j - i - 1))
  return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def save_pairs(directory: str | os.PathLike, a: np.ndarray, b: np.ndarray,
               is_genuine: np.ndarray) -> None:
  """Writes the three arrays atomically as `pairs_{a,b,is_genuine}.npy` in `directory`."""
  validate_pairs(a, b, is_genuine)
  files.save_npy(os.path.join(directory, PAIR_FILES["a"]), np.asarray(a, dtype=np.int64))
  files.save_npy(os.path.join(directory, PAIR_FILES["b"]), np.asarray(b, dtype=np.int64))
  files.save_npy(os.path.join(directory, PAIR_FILES["is_genuine"]),
                np.asarray(is_genuine, dtype=bool))


def load_pairs(directory: str | os.PathLike, mmap: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """(a, b, is_genuine) from `save_pairs`, memory-mapped; None when the directory has none."""
  paths = [os.path.join(directory, PAIR_FILES[k]) for k in ("a", "b", "is_genuine")]
  if not all(os.path.exists(p) for p in paths):
    return None
  a, b, g = (np.load(p, mmap_mode="r" if mmap else None) for p in paths)
  validate_pairs(a, b, g, what=f"pairs in {directory}")
  return a, b, g
