"""What an evaluation checks before any stage runs, each error naming its flag or benchmark: the
numeric settings of config.eval, the benchmark's comparison protocol, precomputed embeddings,
and the bootstrap's resampling unit (docs/evaluation.md, "Bootstrap").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from exfiqa_jax.evaluation.benchmarks import Benchmark
from exfiqa_jax.metrics import bootstrap

PRECOMPUTED = "precomputed:"     # --config.fr.path=precomputed:<embeddings.npy>


def check_eval_config(config) -> None:
  """The numeric settings of config.eval, before anything runs (each error names its flag)."""
  for f in config.eval.fmrs:
    if not 0.0 < float(f) < 1.0:
      raise ValueError(f"--config.eval.fmrs: every FMR must be in (0, 1), got {f!r}")
  for mode in config.eval.modes:
    limit = float(config.eval.pauc_limit[mode])
    if not 0.0 < limit <= 1.0:
      raise ValueError(f"--config.eval.pauc_limit.{mode} must be in (0, 1], got {limit!r}")
  resamples = config.eval.get("bootstrap", 0)
  if int(resamples) != resamples or resamples < 0:
    raise ValueError(f"--config.eval.bootstrap must be a whole number ≥ 0, got {resamples!r}")
  alpha = float(config.eval.get("alpha", 0.05))
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"--config.eval.alpha must be in (0, 1) (0.05 = 95 % intervals), got "
                     f"{alpha!r}")
  for key in ("chunk_images", "set_group"):
    value = config.eval.get(key, 1)
    if int(value) != value or value < 1:
      raise ValueError(f"--config.eval.{key} must be a whole number ≥ 1, got {value!r}")
  if int(config.batch_size) != config.batch_size or config.batch_size < 1:
    raise ValueError(f"--config.batch_size must be a whole number ≥ 1, got {config.batch_size!r}")


def check_protocol(bench: Benchmark) -> None:
  """The comparison protocol can give an EDC: pairs in range, genuine and impostor pairs both
  present. Raised before any stage, naming the benchmark."""
  gen = np.asarray(bench.is_genuine)
  if bench.num_images < 1:
    raise ValueError(f"benchmark {bench.name} has no images")
  if bench.pair_kind == "image":
    pairs = np.asarray(bench.pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) != len(gen):
      raise ValueError(f"benchmark {bench.name}: pairs have shape {pairs.shape} for {len(gen)} "
                       "labels; the protocol must be [P, 2] image rows with one label each")
    if not np.issubdtype(pairs.dtype, np.integer):
      raise ValueError(f"benchmark {bench.name}: pair indices are {pairs.dtype}, not integers")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= bench.num_images):
      raise ValueError(f"benchmark {bench.name}: pair indices span [{pairs.min()}, "
                       f"{pairs.max()}] but there are {bench.num_images} images")
  elif bench.pair_kind == "template":
    tp = np.asarray(bench.template_pairs)
    if tp.ndim != 2 or tp.shape[1] != 2 or len(tp) != len(gen):
      raise ValueError(f"benchmark {bench.name}: template pairs have shape {tp.shape} for "
                       f"{len(gen)} labels")
    unknown = ~np.isin(tp, np.asarray(bench.template_ids))
    if unknown.any():
      raise ValueError(f"benchmark {bench.name}: {int(unknown.any(axis=1).sum())} template "
                       "pairs name templates that have no images (e.g. "
                       f"{int(tp[unknown][0])}); rebuild the data set")
  else:
    raise ValueError(f"benchmark {bench.name}: unknown pair kind {bench.pair_kind!r}")
  n_gen = int(gen.sum())
  if n_gen == 0 or n_gen == len(gen):
    raise ValueError(f"benchmark {bench.name} has {n_gen} genuine and {len(gen) - n_gen} "
                     "impostor pairs; an EDC needs both (FNMR from genuine pairs, the threshold "
                     "from impostors). Check the pair list and its labels.")


def precomputed_embeddings(file: str, bench: Benchmark) -> np.ndarray:
  """A precomputed embeddings .npy, memory-mapped, checked to hold one row per image of the
  benchmark (only the header is read until the rows are used)."""
  try:
    emb = np.load(file, mmap_mode="r")
  except (OSError, ValueError) as e:
    raise ValueError(f"precomputed embeddings {file} cannot be read as a .npy: {e}") from e
  if emb.ndim != 2 or emb.shape[0] != bench.num_images:
    raise ValueError(f"precomputed embeddings {file} have shape {emb.shape}, but benchmark "
                     f"{bench.name} has {bench.num_images} images: the FR model and the "
                     "quality model disagree on the image list (one row per image, in the "
                     "benchmark's order)")
  return emb


def check_precomputed(bench: Benchmark, frs: Sequence[tuple[str, str]]) -> None:
  """Precomputed embeddings have one row per image of the benchmark (read from the header)."""
  for _, path in frs:
    if path.startswith(PRECOMPUTED):
      precomputed_embeddings(path[len(PRECOMPUTED):], bench)


def bootstrap_unit(bench: Benchmark, config) -> str:
  """config.eval.bootstrap_unit checked against what the benchmark has (docs/evaluation.md,
  "Bootstrap"): "pair"; "identity" needs per-image identity labels (bench.extra["identity"]);
  "template" needs a template protocol (IJB-C)."""
  unit = str(config.eval.get("bootstrap_unit", "pair") or "pair")
  if unit not in bootstrap.UNITS:
    raise ValueError(f"--config.eval.bootstrap_unit={unit!r}: use one of {bootstrap.UNITS}")
  if unit == "identity" and (bench.pair_kind != "image" or "identity" not in bench.extra):
    raise ValueError(f"--config.eval.bootstrap_unit=identity: benchmark {bench.name} has no "
                     "per-image identity labels; use pair" +
                     (" or template" if bench.pair_kind == "template" else ""))
  if unit == "template" and bench.pair_kind != "template":
    raise ValueError(f"--config.eval.bootstrap_unit=template: benchmark {bench.name} compares "
                     "images, not templates; use pair (or identity where labels exist)")
  return unit


def bootstrap_units(bench: Benchmark, unit: str) -> np.ndarray | None:
  """Resampling units of the pairs for bootstrap.bootstrap: None (pairs), [P, 2] identities of
  the two images, or [P, 2] template ids."""
  if unit == "identity":
    return np.asarray(bench.extra["identity"])[np.asarray(bench.pairs)]
  if unit == "template":
    return np.asarray(bench.template_pairs)
  return None
