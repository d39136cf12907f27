"""Task "eval": quality at every exit → FR comparisons → EDC / pAUC → reports (configs/eval_*.py).

Per benchmark, each a cached stage (exfiqa_jax/stages.py; a killed run resumes, a changed
config recomputes only what depends on it):
  quality/<bench>/<model>   every quality model, one pass per image: exit_scores [I, L],
                            ex_fiqa_f, ex_fiqa_fw [I], attn_scores [I, L], image names
  embed/<bench>/<fr>        FR embeddings with the flip convention (exfiqa_jax/embed.py), or a
                            precomputed .npy, or the quality model's own feature head
  compare/<bench>/<fr>      cosine comparison scores of the pairs, or of the IJB-C templates
                            (media-averaged, summed, L2-normalised; SPEC-EDC §2.4)
  edc/<bench>/<fr>/<mode>   EDC of every quality column (+ the seeded `random` baseline) × FMR,
                            pAUC with bootstrap CIs
then the reports (exfiqa_jax/report.py) and <bench>/scores_<model>.csv. Images are decoded on
every host for its own rows of each global batch and the model runs sharded over all devices;
only process 0 writes.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from exfiqa_jax import edc, io, parallel, report, stages
from exfiqa_jax.data import pipeline

PRECOMPUTED = "precomputed:"
SELF_FR = "quality_model"
IMAGE_BENCHMARKS = ("lfw", "agedb_30", "cfp_fp", "calfw", "cplfw", "xqlfw", "adience")


# ------------------------------------------------------------------------------------------
# Benchmarks: images + protocol
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Benchmark:
  """Images in a fixed order and the comparison protocol over them.

  pair_kind "image": pairs [P, 2] image rows; "template" (IJB-C): template_pairs [P, 2] raw
  template ids, template_ids / media_ids [I]. `identity` fingerprints the data (what a cached
  stage depends on); `extra` holds per-image arrays a caller may use (e.g. severity).
  """
  name: str
  num_images: int
  read: Callable[[np.ndarray], tuple[np.ndarray, list[str]]]   # rows → (uint8 [k,112,112,3], names)
  pair_kind: str
  is_genuine: np.ndarray
  identity: dict[str, Any]
  pairs: np.ndarray | None = None
  template_pairs: np.ndarray | None = None
  template_ids: np.ndarray | None = None
  media_ids: np.ndarray | None = None
  extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def array_benchmark(name: str, images: np.ndarray, names: Sequence[str], pairs: np.ndarray,
                    is_genuine: np.ndarray, extra: Mapping[str, np.ndarray] | None = None
                    ) -> Benchmark:
  """An in-memory benchmark (synthetic data, tests): images uint8 [I, 112, 112, 3]."""
  images = np.asarray(images)
  names = [str(n) for n in names]
  if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(names):
    raise ValueError(f"images must be uint8 [I, H, W, 3] with one name each, got {images.dtype} "
                     f"{images.shape} and {len(names)} names")
  ident = {"kind": "arrays", "images": images, "names": names, "pairs": np.asarray(pairs),
           "is_genuine": np.asarray(is_genuine)}
  return Benchmark(name, len(images), lambda rows: (images[rows], [names[r] for r in rows]),
                   "image", np.asarray(is_genuine, bool), ident,
                   pairs=np.asarray(pairs, np.int64), extra=dict(extra or {}))


def _source_reader(source) -> Callable[[np.ndarray], tuple[np.ndarray, list[str]]]:
  def read(rows):
    records = source.__getitems__([int(r) for r in rows])
    if not records:
      return np.zeros((0, 112, 112, 3), np.uint8), []
    return np.stack([r["image"] for r in records]), [str(r["name"]) for r in records]
  return read


def manual_dir_key(name: str) -> str:
  """The config field of a benchmark under data.manual_dirs (config keys cannot hold . or /)."""
  return name.replace(".", "_").replace("/", "_")


def _manual_dir(config, name: str) -> str | None:
  per = config.data.get("manual_dirs", None)
  value = (per.get(manual_dir_key(name), "") if per is not None else "") or config.data.get("manual_dir", "")
  if value and not os.path.isdir(os.path.expanduser(value)):
    raise FileNotFoundError(
        f"data folder {value} for {name} does not exist; pass --config.data.manual_dir=<folder "
        f"with the {name} files> (or --config.data.manual_dirs.{manual_dir_key(name)}=...)")
  return os.path.expanduser(value) if value else None


def open_benchmark(name: str, config) -> Benchmark:
  """A benchmark from the TFDS builders (built on first use from config.data.manual_dir)."""
  from exfiqa_jax.data import builders
  options: dict[str, Any] = {}
  if config.data.get("skip_corrupt", False):
    options["skip_corrupt"] = True
  if name == "ijbc":
    builder = "ijbc"
    if config.data.get("subset", 0):
      options["subset"] = int(config.data.subset)
  elif name in builders.REGISTRY or name in builders.ALIASES or "/" in name:
    builder = name
  else:                                   # any <name>.bin in manual_dir
    builder = f"verification_bin/{name[:-4] if name.endswith('.bin') else name}"
  data_dir = os.path.expanduser(config.data.get("data_dir", "")) or None
  source, info = builders.load(builder, _manual_dir(config, name), data_dir, decode=True,
                               channel_order=config.data.get("channel_order", "") or None,
                               **options)
  if info.pairs is None:
    raise ValueError(f"{name} ({info.name}/{info.config}) has no comparison protocol (pairs); "
                     "it cannot be evaluated with EDC")
  ident = {"kind": "tfds", "directory": info.directory, "config": info.config,
           "records": info.num_records, "channel_order": info.channel_order,
           "image_ids": np.asarray(info.image_ids)}
  gen = np.asarray(info.pairs["is_genuine"], bool)
  if info.pair_kind == "template":
    return Benchmark(name, info.num_records, _source_reader(source), "template", gen, ident,
                     template_pairs=np.stack([info.pairs["template_a"],
                                              info.pairs["template_b"]], 1),
                     template_ids=np.asarray(info.record_arrays["template_id"]),
                     media_ids=np.asarray(info.record_arrays["media_id"]))
  return Benchmark(name, info.num_records, _source_reader(source), "image", gen, ident,
                   pairs=np.stack([info.pairs["index_a"], info.pairs["index_b"]], 1))


def _images(bench: Benchmark) -> pipeline.Reader:
  """The benchmark's rows as a pipeline reader (images only; names are read once per chunk)."""
  return lambda rows: bench.read(rows)[0]


def _names(bench: Benchmark, lo: int, hi: int) -> np.ndarray:
  """Names of rows [lo, hi) (read on every host: cheap next to decoding)."""
  return np.asarray(bench.read(np.arange(lo, hi))[1] if hi > lo else [], dtype=str)


# ------------------------------------------------------------------------------------------
# Quality models and FR models from the config
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class QualitySpec:
  name: str
  path: str
  model: Any            # api.QualityModel


def parse_named_list(value: str) -> list[tuple[str, str]]:
  """"a=path1,path2" → [("a", "path1"), (basename, "path2")]."""
  out = []
  for item in [v.strip() for v in str(value or "").split(",") if v.strip()]:
    if "=" in item and not item.startswith(PRECOMPUTED):
      name, path = item.split("=", 1)
    else:
      path = item
      base = item[len(PRECOMPUTED):] if item.startswith(PRECOMPUTED) else item
      name = os.path.splitext(os.path.basename(os.path.normpath(base)))[0] or base
    out.append((name.strip(), path.strip()))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f"duplicate model names in {value!r}; name them: name1=path1,name2=path2")
  return out


def load_quality_models(config) -> list[QualitySpec]:
  from exfiqa_jax import api
  items = parse_named_list(config.get("checkpoint", ""))
  if not items:
    raise ValueError("no quality model: pass --config.checkpoint=<converted dir or .pt> (several "
                     "as name1=path1,name2=path2)")
  specs = []
  for name, path in items:
    path = os.path.expanduser(path)
    if not os.path.exists(path):
      raise FileNotFoundError(f"quality checkpoint {path} does not exist; pass "
                              "--config.checkpoint=<converted directory or PyTorch .pt>")
    model = api.load(path, num_heads=config.model.num_heads,
                     family=config.model.get("family", "") or None, batch_size=config.batch_size)
    specs.append(QualitySpec(name, os.path.abspath(path), model))
  return specs


def _fr_items(config, quality: Sequence[QualitySpec]) -> list[tuple[str, str]]:
  value = config.get("fr_model", "")
  if not value:
    raise ValueError(f"no FR model: pass --config.fr_model=<converted FR dir or .pt>, "
                     f"'{PRECOMPUTED}<embeddings.npy>' (rows in image order) or '{SELF_FR}' (the "
                     "quality model's own feature head)")
  out = []
  for name, path in parse_named_list(value):
    if path == SELF_FR or path.startswith(SELF_FR + ":"):
      which = path.split(":", 1)[1] if ":" in path else quality[0].name
      if which not in [q.name for q in quality]:
        raise ValueError(f"fr_model {path!r}: no quality model named {which!r} "
                         f"(have {[q.name for q in quality]})")
      out.append((SELF_FR if len(quality) == 1 else f"{SELF_FR}:{which}", path))
    elif path.startswith(PRECOMPUTED):
      file = os.path.expanduser(path[len(PRECOMPUTED):])
      if not os.path.isfile(file):
        raise FileNotFoundError(f"precomputed embeddings {file} do not exist; pass "
                                f"--config.fr_model={PRECOMPUTED}<embeddings.npy> (one row per "
                                "image, in the benchmark's image order)")
      out.append((f"{PRECOMPUTED}{name}", PRECOMPUTED + os.path.abspath(file)))
    else:
      if not os.path.exists(os.path.expanduser(path)):
        raise FileNotFoundError(f"FR model {path} does not exist; pass --config.fr_model=<a "
                                f"converted FR directory or PyTorch .pt>, '{PRECOMPUTED}<file.npy>' "
                                f"or '{SELF_FR}'")
      out.append((name, os.path.abspath(os.path.expanduser(path))))
  return out


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------
def _chunk(config) -> int:
  batch = parallel.round_up_to_devices(config.batch_size)
  return max(1, int(config.eval.get("chunk_images", 4096)) // batch) * batch


def quality_stage(cache: stages.StageCache, bench: Benchmark, spec: QualitySpec, config
                  ) -> stages.Stage:
  model = spec.model
  batch = model.batch_size
  deps = {"benchmark": bench.identity, "checkpoint": stages.file_identity(spec.path),
          "model_config": model.model_config, "num_heads": config.model.num_heads}

  def compute(lo, hi):
    parts = []
    for host in pipeline.host_batches(_images(bench), hi, batch, start=lo,
                                      workers=config.data.get("decode_threads", 4)):
      out = model.run_batch(host.images)
      parts.append({k: v[:host.num_rows] for k, v in out.items()
                    if k not in ("embedding", "attn_maps")})
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    arrays["name"] = _names(bench, lo, hi)
    return arrays

  return cache.run_chunked(f"quality/{bench.name}/{spec.name}", deps, bench.num_images,
                           _chunk(config), compute)


def embed_stage(cache: stages.StageCache, bench: Benchmark, fr_name: str, fr_path: str,
                quality: Sequence[QualitySpec], config) -> stages.Stage:
  from exfiqa_jax import embed
  convention = embed.check_convention(config.fr.get("convention", "concat"))
  if fr_path.startswith(PRECOMPUTED):
    file = fr_path[len(PRECOMPUTED):]
    deps = {"benchmark": bench.identity, "file": stages.file_identity(file)}

    def load_precomputed():
      emb = np.load(file, mmap_mode="r")
      if emb.ndim != 2 or emb.shape[0] != bench.num_images:
        raise ValueError(f"precomputed embeddings {file} have shape {emb.shape}, but {bench.name} "
                         f"has {bench.num_images} images: the FR model and the quality model "
                         "disagree on the image list (one row per image, in the benchmark's order)")
      listed = os.path.join(os.path.dirname(file), "image_list.txt")
      names = None
      if os.path.exists(listed):       # written by the embed task beside embeddings.npy
        with open(listed, encoding="utf-8") as f:
          names = np.asarray([line.split()[0] for line in f if line.strip()], dtype=str)
      return {"embedding": np.asarray(emb, np.float32),
              **({"name": names} if names is not None else {})}

    return cache.run(f"embed/{bench.name}/{_slug(fr_name)}", deps, load_precomputed)

  if fr_path == SELF_FR or fr_path.startswith(SELF_FR + ":"):
    which = fr_path.split(":", 1)[1] if ":" in fr_path else quality[0].name
    spec = next(q for q in quality if q.name == which)
    module, variables = spec.model.module, spec.model.variables
    input_scale = "minus1_1"
    ident = {"quality_model": stages.file_identity(spec.path),
             "model_config": spec.model.model_config}
  else:
    module, variables, fr_config = embed.load_fr_model(
        fr_path, config.fr.get("family", "") or None, config.fr.get("normalisation", "") or None,
        config.fr.get("num_heads", 0) or None)
    variables = embed.replicate(variables)
    input_scale = fr_config["input_scale"]
    ident = {"fr_model": stages.file_identity(fr_path), "model_config": fr_config}
  embed_fn = embed.make_embed_fn(module, convention, input_scale)
  batch = parallel.round_up_to_devices(int(config.fr.get("batch_size", config.batch_size)))
  deps = {"benchmark": bench.identity, **ident, "convention": convention,
          "input_scale": input_scale}

  def compute(lo, hi):
    parts = []
    for step in pipeline.global_batches(_images(bench), hi, batch, start=lo,
                                        workers=config.data.get("decode_threads", 4)):
      out = parallel.global_to_host(embed_fn(variables, step.images))
      parts.append(out[:step.num_rows])
    return {"embedding": np.concatenate(parts).astype(np.float32),
            "name": _names(bench, lo, hi)}

  return cache.run_chunked(f"embed/{bench.name}/{_slug(fr_name)}", deps, bench.num_images,
                           _chunk(config), compute)


def check_same_images(bench: Benchmark, quality: Mapping[str, stages.Stage],
                      fr: Mapping[str, stages.Stage]) -> np.ndarray:
  """The image names every quality and FR stage saw; any disagreement is an error."""
  ref_name, ref = next(iter(quality.items()))
  names = ref["name"]
  for label, stage in list(quality.items())[1:] + list(fr.items()):
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
                                         "pairs": bench.pairs, "template_pairs": bench.template_pairs,
                                         "template_ids": bench.template_ids,
                                         "media_ids": bench.media_ids}}

  def compute():
    if bench.pair_kind == "image":
      scores = edc.pair_scores(emb["embedding"], bench.pairs)
      return {"scores": scores, "is_genuine": bench.is_genuine}
    feats, index = edc.aggregate_templates(emb["embedding"], bench.template_ids, bench.media_ids)
    rows = index.pair_rows(bench.template_pairs)
    return {"scores": edc.pair_scores(feats, rows), "is_genuine": bench.is_genuine,
            "pair_rows": rows, "template_index": index.template_index,
            "num_templates": np.asarray(index.templates.size)}

  return cache.run(f"compare/{bench.name}/{_slug(fr_name)}", deps, compute)


def quality_columns(quality: Sequence[QualitySpec], qstages: Mapping[str, stages.Stage],
                    extra: Mapping[str, tuple[str, np.ndarray]], num_images: int, seed: int
                    ) -> tuple[list[report.QualityColumn], np.ndarray]:
  """Every quality column and its image qualities [S, I]: per model exit_1..L, fusions,
  attn_1..L; the caller's extra columns; and `random` (seeded)."""
  prefix = len(quality) > 1
  cols, values = [], []
  for spec in quality:
    st = qstages[spec.name]
    has_exits = "exit_scores" in st.arrays
    num_exits = st["attn_scores"].shape[1]
    for col in report.column_set(spec.name, num_exits, prefix, has_exits):
      cols.append(col)
      if col.kind == "exit":
        values.append(st["exit_scores"][:, col.exit - 1])
      elif col.kind == "attn":
        values.append(st["attn_scores"][:, col.exit - 1])
      else:
        values.append(st[col.name.rsplit("/", 1)[-1]])
  for name, (kind, v) in extra.items():
    cols.append(report.QualityColumn(name, kind))
    values.append(np.asarray(v, np.float32))
  cols.append(report.QualityColumn(report.RANDOM, "random"))
  values.append(report.random_quality(num_images, seed))
  return cols, np.stack(values).astype(np.float32)


def pair_quality_fn(bench: Benchmark, cmp: stages.Stage) -> Callable[[np.ndarray], np.ndarray]:
  """image qualities [S, I] → pair qualities [S, P] (IJB-C: template min, then pair min)."""
  if bench.pair_kind == "image":
    return lambda q: edc.image_to_pair_quality(q, bench.pairs)
  rows = cmp["pair_rows"]
  index = edc.TemplateIndex(np.arange(int(cmp["num_templates"])), cmp["template_index"],
                            cmp["template_index"], np.arange(int(cmp["num_templates"])))

  def fn(q):
    tq = edc.template_quality(q, index)
    return edc.pair_quality(tq[:, rows[:, 0]], tq[:, rows[:, 1]])
  return fn


def edc_stage(cache: stages.StageCache, bench: Benchmark, fr_name: str, mode: str,
              cmp: stages.Stage, cols: Sequence[report.QualityColumn], image_q: np.ndarray,
              deps_q: Mapping[str, Any], config) -> stages.Stage:
  fmrs = tuple(float(f) for f in config.eval.fmrs)
  limit = float(config.eval.pauc_limit[mode])
  resamples = int(config.eval.get("bootstrap", 0))
  deps = {"compare": cmp, "quality": deps_q, "columns": [dataclasses.asdict(c) for c in cols],
          "fmrs": fmrs, "mode": mode, "limit": limit, "bootstrap": resamples,
          "alpha": float(config.eval.get("alpha", 0.05)), "seed": int(config.seed),
          }
  to_pairs = pair_quality_fn(bench, cmp)

  def compute():
    # Quality sets per EDC call: all of them for small benchmarks, `set_group` at IJB-C scale
    # (memory); every call gets the same number of rows (the last group is padded by repeating
    # its last row), so the EDC and bootstrap programs compile once.
    n_pairs = len(cmp["scores"])
    group = min(len(cols), max(int(config.eval.get("set_group", 8)), (1 << 22) // n_pairs))
    parts = []
    for lo in range(0, len(cols), group):
      rows = image_q[lo:lo + group]
      real = len(rows)
      if real < group:
        rows = np.concatenate([rows, np.repeat(rows[-1:], group - real, axis=0)])
      pq = to_pairs(rows)
      curves = edc.edc_curves(cmp["scores"], cmp["is_genuine"], pq, fmrs, edc.FIQA_DISCARD, mode,
                              pauc_limit=limit)
      if resamples > 0:
        _, low, high = edc.pauc_ci(cmp["scores"], cmp["is_genuine"], pq, fmrs, edc.FIQA_DISCARD,
                                   mode, limit, num_resamples=resamples, seed=int(config.seed),
                                   alpha=float(config.eval.get("alpha", 0.05)))
      else:
        low = high = np.full_like(curves.pauc, np.nan)
      parts.append({k: v[:real] for k, v in dict(
          fnmr=curves.fnmr, threshold=curves.threshold, n_genuine=curves.n_genuine,
          n_impostor=curves.n_impostor, discarded=curves.discarded, pauc=curves.pauc,
          ci_low=low, ci_high=high).items()})
      logging.info("EDC %s/%s/%s: %d/%d quality columns", bench.name, fr_name, mode,
                   min(lo + group, len(cols)), len(cols))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["fmrs"], out["discard"] = np.asarray(fmrs), np.asarray(edc.FIQA_DISCARD)
    out["quality"] = np.asarray([c.name for c in cols])
    return out

  return cache.run(f"edc/{bench.name}/{_slug(fr_name)}/{mode}", deps, compute)


def mode_eval(stage: stages.Stage, mode: str, limit: float) -> report.ModeEval:
  a = stage.arrays
  curves = edc.EdcCurves(mode, a["fmrs"], a["discard"], a["fnmr"], a["threshold"],
                         a["n_genuine"], a["n_impostor"], a["discarded"], a["pauc"])
  return report.ModeEval(mode, limit, curves, a["pauc"], a["ci_low"], a["ci_high"])


def _slug(text: str) -> str:
  return report._slug(text)


# ------------------------------------------------------------------------------------------
# One whole evaluation
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalRun:
  results: list[report.BenchmarkEval]
  quality: dict[str, dict[str, stages.Stage]]        # benchmark → model → stage
  columns: dict[str, tuple[list[report.QualityColumn], np.ndarray]]   # benchmark → (cols, [S, I])
  names: dict[str, np.ndarray]
  cache: stages.StageCache
  seconds: dict[str, float]


def evaluate(config, benchmarks: Sequence[Benchmark], quality: Sequence[QualitySpec],
             extra_columns: Callable[[Benchmark], Mapping[str, tuple[str, np.ndarray]]]
             | None = None) -> EvalRun:
  """Runs every stage for every benchmark × FR model × mode; returns what the report needs."""
  cache = stages.StageCache(os.path.join(config.output, "cache"),
                            progress=config.get("progress", True))
  fr_items = _fr_items(config, quality)
  modes = tuple(config.eval.modes)
  for mode in modes:
    if mode not in edc.MODES:
      raise ValueError(f"config.eval.modes: unknown mode {mode!r}; use {edc.MODES}")
  results, qall, colmap, namemap, seconds = [], {}, {}, {}, {}
  for bench in benchmarks:
    t0 = time.time()
    logging.info("benchmark %s: %d images, %d comparisons (%s pairs)", bench.name,
                 bench.num_images, len(bench.is_genuine), bench.pair_kind)
    qst = {q.name: quality_stage(cache, bench, q, config) for q in quality}
    fst = {fr: embed_stage(cache, bench, fr, path, quality, config) for fr, path in fr_items}
    names = check_same_images(bench, {f"quality model {k}": v for k, v in qst.items()},
                              {f"FR model {k}": v for k, v in fst.items()})
    extra = dict(extra_columns(bench)) if extra_columns else {}
    cols, image_q = quality_columns(quality, qst, extra, bench.num_images, config.seed)
    deps_q = {"stages": {k: v for k, v in qst.items()},
              "extra": {k: np.asarray(v[1]) for k, v in extra.items()}}
    for fr, _ in fr_items:
      cmp = compare_stage(cache, bench, fr, fst[fr])
      modes_eval = {}
      for mode in modes:
        st = edc_stage(cache, bench, fr, mode, cmp, cols, image_q, deps_q, config)
        modes_eval[mode] = mode_eval(st, mode, float(config.eval.pauc_limit[mode]))
      results.append(report.BenchmarkEval(bench.name, fr, cols, np.asarray(config.eval.fmrs,
                                                                            np.float64),
                                          modes_eval, len(bench.is_genuine),
                                          int(bench.is_genuine.sum())))
    qall[bench.name], colmap[bench.name], namemap[bench.name] = qst, (cols, image_q), names
    seconds[bench.name] = time.time() - t0
  return EvalRun(results, qall, colmap, namemap, cache, seconds)


def write_scores(output: str, run: EvalRun, quality: Sequence[QualitySpec]) -> None:
  """<output>/<benchmark>/scores_<model>.csv in the DESIGN scores.csv contract."""
  from exfiqa_jax import score
  for bench, per_model in run.quality.items():
    for spec in quality:
      st = per_model[spec.name]
      io.write_text(os.path.join(output, _slug(bench), f"scores_{_slug(spec.name)}.csv"),
                    score.score_table(list(st["name"]), st.arrays, "exit_scores" in st.arrays))


def attention_examples(output: str, bench: Benchmark, run: EvalRun,
                       quality: Sequence[QualitySpec], count: int) -> list[str]:
  """Overlays of the `count` highest- and lowest-quality images per quality model."""
  if count <= 0 or jax.process_count() > 1:
    return []
  written = []
  for spec in quality:
    st = run.quality[bench.name][spec.name]
    q = st["exit_scores"][:, -1] if "exit_scores" in st.arrays else st["attn_scores"][:, -1]
    order = np.argsort(-q, kind="stable")
    k = min(count, len(q) // 2)
    rows = np.concatenate([order[:k], order[::-1][:k][::-1]])
    images, _ = bench.read(rows)
    out = spec.model.score(images, attn_maps=True)
    maps = out["attn_maps"][:, -1]
    n = maps.shape[-1]
    if int(round(np.sqrt(n))) ** 2 != n:       # a quality token first: keep the patches
      maps = maps[:, 1:]
    labels = [f"high #{i + 1}" for i in range(k)] + [f"low #{k - i}" for i in range(k)]
    written.append(report.plot_attention(
        os.path.join(output, "plots", f"attention_{_slug(bench.name)}_{_slug(spec.name)}.png"),
        images, maps, q[rows], f"{bench.name}, {spec.name}: last-block attention, highest "
        "(left) and lowest (right) quality", labels))
  return written


def gflops_table(quality: Sequence[QualitySpec]) -> dict[str, tuple[np.ndarray, float]]:
  out = {}
  for spec in quality:
    if spec.model.has_exits:
      try:
        out[spec.name] = report.gflops_per_exit(spec.model.model_config)
      except (ImportError, AttributeError, TypeError, ValueError) as e:
        logging.warning("no GFLOPs for %s: %s", spec.name, e)
  return out


def write_report(config, run: EvalRun, benchmarks: Sequence[Benchmark],
                 quality: Sequence[QualitySpec], extra: Mapping[str, Any] | None = None,
                 title: str = "EDC evaluation", notes: Sequence[str] = (),
                 footer: Sequence[str] = ()) -> dict[str, Any]:
  """Every output file (process 0 only); `footer` lines go under the tables of summary.md."""
  if not parallel.is_writer():
    return {}
  output = config.output
  gflops = gflops_table(quality)
  summary_extra = {"fmrs": [float(f) for f in config.eval.fmrs],
                   "modes": list(config.eval.modes),
                   "pauc_limit": {m: float(config.eval.pauc_limit[m]) for m in config.eval.modes},
                   "bootstrap": int(config.eval.get("bootstrap", 0)),
                   "quality_models": {q.name: q.path for q in quality},
                   "gflops_per_exit": {k: [round(float(x), 4) for x in v[0]]
                                       for k, v in gflops.items()},
                   "gflops_fusion": {k: round(v[1], 4) for k, v in gflops.items()},
                   "seconds_per_benchmark": run.seconds, **(extra or {})}
  paths = report.write_tables(output, run.results, summary_extra, title, notes,
                              list(report.gflops_markdown(gflops)) + list(footer))
  write_scores(output, run, quality)
  plots = []
  if config.report.get("plots", True):
    plots = report.write_plots(output, run.results, gflops)
    for bench in benchmarks:
      plots += attention_examples(output, bench, run, quality,
                                  int(config.report.get("attention_examples", 4)))
  return {**paths, "plots": plots}


def benchmark_names(config) -> list[str]:
  names = [b.strip() for b in str(config.benchmarks).split(",") if b.strip()]
  if not names:
    raise ValueError("no benchmark: pass e.g. --config=configs/eval_verification.py:lfw,agedb_30")
  return names


def run(config) -> dict[str, Any]:
  """Task "eval" (configs/eval_ijbc.py, configs/eval_verification.py)."""
  started = time.time()
  quality = load_quality_models(config)
  _fr_items(config, quality)                     # bad FR input fails before any data work
  benchmarks = [open_benchmark(name, config) for name in benchmark_names(config)]
  ev = evaluate(config, benchmarks, quality)
  out = write_report(config, ev, benchmarks, quality,
                     extra={"seconds_total": round(time.time() - started, 1)})
  logging.info("evaluation written to %s (%.1f s)", config.output, time.time() - started)
  return {**out, "results": ev.results, "computed": ev.cache.computed()}
