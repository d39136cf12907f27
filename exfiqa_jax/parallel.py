"""Devices and hosts: one Mesh over every device, the batch axis sharded over it.

Every host feeds only its own rows (`host_batch_to_global`); results come back to
every host with `global_to_host` (fully replicated copies, so process 0 can write).
"""
from __future__ import annotations

import functools
import os
import platform
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "data"
MODEL_AXIS = "model"     # training only: class centres split over it (configs' shard_centres)


@functools.lru_cache(maxsize=None)
def mesh(model_axis: int = 1) -> Mesh:
  """A 1-D mesh over all devices of all processes (axis `data`), or with `model_axis` > 1 a
  2-D ("data", "model") mesh with `model_axis` devices per row."""
  devices = np.asarray(jax.devices())
  if model_axis <= 1:
    return Mesh(devices, (BATCH_AXIS,))
  if devices.size % model_axis:
    raise ValueError(f"model axis {model_axis} does not divide the {devices.size} devices; "
                     "set --config.shard_centres to a divisor of the device count (or 0 to "
                     "replicate the class centres).")
  return Mesh(devices.reshape(-1, model_axis), (BATCH_AXIS, MODEL_AXIS))


@functools.lru_cache(maxsize=None)
def local_mesh() -> Mesh:
  """A 1-D mesh (axis `data`) over this process's devices only: for work each host does on its
  own rows without the other hosts (face detection of its share of the photos)."""
  return Mesh(np.asarray(jax.local_devices()), (BATCH_AXIS,))


def batch_sharding(on: Mesh | None = None) -> NamedSharding:
  """Leading axis split over the `data` axis, everything else replicated."""
  return NamedSharding(on if on is not None else mesh(), P(BATCH_AXIS))


def replicated(on: Mesh | None = None) -> NamedSharding:
  return NamedSharding(on if on is not None else mesh(), P())


def local_batch_size(global_batch: int) -> int:
  """Rows this process feeds for a global batch; the global batch must divide evenly."""
  if global_batch % jax.device_count():
    raise ValueError(
        f"global batch {global_batch} is not a multiple of the {jax.device_count()} devices; "
        "choose a batch size that is (e.g. round it up to a multiple of the device count).")
  return global_batch // jax.process_count()


def next_pow2(n: int) -> int:
  """The smallest power of two ≥ n (1 for n ≤ 1): padded batch sizes, so few programs compile."""
  return 1 << max(0, n - 1).bit_length()


def round_up_to_devices(batch: int) -> int:
  n = jax.device_count()
  return -(-batch // n) * n


def host_batch_to_global(tree):
  """Assembles this host's rows of every leaf into one global array sharded on axis 0."""
  sharding = batch_sharding()
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def global_to_host(tree):
  """Fetches a (possibly sharded, multi-host) global array to numpy on every host."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def is_writer() -> bool:
  """Only process 0 writes results on a multi-host run."""
  return jax.process_index() == 0


# ------------------------------------------------------------------------------------------
# What a timing or a trained number depends on besides the program
# ------------------------------------------------------------------------------------------
def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux, else platform.processor())."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
  """What the time of a program depends on besides the program: platform, device kind and
  count, JAX's version, and on a CPU its model and core count."""
  dev = jax.devices()[0]
  info = {"platform": dev.platform, "device_kind": dev.device_kind,
          "devices": jax.device_count(), "jax": jax.__version__}
  if dev.platform == "cpu":
    info.update(cpu=cpu_model(), cores=os.cpu_count())
  return info


def device_name(device: Mapping[str, Any] | None = None) -> str:
  """A device_info in words: 'Intel(R) Xeon(R) ... (2 cores)' on a CPU, else '1x H100'."""
  device = device_info() if device is None else device
  if not device:
    return "this device"
  if device.get("platform") == "cpu":
    return f"{device.get('cpu')} ({device.get('cores')} cores)"
  return f"{device.get('devices')}x {device.get('device_kind')}"
