"""Benchmark names as the configs spell them (pure Python: the configs import this, never JAX)."""
from __future__ import annotations

VERIFICATION_BINS = ("lfw", "agedb_30", "cfp_fp", "calfw", "cplfw")
# config.data.protocol: the FIQA scripts' pixels, or the stored ones (docs/data.md,
# "Protocols: published and lossless"; exfiqa_jax/data/protocols.py).
PROTOCOLS = ("published", "lossless")


def manual_dir_key(name: str) -> str:
  """The config field of a benchmark under data.manual_dirs (config keys cannot hold . or /)."""
  return name.replace(".", "_").replace("/", "_")
