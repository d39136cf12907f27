"""Benchmark names as the configs spell them (pure Python: the configs import this, never JAX)."""
from __future__ import annotations

VERIFICATION_BINS = ("lfw", "agedb_30", "cfp_fp", "calfw", "cplfw")


def manual_dir_key(name: str) -> str:
  """The config field of a benchmark under data.manual_dirs (config keys cannot hold . or /)."""
  return name.replace(".", "_").replace("/", "_")
