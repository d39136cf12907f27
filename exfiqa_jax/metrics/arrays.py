"""Array helpers the metrics share: tracer test, float order as unsigned keys, stable orders.

Float keys. Sorting float32 values by their bit pattern is what makes the EDC engines fast (one
NumPy sort of packed 64-bit keys, ~10x a key-value sort under XLA on the CPU:
docs/evaluation.md, "Speed"). `sortable` (device) and `sortable_keys` (host) map a float32 to a
uint32 whose unsigned order is the float order, -0.0 and +0.0 to the same key (np.sort and
np.unique treat them as equal).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def is_tracer(*xs: Any) -> bool:
  """True when any argument is a JAX tracer (the caller runs under jit/vmap/grad)."""
  return any(isinstance(x, jax.core.Tracer) for x in xs)


def canonical(x: jnp.ndarray) -> jnp.ndarray:
  """float32 with -0.0 folded into +0.0 (device)."""
  x = jnp.asarray(x, jnp.float32)
  return jnp.where(x == 0, jnp.float32(0), x)


def sortable(x: jnp.ndarray) -> jnp.ndarray:
  """float32 → uint32 whose unsigned order is the float order (device; canonicalise first)."""
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  neg = (bits >> 31) == 1
  return jnp.where(neg, ~bits, bits | jnp.uint32(0x80000000))


def sortable_keys(x: np.ndarray) -> np.ndarray:
  """Host twin of sortable(canonical(x)): float32 → uint32 in float order, -0.0 == +0.0."""
  x = np.asarray(x, np.float32)
  bits = np.where(x == 0, np.float32(0), x).view(np.uint32)
  return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))


def stable_order(key32: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
  """Stable ascending order of (group, key32) with ties by index: ONE np.sort of packed uint64
  keys (unique keys, so any sort is stable). key32 uint32 [P], group bool [P]; P < 2^31."""
  n = key32.shape[0]
  if n >= 1 << 31:
    raise ValueError(f"{n} pairs: at most 2^31 - 1 per EDC call")
  packed = (key32.astype(np.uint64) << np.uint64(31)) | np.arange(n, dtype=np.uint64)
  if group is not None:
    packed |= group.astype(np.uint64) << np.uint64(63)
  packed.sort()
  return (packed & np.uint64(0x7FFFFFFF)).astype(np.int32)


def count_le(sorted_rows: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
  """Row-wise searchsorted(side='right'): #{row entries <= value}. rows [Q, n], values [Q]."""
  return jnp.sum(sorted_rows <= values[:, None], axis=1, dtype=jnp.int32)


def row_searchsorted(xp: Any, rows, values, side: str):
  """searchsorted of values [..., k] in each nondecreasing row of rows [..., n]: a 1-D row (jnp
  or numpy), or a batch of non-negative numpy rows [b, n] (one search over rows offset apart)."""
  if rows.ndim == 1:
    return xp.searchsorted(rows, values, side=side)
  b, n = rows.shape
  step = int(max(rows.max(initial=0), values.max(initial=0))) + 1
  off = (np.arange(b, dtype=np.int64) * step)[:, None]
  pos = np.searchsorted((rows + off).ravel(), values + off, side=side)
  return pos - (np.arange(b) * n)[:, None]


def cummin_last(xp: Any, a):
  """Cumulative minimum along the last axis (numpy or jnp)."""
  return np.minimum.accumulate(a, axis=-1) if xp is np else lax.cummin(a, axis=a.ndim - 1)


def cummax_last(xp: Any, a):
  """Cumulative maximum along the last axis (numpy or jnp)."""
  return np.maximum.accumulate(a, axis=-1) if xp is np else lax.cummax(a, axis=a.ndim - 1)


def pad_rows(rows: np.ndarray, n: int) -> np.ndarray:
  """rows [k, ...] padded to [n, ...] by repeating the last row (one compile per batch size)."""
  if rows.shape[0] == n:
    return rows
  return np.concatenate([rows, np.repeat(rows[-1:], n - rows.shape[0], 0)])
