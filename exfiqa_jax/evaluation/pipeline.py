"""The evaluation pipeline: quality at every exit → FR comparisons → EDC / pAUC, cached stages.

Per benchmark, each a cached stage (exfiqa_jax/evaluation/stages.py; a killed run resumes, a changed
config recomputes only what depends on it):
  quality/<bench>/<model>   every quality model, one pass per image: exit_scores [I, L],
                            ex_fiqa_f, ex_fiqa_fw [I], attn_scores [I, L], image names
                            (config.exit=k: the program truncated after block k, L = k); a
                            quality method's columns [I] (crfiqa, serfiq, vitnt, ...)
  embed/<bench>/<fr>        FR embeddings with the flip convention (exfiqa_jax/embedding.py), or a
                            precomputed .npy, or the quality model's own feature head
  compare/<bench>/<fr>      cosine comparison scores of the pairs, or of the IJB-C templates
                            (media-averaged, summed, L2-normalised; docs/evaluation.md)
  edc/<bench>/<fr>/<mode>   EDC of every quality column (+ the seeded `random` baseline) × FMR,
                            pAUC with bootstrap CIs
  groups/<bench>/<fr>/<mode>/<grouping>   per-group EDC and pAUC where group labels exist
                            (exfiqa_jax/evaluation/groups.py; docs/evaluation.md, Per-group EDC)
then the reports (exfiqa_jax/report/evaluation.py, called by the eval and demo tasks). Images are
decoded on every host for its own rows of each global batch and the model runs sharded over all
devices; only process 0 writes.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from exfiqa_jax import (columns, embedding, files, identity, inference, models,
                        parallel)
from exfiqa_jax.convert import families, strict
from exfiqa_jax.metrics import comparisons, edc
from exfiqa_jax.evaluation import checks, external, stages
from exfiqa_jax.data import pipeline
from exfiqa_jax.evaluation import groups as groups_lib
from exfiqa_jax.metrics import bootstrap, verification
from exfiqa_jax.evaluation import paired_columns
from exfiqa_jax.evaluation import results
from exfiqa_jax.evaluation.benchmarks import (Benchmark, check_unchanged, image_names,
                                               image_reader)
from exfiqa_jax.methods import registry


SELF_FR = "quality_model"
METHOD_FLAG = "--config.quality_model.method="


# ------------------------------------------------------------------------------------------
# Quality models and FR models from the config
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class QualitySpec:
  name: str
  path: str
  model: inference.QualityModel | inference.MethodModel
  exit: int = 0          # config.exit: the program stops after block k (0 = every exit)


# Every path field the eval, early_exit and demo configs read, `~` expanded once by
# `with_user_paths` ("x.*": every entry of the node x). The model lists ([name=][method:]path,
# precomputed:, scores:) expand each entry where they are parsed (load_quality_models, fr_items,
# data/score_files.py).
PATH_FIELDS = ("output", "compile_cache", "data.manual_dir", "data.manual_dirs.*",
               "data.data_dir", "data.adience_folds", "eval.groups", "train.output",
               "train.compile_cache")
LIST_PATH_FIELDS = ("quality_model.path", "fr.path")


def with_user_paths(config):
  """A copy of `config` whose PATH_FIELDS have `~` expanded (files.with_user_paths)."""
  return files.with_user_paths(config, PATH_FIELDS)


def parse_named_list(value: str, path_of: Callable[[str], str] = str, flag: str = ""
                     ) -> list[tuple[str, str]]:
  """"a=path1,path2" → [("a", "path1"), (basename, "path2")]; `path_of` finds the path an
  unnamed entry is named after (quality entries: [method:]path, registry.split_method). Two
  names that are one name, or one file name (files.slug: "a b" and "a_b" both write
  scores_a_b.csv), are a ValueError naming `flag`."""
  out = []
  for item in [v.strip() for v in str(value or "").split(",") if v.strip()]:
    if "=" in item and not item.startswith(checks.PRECOMPUTED):
      name, path = item.split("=", 1)
    else:
      path = item
      base = item[len(checks.PRECOMPUTED):] if item.startswith(checks.PRECOMPUTED) else path_of(item)
      name = os.path.splitext(os.path.basename(os.path.normpath(base)))[0] or base
    out.append((name.strip(), path.strip()))
  where = f"{flag}={value!r}" if flag else repr(value)
  by_slug: dict[str, str] = {}
  for name, _ in out:
    other = by_slug.setdefault(files.slug(name), name)
    if other != name or [n for n, _ in out].count(name) > 1:
      what = (f"the name {name!r} is used twice" if other == name else
              f"the names {other!r} and {name!r} are one file name ({files.slug(name)})")
      raise ValueError(f"{where}: {what}; give each model a name of its own: "
                       f"{flag or 'value'}=name1=path1,name2=path2")
  return out


def quality_entries(config) -> list[tuple[str, str]]:
  """(name, entry) of every item of config.quality_model.path: models `[method:]path` and score
  files `scores:<file>[#column][?lower]` (unnamed: named after the file)."""
  items = parse_named_list(config.quality_model.path,
                           lambda e: registry.split_method(e)[1].split("#")[0].split("?")[0],
                           "--config.quality_model.path")
  if not items:
    raise ValueError("no quality model: pass --config.quality_model.path=<converted dir or .pt> "
                     "(several as name1=[method:]path1,name2=...; another method's score file "
                     "as name=scores:<file>)")
  return items


def _is_score_file(entry: str) -> bool:
  return registry.split_method(entry)[0] == registry.SCORES


def load_quality_models(config) -> list[QualitySpec]:
  """Every model `name=[method:]path` of config.quality_model.path, loaded (methods/
  registry.py); score files are `load_external_scores`'."""
  items = [(n, e) for n, e in quality_entries(config) if not _is_score_file(e)]
  dtype = inference.check_compute_dtype(config.get("compute_dtype", "float32"),
                                        "--config.compute_dtype=")
  specs = []
  for name, entry in items:
    method, path = registry.resolve_entry(entry, config.quality_model.get("method", ""),
                                          METHOD_FLAG)
    path = os.path.expanduser(path)
    if not os.path.exists(path):
      raise FileNotFoundError(f"quality checkpoint {path} does not exist; pass "
                              "--config.quality_model.path=<converted directory or PyTorch .pt>")
    with strict.flags_named(family="--config.quality_model.family=",
                            num_heads="--config.quality_model.num_heads=", method=METHOD_FLAG):
      model = inference.load(path, method=method, num_heads=config.quality_model.num_heads,
                             family=config.quality_model.family or None,
                             batch_size=config.batch_size, dtype=dtype,
                             method_options=registry.config_options(config.quality_model))
    exit = int(config.get("exit", 0) or 0)
    model.resolve_exit(exit)               # a clear error for an exit outside 1..L
    specs.append(QualitySpec(name, os.path.abspath(path), model, exit))
  return specs


def load_external_scores(config) -> list[external.ExternalScores]:
  """Every score file `name=scores:<file>[#column][?lower]` of config.quality_model.path, read
  once (evaluation/external.py)."""
  items = [(n, registry.split_method(e)[1]) for n, e in quality_entries(config)
           if _is_score_file(e)]
  lower = external.lower_names(config.quality_model.get("lower_is_better", ""),
                               [n for n, _ in items])
  return [external.read(name, text, lower) for name, text in items]


def fr_items(config, quality: Sequence[QualitySpec]) -> list[tuple[str, str]]:
  value = config.fr.path
  if not value:
    raise ValueError(f"no FR model: pass --config.fr.path=<converted FR dir or .pt>, "
                     f"'{checks.PRECOMPUTED}<embeddings.npy>' (rows in image order) or '{SELF_FR}' (the "
                     "quality model's own feature head)")
  if config.fr.family and config.fr.family not in families.names():
    raise ValueError(f"--config.fr.family={config.fr.family!r} is not a known model family; "
                     f"known: {families.names()} (or leave it empty to detect the family)")
  if int(config.fr.batch_size) < 1:
    raise ValueError(f"--config.fr.batch_size must be at least 1, got {config.fr.batch_size}")
  out = []
  for name, path in parse_named_list(value, flag="--config.fr.path"):
    if path == SELF_FR or path.startswith(SELF_FR + ":"):
      which = path.split(":", 1)[1] if ":" in path else (quality[0].name if quality else "")
      if which not in [q.name for q in quality if isinstance(q.model, inference.QualityModel)]:
        raise ValueError(f"--config.fr.path={path!r}: no ViT quality model named {which!r} "
                         f"(have {[q.name for q in quality]}; a method's checkpoint is an FR "
                         "model as --config.fr.path=<its path>)")
      vits = [q for q in quality                    # ViT-FIQA models, not a method on one
              if isinstance(q.model, inference.QualityModel) and not q.model.method]
      out.append((SELF_FR if len(vits) == 1 else f"{SELF_FR}:{which}", path))
    elif path.startswith(checks.PRECOMPUTED):
      file = os.path.expanduser(path[len(checks.PRECOMPUTED):])
      if not os.path.isfile(file):
        raise FileNotFoundError(f"precomputed embeddings {file} do not exist; pass "
                                f"--config.fr.path={checks.PRECOMPUTED}<embeddings.npy> (one row per "
                                "image, in the benchmark's image order)")
      out.append((f"{checks.PRECOMPUTED}{name}", checks.PRECOMPUTED + os.path.abspath(file)))
    else:
      if not os.path.exists(os.path.expanduser(path)):
        raise FileNotFoundError(f"FR model {path} does not exist; pass --config.fr.path=<a "
                                "converted FR directory or PyTorch .pt>, "
                                f"'{checks.PRECOMPUTED}<file.npy>' or '{SELF_FR}'")
      out.append((name, os.path.abspath(os.path.expanduser(path))))
  return out


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------
def _chunk(config) -> int:
  batch = parallel.round_up_to_devices(config.batch_size)
  return max(1, int(config.eval.get("chunk_images", 4096)) // batch) * batch


def loaded_identity(spec: QualitySpec) -> dict[str, Any]:
  """The identity of the checkpoint bytes `spec.model` was loaded from (set by inference.load):
  hashing the path again when a stage runs, perhaps hours later, would record a file
  re-exported since for results of the old one (docs/caching.md)."""
  if spec.model.identity is None:
    raise ValueError(f"quality model {spec.name!r} carries no identity of what it was loaded "
                     "from; load it with exfiqa_jax.inference.load")
  return spec.model.identity


def quality_stage(cache: stages.StageCache, bench: Benchmark, spec: QualitySpec, config
                  ) -> stages.Stage:
  model = spec.model
  batch = model.batch_size
  deps = {"benchmark": bench.identity, "checkpoint": loaded_identity(spec),
          "model_config": model.model_config,     # the count used (stamps of 8 stay valid):
          "num_heads": model.model_config.get("num_heads", config.quality_model.num_heads),
          **({"exit": spec.exit} if spec.exit else {}),   # every-exit caches stay valid
          **({"compute_dtype": model.dtype} if model.dtype != "float32" else {}),
          **model.method_identity()}          # {} for the ViT-FIQA pass (caches stay valid)

  def compute(lo, hi):
    parts = []
    for host in pipeline.host_batches(image_reader(bench), hi, batch, start=lo,
                                      workers=config.data.get("decode_threads", 4)):
      out = model.run_batch(host.images, exit=spec.exit)
      parts.append({k: v[:host.num_rows] for k, v in out.items()
                    if k not in ("embedding", "attn_maps")})
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    arrays["name"] = image_names(bench, lo, hi)
    return arrays

  return cache.run_chunked(f"quality/{bench.name}/{spec.name}", deps, bench.num_images,
                           _chunk(config), compute)


def embed_stage(cache: stages.StageCache, bench: Benchmark, fr_name: str, fr_path: str,
                quality: Sequence[QualitySpec], config) -> stages.Stage:
  convention = embedding.check_convention(config.fr.convention)
  if fr_path.startswith(checks.PRECOMPUTED):
    file = fr_path[len(checks.PRECOMPUTED):]
    listed = os.path.join(os.path.dirname(file), "image_list.txt")   # the embed task's
    deps = {"benchmark": bench.identity, "file": identity.file_identity(file),
            **({"image_list": identity.file_identity(listed)} if os.path.exists(listed) else {})}

    def load_precomputed():
      emb = np.array(checks.precomputed_embeddings(file, bench), np.float32)   # read in full
      names = None
      if "image_list" in deps:          # written by the embed task beside embeddings.npy
        with identity.open_regular(listed) as f:
          names = np.asarray([line.split()[0] for line in f.read().decode("utf-8").splitlines()
                              if line.strip()], dtype=str)
      now = {"file": identity.file_identity(file),
             **({"image_list": identity.file_identity(listed)} if names is not None else {})}
      if any(now[k] != deps[k] for k in now):       # what was read is what was identified
        raise RuntimeError(f"{file} (or its image_list.txt) changed while this run read it; "
                           "run again once it is written")
      return {"embedding": emb, **({"name": names} if names is not None else {})}

    return cache.run(f"embed/{bench.name}/{files.slug(fr_name)}", deps, load_precomputed)

  if fr_path == SELF_FR or fr_path.startswith(SELF_FR + ":"):
    which = fr_path.split(":", 1)[1] if ":" in fr_path else quality[0].name
    spec = next(q for q in quality if q.name == which)
    module, variables = spec.model.module, spec.model.variables
    input_scale = "minus1_1"
    ident = {"quality_model": loaded_identity(spec),
             "model_config": spec.model.model_config,
             **({"compute_dtype": spec.model.dtype} if spec.model.dtype != "float32" else {})}
  else:
    with strict.flags_named(family="--config.fr.family=", num_heads="--config.fr.num_heads="):
      module, variables, fr_config, fr_identity = inference.read_fr_model(
          fr_path, config.fr.family or None, config.fr.input_scale or None, config.fr.num_heads)
    variables = embedding.replicate(variables)
    input_scale = fr_config["input_scale"]
    ident = {"fr_model": fr_identity, "model_config": fr_config,   # of the bytes just loaded
             "family": config.fr.family or ""}
  embed_fn = embedding.make_embed_fn(module, convention, input_scale)
  batch = parallel.round_up_to_devices(int(config.fr.batch_size))
  deps = {"benchmark": bench.identity, **ident, "convention": convention,
          "input_scale": input_scale}

  def compute(lo, hi):
    parts = []
    for step in pipeline.global_batches(image_reader(bench), hi, batch, start=lo,
                                        workers=config.data.get("decode_threads", 4)):
      out = parallel.global_to_host(embed_fn(variables, step.images))
      parts.append(out[:step.num_rows])
    return {"embedding": np.concatenate(parts).astype(np.float32),
            "name": image_names(bench, lo, hi)}

  return cache.run_chunked(f"embed/{bench.name}/{files.slug(fr_name)}", deps, bench.num_images,
                           _chunk(config), compute)


def check_same_images(bench: Benchmark, quality: Mapping[str, stages.Stage],
                      fr: Mapping[str, stages.Stage], names: np.ndarray | None = None
                      ) -> np.ndarray:
  """The image names every quality and FR stage saw (`names`: the benchmark's, where no quality
  model ran); any disagreement is an error."""
  if names is None:
    ref_name, ref = next(iter(quality.items()))
    names, others = ref["name"], list(quality.items())[1:]
  else:
    ref_name, others = "the benchmark", list(quality.items())
  for label, stage in others + list(fr.items()):
    if "name" not in stage.arrays:
      continue
    other = stage["name"]
    if len(other) != len(names) or not np.array_equal(other, names):
      bad = next((i for i in range(min(len(other), len(names))) if other[i] != names[i]),
                 min(len(other), len(names)))
      raise ValueError(
          f"{bench.name}: {label} and {ref_name} disagree on the image list ({len(other)} vs "
          f"{len(names)} images; first difference at row {bad}: "
          f"{other[bad] if bad < len(other) else '<end>'!r} vs "
          f"{names[bad] if bad < len(names) else '<end>'!r}). Compute the FR embeddings on the "
          "same image list, in the same order.")
  return names


def compare_stage(cache: stages.StageCache, bench: Benchmark, fr_name: str,
                  emb: stages.Stage) -> stages.Stage:
  deps = {"embedding": emb, "protocol": {"kind": bench.pair_kind, "is_genuine": bench.is_genuine,
                                         "pairs": bench.pairs,
                                         "template_pairs": bench.template_pairs,
                                         "template_ids": bench.template_ids,
                                         "media_ids": bench.media_ids}}

  def compute():
    if bench.pair_kind == "image":
      scores = comparisons.pair_scores(emb["embedding"], bench.pairs)
      return {"scores": scores, "is_genuine": bench.is_genuine}
    feats, index = comparisons.aggregate_templates(emb["embedding"], bench.template_ids,
                                                   bench.media_ids)
    rows = index.pair_rows(bench.template_pairs)
    return {"scores": comparisons.pair_scores(feats, rows), "is_genuine": bench.is_genuine,
            "pair_rows": rows, "template_index": index.template_index,
            "num_templates": np.asarray(index.templates.size)}

  return cache.run(f"compare/{bench.name}/{files.slug(fr_name)}", deps, compute)


def quality_columns(quality: Sequence[QualitySpec], qstages: Mapping[str, stages.Stage],
                    extra: Mapping[str, tuple[str, np.ndarray]], num_images: int, seed: int
                    ) -> tuple[list[results.QualityColumn], np.ndarray]:
  """Every quality column and its image qualities [S, I]: per model exit_1..L, fusions,
  attn_1..L, its method columns (named <model>/<column> when two models share a column name;
  a checkpoint evaluated twice, e.g. as itself and as `vitnt:` for its ViTNT columns, shows the
  columns both passes compute once, under the first); the caller's extra columns (score files,
  the demo's oracle); and `random` (seeded)."""
  def column_set(spec: QualitySpec, prefix: bool) -> list[results.QualityColumn]:
    st = qstages[spec.name]
    num_exits = st["attn_scores"].shape[1] if "attn_scores" in st.arrays else 0
    return results.column_set(spec.name, num_exits, prefix, "exit_scores" in st.arrays,
                              columns.method_names(st.arrays))

  shown: dict[str, set[str]] = {}               # spec → its columns that are not repeats
  computed: dict[str, set[str]] = {}            # one checkpoint pass → the columns shown
  for spec in quality:
    same = stages.fingerprint({"path": spec.path, "config": spec.model.model_config,
                               "exit": spec.exit, "dtype": spec.model.dtype})
    done = computed.setdefault(same, set())
    shown[spec.name] = {c.name for c in column_set(spec, False)} - done
    done |= shown[spec.name]
  plain = [name for names in shown.values() for name in names]
  prefix = len(set(plain)) < len(plain)
  cols, values = [], []
  for spec in quality:
    st = qstages[spec.name]
    for col in column_set(spec, prefix):
      if columns.base_name(col.name) not in shown[spec.name]:
        continue
      cols.append(col)
      if col.kind == "exit":
        values.append(st["exit_scores"][:, col.exit - 1])
      elif col.kind == "attn":
        values.append(st["attn_scores"][:, col.exit - 1])
      else:
        values.append(st[columns.base_name(col.name)])
  for name, (kind, v) in extra.items():
    if name in [c.name for c in cols]:
      raise ValueError(f"the extra quality column {name!r} is also a column of a quality model "
                       f"({external.FLAG}: name it differently)")
    cols.append(results.QualityColumn(name, kind))
    values.append(np.asarray(v, np.float32))
  cols.append(results.QualityColumn(columns.RANDOM, "random"))
  values.append(comparisons.random_quality(num_images, seed))
  return cols, np.stack(values).astype(np.float32)


def pair_quality_fn(bench: Benchmark, cmp: stages.Stage) -> Callable[[np.ndarray], np.ndarray]:
  """image qualities [S, I] → pair qualities [S, P] (IJB-C: template min, then pair min).

  For templates the compare stage stored what this needs: each image's dense template
  (`template_index` [I]), the number of templates and each pair's two template rows."""
  if bench.pair_kind == "image":
    return lambda q: comparisons.image_to_pair_quality(q, bench.pairs)
  rows = cmp["pair_rows"]
  template_of_image = cmp["template_index"]
  num_templates = int(cmp["num_templates"])
  first, second = np.ascontiguousarray(rows[:, 0]), np.ascontiguousarray(rows[:, 1])

  def fn(q):
    tq = np.asarray(comparisons.template_quality_dense(q, template_of_image, num_templates))
    # One quality set at a time: no [S, P] temporaries beside the result (at IJB-C scale
    # each is 8 × 15.7M float32 = 0.5 GB).
    out = np.empty((tq.shape[0], first.size), np.float32)
    for k in range(tq.shape[0]):
      out[k] = comparisons.pair_quality(tq[k, first], tq[k, second])
    return out
  return fn


def edc_stage(cache: stages.StageCache, bench: Benchmark, fr_name: str, mode: str,
              cmp: stages.Stage, cols: Sequence[results.QualityColumn], image_q: np.ndarray,
              deps_q: Mapping[str, Any], config, unit: str | None = None) -> stages.Stage:
  """Stage edc/<bench>/<fr>/<mode>: EDC, pAUC and bootstrap CIs of every quality column;
  `unit` is the benchmark's bootstrap_unit (checked here when not given)."""
  fmrs = tuple(float(f) for f in config.eval.fmrs)
  limit = float(config.eval.pauc_limit[mode])
  resamples = int(config.eval.get("bootstrap", 0))
  alpha = float(config.eval.get("alpha", 0.05))
  unit = unit or checks.bootstrap_unit(bench, config)
  deps = {"compare": cmp, "quality": deps_q, "columns": [dataclasses.asdict(c) for c in cols],
          "fmrs": fmrs, "mode": mode, "limit": limit, "bootstrap": resamples,
          "alpha": alpha, "seed": int(config.seed), "bootstrap_unit": unit,
          }
  to_pairs = pair_quality_fn(bench, cmp)

  def compute():
    # Quality sets per EDC call: all of them for small benchmarks, `set_group` at IJB-C scale
    # (memory); every call gets the same number of rows (the last group is padded by repeating
    # its last row), so the EDC and bootstrap programs compile once.
    n_pairs = len(cmp["scores"])
    units = checks.bootstrap_units(bench, unit)
    perm = (edc.score_order(np.asarray(cmp["scores"], np.float32), np.asarray(cmp["is_genuine"],
                                                                              bool))
            if mode == "fiqa" or resamples else None)    # one sort for every column group
    group = min(len(cols), max(int(config.eval.get("set_group", 8)), (1 << 22) // n_pairs))
    parts = []
    for lo in range(0, len(cols), group):
      rows = image_q[lo:lo + group]
      real = len(rows)
      if real < group:
        rows = np.concatenate([rows, np.repeat(rows[-1:], group - real, axis=0)])
      pq = to_pairs(rows)
      curves = edc.edc_curves(cmp["scores"], cmp["is_genuine"], pq, fmrs, edc.FIQA_DISCARD, mode,
                              pauc_limit=limit, score_perm=perm)
      # Bootstrap (same resamples for every column: paired comparisons use `samples`).
      boot = bootstrap.bootstrap(cmp["scores"], cmp["is_genuine"], pq, fmrs, edc.FIQA_DISCARD,
                                 mode, limit, num_resamples=resamples, seed=int(config.seed),
                                 units=units, point=curves.pauc, score_perm=perm)
      low, high = bootstrap.percentile_ci(boot.samples, alpha)
      band_low, band_high = bootstrap.percentile_ci(boot.fnmr, alpha)  # [S, F, R] CI bands
      parts.append({k: v[:real] for k, v in dict(
          fnmr=curves.fnmr, threshold=curves.threshold, n_genuine=curves.n_genuine,
          n_impostor=curves.n_impostor, discarded=curves.discarded, pauc=curves.pauc,
          ci_low=low, ci_high=high, samples=np.moveaxis(boot.samples, 0, 1),
          band_low=band_low, band_high=band_high).items()})
      logging.info("EDC %s/%s/%s: %d/%d quality columns", bench.name, fr_name, mode,
                   min(lo + group, len(cols)), len(cols))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["fmrs"], out["discard"] = np.asarray(fmrs), np.asarray(edc.FIQA_DISCARD)
    out["quality"] = np.asarray([c.name for c in cols])
    return out

  return cache.run(f"edc/{bench.name}/{files.slug(fr_name)}/{mode}", deps, compute)


def mode_eval(stage: stages.Stage, mode: str, limit: float) -> results.ModeEval:
  a = stage.arrays
  curves = edc.EdcCurves(mode, a["fmrs"], a["discard"], a["fnmr"], a["threshold"],
                         a["n_genuine"], a["n_impostor"], a["discarded"], a["pauc"])
  return results.ModeEval(mode, limit, curves, a["pauc"], a["ci_low"], a["ci_high"])


# ------------------------------------------------------------------------------------------
# One whole evaluation
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalRun:
  results: list[results.BenchmarkEval]
  quality: dict[str, dict[str, stages.Stage]]        # benchmark → model → stage
  columns: dict[str, tuple[list[results.QualityColumn], np.ndarray]]   # benchmark → (cols, [S, I])
  names: dict[str, np.ndarray]
  cache: stages.StageCache
  seconds: dict[str, float]
  groups: list[groups_lib.GroupEval] = dataclasses.field(default_factory=list)  # per-group EDC
  paired: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # pauc_diff.csv rows
  sanity: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # FR sanity numbers
  bands: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = dataclasses.field(
      default_factory=dict)                          # (bench, fr, mode) → EDC CI band [S, F, R]
  bootstrap_units: dict[str, str] = dataclasses.field(default_factory=dict)  # bench → unit
  gflops: dict[str, tuple[np.ndarray, float]] = dataclasses.field(
      default_factory=dict)                          # quality model → (per exit [L], fusion)
  samples: dict[tuple[str, str, str], np.ndarray] = dataclasses.field(
      default_factory=dict)                          # (bench, fr, mode) → bootstrap pAUC [S, B, F]
  score_files: list[external.ExternalScores] = dataclasses.field(default_factory=list)


def evaluate(config, benchmarks: Sequence[Benchmark], quality: Sequence[QualitySpec],
             extra_columns: Callable[[Benchmark], Mapping[str, tuple[str, np.ndarray]]]
             | None = None, scores: Sequence[external.ExternalScores] = ()) -> EvalRun:
  """Runs every stage for every benchmark × FR model × mode; returns what the report needs.
  `scores`: other methods' score files (evaluation/external.py), matched to every benchmark's
  images before the first stage."""
  frs = fr_items(config, quality)
  for mode in config.eval.modes:
    if mode not in edc.MODES:
      raise ValueError(f"config.eval.modes: unknown mode {mode!r}; use {edc.MODES}")
  checks.check_eval_config(config)
  if config.eval.get("groups", ""):          # a bad CSV fails before the first stage
    groups_lib.read_groups_csv(config.eval.groups)
  if not quality and not scores:
    raise ValueError(f"nothing to evaluate: pass a quality model or a score file in "
                     f"{external.FLAG}")
  units, listed, scored = {}, {}, {}
  for bench in benchmarks:       # every protocol problem before the first expensive stage
    checks.check_protocol(bench)
    checks.check_precomputed(bench, frs)
    units[bench.name] = checks.bootstrap_unit(bench, config)
    if scores:                   # every score file against every benchmark's image names
      listed[bench.name] = image_names(bench, 0, bench.num_images)
      scored[bench.name] = {e.name: (external.KIND, e.image_quality(bench.name,
                                                                    listed[bench.name]))
                            for e in scores}
  if parallel.is_writer():
    files.check_output_dir(config.output)
  cache = stages.StageCache(os.path.join(config.output, "cache"),
                            progress=config.get("progress", True))
  run = EvalRun([], {}, {}, {}, cache, {}, bootstrap_units=units, gflops=gflops_table(quality),
                score_files=list(scores))
  for bench in benchmarks:
    t0 = time.time()
    logging.info("benchmark %s: %d images, %d comparisons (%s pairs)", bench.name,
                 bench.num_images, len(bench.is_genuine), bench.pair_kind)
    qst = {q.name: quality_stage(cache, bench, q, config) for q in quality}
    fst = {fr: embed_stage(cache, bench, fr, path, quality, config) for fr, path in frs}
    check_unchanged(bench)                   # what the stages read is what was identified
    names = check_same_images(bench, {f"quality model {k}": v for k, v in qst.items()},
                              {f"FR model {k}": v for k, v in fst.items()},
                              None if qst else listed[bench.name])
    extra = {**scored.get(bench.name, {}), **(extra_columns(bench) if extra_columns else {})}
    cols, image_q = quality_columns(quality, qst, extra, bench.num_images, config.seed)
    deps_q = {"stages": {k: v for k, v in qst.items()},
              "extra": {k: np.asarray(v[1]) for k, v in extra.items()},
              **({"score_files": {e.name: e.identity() for e in scores}} if scores else {})}
    labels = groups_lib.image_labels(bench, names, config.eval.get("groups", "") or "")
    for fr, _ in frs:
      _evaluate_fr(run, bench, fr, fst[fr], cols, image_q, deps_q, labels, config)
    run.quality[bench.name], run.columns[bench.name] = qst, (cols, image_q)
    run.names[bench.name] = names
    run.seconds[bench.name] = time.time() - t0
  return run


def _evaluate_fr(run: EvalRun, bench: Benchmark, fr: str, emb: stages.Stage,
                 cols: list[results.QualityColumn], image_q: np.ndarray,
                 deps_q: Mapping[str, Any], labels: Mapping[str, np.ndarray], config) -> None:
  """One benchmark × FR model: comparisons, then per mode the EDC stage, the paired
  comparisons and the per-group EDC, added to `run`."""
  cmp = compare_stage(run.cache, bench, fr, emb)
  alpha = float(config.eval.get("alpha", 0.05))
  modes_eval = {}
  for mode in config.eval.modes:
    st = edc_stage(run.cache, bench, fr, mode, cmp, cols, image_q, deps_q, config,
                   run.bootstrap_units[bench.name])
    modes_eval[mode] = mode_eval(st, mode, float(config.eval.pauc_limit[mode]))
    run.bands[(bench.name, fr, mode)] = (st["band_low"], st["band_high"])
    run.samples[(bench.name, fr, mode)] = st["samples"]
    if config.eval.get("paired", True) and st["samples"].shape[1] > 0:
      run.paired += paired_columns.compare_columns(bench.name, fr, mode, cols, config.eval.fmrs,
                                                   st["pauc"], np.moveaxis(st["samples"], 1, 0),
                                                   alpha)
    for grouping, lab in labels.items():       # per-group EDC (docs/evaluation.md)
      ge = groups_lib.group_stage(run.cache, bench, fr, mode, cmp, cols, image_q, deps_q,
                                  grouping, lab, pair_quality_fn(bench, cmp), config)
      run.groups += [ge] if ge is not None else []
  run.sanity.append({"benchmark": bench.name, "fr_model": fr, **verification.fr_sanity(
      bench.pair_kind, cmp["scores"], cmp["is_genuine"])})
  run.results.append(results.BenchmarkEval(
      bench.name, fr, cols, np.asarray(config.eval.fmrs, np.float64), modes_eval,
      len(bench.is_genuine), int(bench.is_genuine.sum())))


def gflops_table(quality: Sequence[QualitySpec]) -> dict[str, tuple[np.ndarray, float]]:
  out = {}
  for spec in quality:
    if spec.model.has_exits:
      try:
        out[spec.name] = models.gflops(spec.model.model_config, exit=spec.exit)
      except (ImportError, AttributeError, TypeError, ValueError) as e:
        logging.warning("no GFLOPs for %s: %s", spec.name, e)
  return out


