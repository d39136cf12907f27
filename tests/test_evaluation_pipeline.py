"""Task "eval" end to end on a miniature .bin benchmark and a miniature IJB-C, with tiny random
models: every file, numbers equal to an independent recomputation with the EDC engine, cached
stages (nothing recomputed; a changed field recomputes only its dependants), resume after a
kill, and the errors for bad input."""
from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest

from configs import eval_ijbc, eval_verification
from exfiqa_jax import embedding, inference
from exfiqa_jax.metrics import comparisons, edc
from exfiqa_jax.evaluation import stages
from exfiqa_jax.report import tables
from exfiqa_jax.tasks import eval as evaluate
from exfiqa_jax.testing import worlds
from exfiqa_jax.testing.subproc import run_python


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return worlds.build_world(tmp_path_factory.mktemp("eval"))


def _bin_config(world, output, **over):
  return worlds.bin_config(eval_verification.get_config("benchmarks=mini,size=tiny"), world,
                           output, **over)


@pytest.fixture(scope="module")
def bin_run(world):
  output = pathlib.Path(world["root"]) / "out_bin"
  result = evaluate.run(_bin_config(world, output))
  return output, result


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_bin_every_file_and_engine_numbers(world, bin_run):
  output, result = bin_run
  for name in ("edc.csv", "pauc.csv", "summary.json", "summary.md", "mini/scores_q_token.csv",
               "plots/edc_mini_fr_fiqa.png", "plots/edc_mini_fr_iso.png",
               "plots/pauc_vs_gflops_fr_fiqa.png", "plots/attention_mini_q_token.png"):
    assert os.path.getsize(output / name) > 0, name
  # Independent recomputation: quality from the API, embeddings with embed_images (concat flip),
  # cosine scores, then the EDC engine.
  from exfiqa_jax.data import builders, protocols
  source, info = builders.load("verification_bin/mini", None, world["data_dir"], decode=True,
                               **protocols.build_options("verification_bin", "published"))
  images = np.stack([r["image"] for r in source])
  q = inference.load(world["token"], batch_size=8).score(images)
  module, variables, cfg = inference.load_fr_model(world["fr"])
  emb = embedding.embed_images(module, variables, images, "concat", cfg["input_scale"], 8)
  pairs = np.stack([info.pairs["index_a"], info.pairs["index_b"]], 1)
  feats = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  scores = np.sum(feats[pairs[:, 0]] * feats[pairs[:, 1]], 1)
  image_q = np.concatenate([q["exit_scores"].T, q["ex_fiqa_f"][None], q["ex_fiqa_fw"][None],
                            q["attn_scores"].T, comparisons.random_quality(len(images), 0)[None]])
  names = [f"exit_{l}" for l in (1, 2, 3)] + ["ex_fiqa_f", "ex_fiqa_fw"] + [
      f"attn_{l}" for l in (1, 2, 3)] + ["random"]
  pq = np.minimum(image_q[:, pairs[:, 0]], image_q[:, pairs[:, 1]])
  rows = {(r["quality"], r["mode"], float(r["fmr"])): r
          for r in tables.read_csv(output / "pauc.csv")}
  for mode, limit in (("fiqa", 0.3), ("iso", 0.2)):
    ref = edc.edc_curves(scores, info.pairs["is_genuine"], pq, (1e-2, 1e-3, 1e-4),
                         edc.FIQA_DISCARD, mode, pauc_limit=limit)
    for s, name in enumerate(names):
      for f, fmr in enumerate((1e-2, 1e-3, 1e-4)):
        assert float(rows[(name, mode, fmr)]["pauc"]) == pytest.approx(ref.pauc[s, f],
                                                                      abs=1e-6)
  # Scores CSV follows the scores.csv contract (docs/evaluation.md).
  header = _read(output / "mini" / "scores_q_token.csv").splitlines()[0].split(",")
  assert header == (["image", "exit_1", "exit_2", "exit_3", "ex_fiqa_f", "ex_fiqa_fw"]
                    + ["attn_1", "attn_2", "attn_3"])
  assert "| random |" in _read(output / "summary.md")


def test_cached_rerun_and_targeted_invalidation(world, bin_run, tmp_path):
  reference, _ = bin_run
  output = tmp_path / "copy"                              # this test's own copy of the run
  shutil.copytree(reference, output)
  before = {n: _read(output / n) for n in ("edc.csv", "pauc.csv")}
  again = evaluate.run(_bin_config(world, output))
  assert again["computed"] == []                          # every stage loaded
  assert {n: _read(output / n) for n in before} == before
  changed = evaluate.run(_bin_config(world, output, **{"eval.alpha": 0.1}))
  assert sorted(changed["computed"]) == ["edc/mini/fr/fiqa", "edc/mini/fr/iso"]
  assert {n: _read(output / n) for n in before}["edc.csv"] == before["edc.csv"]


KILLED_RUN = """
import os
from configs import eval_verification
from exfiqa_jax.evaluation import stages
from exfiqa_jax.tasks import eval as evaluate
from exfiqa_jax.testing import worlds

def kill(name):
  if name == {stop!r}:
    os._exit(137)           # like SIGKILL: no cleanup, no outputs
stages.StageCache.after_stage = kill
evaluate.run(worlds.bin_config(eval_verification.get_config("benchmarks=mini,size=tiny"),
                               {world!r}, {output!r}))
"""


def test_resume_after_kill(world, bin_run, tmp_path):
  """A run dies (os._exit, a hook after the first stage is stored); the rerun loads that stage,
  computes the rest and writes the same numbers as an uninterrupted run."""
  output = tmp_path / "out"
  with pytest.raises(AssertionError, match="subprocess failed \\(137\\)"):
    run_python(KILLED_RUN.format(stop="quality/mini/q_token", world=world, output=str(output)),
               devices=1)
  first_stage = output / "cache" / "quality" / "mini" / "q_token.npz"
  mtime = os.stat(first_stage).st_mtime_ns
  assert not (output / "pauc.csv").exists()
  resumed = evaluate.run(_bin_config(world, output))
  assert "quality/mini/q_token" not in resumed["computed"]
  assert os.stat(first_stage).st_mtime_ns == mtime
  events = stages.read_log(str(output / "cache"))
  assert any(e["stage"] == "quality/mini/q_token" and e["event"] == "cached" for e in events)
  reference, _ = bin_run
  for name in ("edc.csv", "pauc.csv", "mini/scores_q_token.csv"):
    assert _read(output / name) == _read(reference / name), name


def test_ijbc_two_quality_models_self_fr(world, tmp_path):
  config = eval_ijbc.get_config("size=tiny")
  config.quality_model.path = f"t={world['token']},c={world['crfiqa']}"
  config.fr.path = "quality_model:t"
  config.data.manual_dir = world["ijbc"]
  config.data.data_dir = world["data_dir"]
  config.output = str(tmp_path / "out")
  config.eval.bootstrap = 0
  config.progress = False
  evaluate.run(config)
  out = tmp_path / "out"
  for name in ("edc.csv", "pauc.csv", "summary.json", "summary.md", "ijbc/scores_t.csv",
               "ijbc/scores_c.csv", "plots/edc_ijbc_quality_model_t_fiqa.png",
               "plots/attention_ijbc_c.png"):
    assert os.path.getsize(out / name) > 0, name
  rows = tables.read_csv(out / "pauc.csv")
  names = {r["quality"] for r in rows}
  assert {"t/exit_1", "t/ex_fiqa_fw", "c/exit_3", "c/attn_3", "random"} <= names
  # Independent template aggregation in NumPy: media mean → sum → L2n; template quality = min.
  from exfiqa_jax.data import builders
  source, info = builders.load("ijbc", None, world["data_dir"], decode=True)
  images = np.stack([r["image"] for r in source])
  model = inference.load(world["token"], batch_size=8)
  emb = embedding.embed_images(model.module, model.variables, images, "concat", "minus1_1", 8)
  tids, mids = info.record_arrays["template_id"], info.record_arrays["media_id"]
  temps = np.unique(tids)
  tfeat = []
  for t in temps:
    media = [emb[(tids == t) & (mids == m)].mean(0) for m in np.unique(mids[tids == t])]
    v = np.sum(media, 0)
    tfeat.append(v / np.linalg.norm(v))
  tfeat = np.stack(tfeat)
  a = np.searchsorted(temps, info.pairs["template_a"])
  b = np.searchsorted(temps, info.pairs["template_b"])
  scores = np.sum(tfeat[a] * tfeat[b], 1)
  qc = inference.load(world["crfiqa"], batch_size=8).score(images)["exit_scores"][:, -1]
  tq = np.array([qc[tids == t].min() for t in temps])
  pq = np.minimum(tq[a], tq[b])
  ref = edc.edc_curves(scores, info.pairs["is_genuine"], pq[None], (1e-2, 1e-3, 1e-4),
                       edc.FIQA_DISCARD, "fiqa", pauc_limit=0.3)
  got = {float(r["fmr"]): float(r["pauc"]) for r in rows
         if r["quality"] == "c/exit_3" and r["mode"] == "fiqa"}
  np.testing.assert_allclose([got[f] for f in (1e-2, 1e-3, 1e-4)], ref.pauc[0], atol=1e-6)
  # A score file of per-image scores (c's exit_3, lower-is-better as written) becomes template
  # and pair quality by the same rule: its pAUC is c/exit_3's, bit for bit.
  scored = tables.read_csv(out / "ijbc" / "scores_c.csv")
  (tmp_path / "c.txt").write_text("".join(f"IJBC/loose_crop/{r['image']} {-float(r['exit_3'])!r}\n"
                                          for r in scored))
  config.quality_model.path += f",ext=scores:{tmp_path / 'c.txt'}"
  config.quality_model.lower_is_better = "ext"
  again = evaluate.run(config)
  assert not [s for s in again["computed"] if not s.startswith("edc/")]
  rows = tables.read_csv(out / "pauc.csv")
  pauc = {(r["quality"], r["mode"], r["fmr"]): r["pauc"] for r in rows}
  for (quality, mode, fmr), value in pauc.items():
    if quality == "c/exit_3":
      assert pauc[("ext", mode, fmr)] == value


def test_bad_inputs(world, tmp_path):
  with pytest.raises(ValueError, match="config.quality_model.path"):
    evaluate.run(_bin_config(world, tmp_path, **{"quality_model.path": ""}))
  with pytest.raises(FileNotFoundError, match="config.quality_model.path"):
    evaluate.run(_bin_config(world, tmp_path, **{"quality_model.path": str(tmp_path / "nope")}))
  with pytest.raises(ValueError, match="config.fr.path"):
    evaluate.run(_bin_config(world, tmp_path, **{"fr.path": ""}))
  with pytest.raises(FileNotFoundError, match="config.fr.path"):
    evaluate.run(_bin_config(world, tmp_path, **{"fr.path": str(tmp_path / "nope.pt")}))
  with pytest.raises(FileNotFoundError, match="config.data.manual_dir"):
    evaluate.run(_bin_config(world, tmp_path, **{"data.manual_dir": str(tmp_path / "none"),
                                                 "data.data_dir": str(tmp_path / "tfds")}))
  # Precomputed embeddings for another image list.
  emb_dir = tmp_path / "emb"
  emb_dir.mkdir()
  np.save(emb_dir / "embeddings.npy", np.random.default_rng(0).normal(size=(39, 8)))
  with pytest.raises(ValueError, match="disagree on the image list"):
    evaluate.run(_bin_config(world, tmp_path / "o1",
                             **{"fr.path": f"precomputed:{emb_dir / 'embeddings.npy'}"}))
  np.save(emb_dir / "embeddings.npy", np.random.default_rng(0).normal(size=(40, 8)))
  (emb_dir / "image_list.txt").write_text("".join(f"other_{i}.jpg\n" for i in range(40)))
  with pytest.raises(ValueError, match="disagree on the image list"):
    evaluate.run(_bin_config(world, tmp_path / "o2",
                             **{"fr.path": f"precomputed:{emb_dir / 'embeddings.npy'}"}))


def test_a_quality_method_beside_a_vitfiqa_model(world, tmp_path):
  """`name=method:path`: SER-FIQ on the FR model's iResNet beside the ViT-FIQA model — its column
  in pauc.csv equal to the EDC engine on `fx.load(..., method="serfiq")` scores, with bootstrap
  CIs, per-group EDC and the default pairs "our best against each method"; a changed method
  option recomputes that model's quality stage only."""
  label = "".join(f"{k:05d}.jpg,{'A' if (k // 2) % 4 < 2 else 'B'}\n" for k in range(40))
  (tmp_path / "groups.csv").write_text("image,group\n" + label)
  over = {"quality_model.path": f"ours={world['token']},sf=serfiq:{world['fr']}",
          "quality_model.serfiq.passes": 3, "eval.bootstrap": 8,
          "eval.groups": str(tmp_path / "groups.csv")}
  output = tmp_path / "out"
  evaluate.run(_bin_config(world, output, **over))
  from exfiqa_jax.data import builders, protocols
  source, info = builders.load("verification_bin/mini", None, world["data_dir"], decode=True,
                               **protocols.build_options("verification_bin", "published"))
  images = np.stack([r["image"] for r in source])
  q = inference.load(world["fr"], method="serfiq", passes=3, batch_size=8).score(images)
  module, variables, cfg = inference.load_fr_model(world["fr"])
  emb = embedding.embed_images(module, variables, images, "concat", cfg["input_scale"], 8)
  feats = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  pairs = np.stack([info.pairs["index_a"], info.pairs["index_b"]], 1)
  scores = np.sum(feats[pairs[:, 0]] * feats[pairs[:, 1]], 1)
  pq = np.minimum(q["serfiq"][pairs[:, 0]], q["serfiq"][pairs[:, 1]])[None]
  rows = {(r["quality"], r["mode"], float(r["fmr"])): r
          for r in tables.read_csv(output / "pauc.csv")}
  fmrs = (1e-2, 1e-3, 1e-4)
  for mode, limit in (("fiqa", 0.3), ("iso", 0.2)):
    ref = edc.edc_curves(scores, info.pairs["is_genuine"], pq, fmrs, edc.FIQA_DISCARD, mode,
                         pauc_limit=limit)
    for f, fmr in enumerate(fmrs):
      row = rows[("serfiq", mode, fmr)]
      assert float(row["pauc"]) == pytest.approx(ref.pauc[0, f], abs=1e-6)
      assert float(row["ci_low"]) <= float(row["ci_high"])
      ours = {k[0]: float(r["pauc"]) for k, r in rows.items() if k[1:] == (mode, fmr)
              and k[0].split("_")[0] in ("exit", "ex", "attn")
              and float(r["pauc"]) == float(r["pauc"])}
      best = min(ours, key=lambda name: ours[name])
      assert [(r["quality_a"], r["quality_b"]) for r in tables.read_csv(output / "pauc_diff.csv")
              if r["mode"] == mode and float(r["fmr"]) == fmr
              and r["quality_b"] == "serfiq"] == [(best, "serfiq")]
  assert _read(output / "mini" / "scores_sf.csv").splitlines()[0] == "image,serfiq"
  # No column name is shared, so none is prefixed with its model.
  assert "| serfiq |" in _read(output / "summary.md")
  assert {r["quality"] for r in tables.read_csv(output / "pauc_groups.csv")} >= {"serfiq"}
  assert (output / "plots" / "attention_mini_ours.png").exists()
  assert not (output / "plots" / "attention_mini_sf.png").exists()
  again = evaluate.run(_bin_config(world, output, **{**over, "quality_model.serfiq.passes": 4}))
  assert "quality/mini/sf" in again["computed"]
  assert not {"quality/mini/ours", "embed/mini/fr"} & set(again["computed"])


def test_quality_entries_and_their_errors(world, tmp_path):
  from exfiqa_jax.evaluation import pipeline
  from exfiqa_jax.methods import registry
  path_of = lambda entry: registry.split_method(entry)[1]
  assert pipeline.parse_named_list("ours=ckpt/vitfiqa_token,cr=crfiqa:cr.pth,"
                                   "grafiqs:/m/r100.pth,w=C:\\m\\x.pt", path_of) == [
      ("ours", "ckpt/vitfiqa_token"), ("cr", "crfiqa:cr.pth"), ("r100", "grafiqs:/m/r100.pth"),
      ("w", "C:\\m\\x.pt")]
  with pytest.raises(ValueError, match=r"'cr' is not a quality method.*'serfiq'"):
    evaluate.run(_bin_config(world, tmp_path / "o", **{
        "quality_model.path": f"a={world['token']},b=cr:{world['fr']}"}))
  with pytest.raises(ValueError, match=r"--config.quality_model.method=grafiqs needs an iResNet"):
    evaluate.run(_bin_config(world, tmp_path / "o", **{
        "quality_model.path": f"a=grafiqs:{world['token']}"}))
  with pytest.raises(ValueError, match=r"--config.quality_model.method='grafics' is not"):
    evaluate.run(_bin_config(world, tmp_path / "o", **{"quality_model.method": "grafics"}))
  with pytest.raises(ValueError, match=r"no ViT quality model named 'sf'"):
    evaluate.run(_bin_config(world, tmp_path / "o", **{
        "quality_model.path": f"sf=grafiqs:{world['fr']}", "fr.path": "quality_model"}))


def test_score_files_as_columns_and_the_comparison(world, bin_run, tmp_path):
  """Another method's score file (`name=scores:<file>`) holding our own exit_2 scores gives
  exit_2's pAUC and CIs bit for bit; `?lower` on the negated file gives the same; a changed file
  recomputes the EDC stages only; comparison.csv's cells are pauc.csv's rows."""
  output = tmp_path / "out"
  shutil.copytree(bin_run[0] / "cache", output / "cache")      # the stages of bin_run, reused
  scores = tables.read_csv(bin_run[0] / "mini" / "scores_q_token.csv")
  text = "".join(f"/data/lfw/{r['image']}.jpg {r['exit_2']}\n" for r in scores)
  (tmp_path / "ours.txt").write_text(text)
  (tmp_path / "neg.csv").write_text("filename,score\r\n" + "".join(
      f"{r['image']},{-float(r['exit_2'])!r}\r\n" for r in scores), encoding="utf-8-sig")
  over = {"quality_model.path": f"{world['token']},mine=scores:{tmp_path / 'ours.txt'},"
                                f"neg=scores:{tmp_path / 'neg.csv'}?lower",
          "report.comparison.rows": "exit_3,mine,neg", "report.comparison.reference": "mine"}
  result = evaluate.run(_bin_config(world, output, **over))
  assert not {"quality/mini/q_token", "embed/mini/fr", "compare/mini/fr"} & set(
      result["computed"])
  rows = {(r["quality"], r["mode"], r["fmr"]): r for r in tables.read_csv(output / "pauc.csv")}
  for (quality, mode, fmr), row in rows.items():
    if quality == "exit_2":
      for other in ("mine", "neg"):
        assert {k: rows[(other, mode, fmr)][k] for k in ("pauc", "ci_low", "ci_high")} == {
            k: row[k] for k in ("pauc", "ci_low", "ci_high")}
  compared = tables.read_csv(output / "comparison.csv")
  assert {r["quality"] for r in compared} == {"exit_3", "mine", "neg"}
  assert len(compared) == 3 * 2 * 3                       # rows × modes × FMRs
  for r in compared:
    source = rows[(r["quality"], r["mode"], r["fmr"])]
    assert (r["pauc"], r["ci_low"], r["ci_high"]) == (source["pauc"], source["ci_low"],
                                                     source["ci_high"])
    assert r["reference"] == "mine"
  assert {r["delta_pauc"] for r in compared if r["quality"] == "neg"} == {"0.0"}
  summary = (output / "summary.md").read_text()
  assert "## Comparison" in summary and "`mine` (reference)" in summary
  assert "| `neg` |" in (output / "comparison.md").read_text()
  assert (output / "plots" / "comparison_edc.png").stat().st_size > 0
  import json
  info = json.loads((output / "summary.json").read_text())["score_files"]
  assert info["neg"]["lower_is_better"] and info["mine"]["format"] == "text"
  # A changed file recomputes the EDC stages, nothing upstream; the same bytes recompute nothing.
  (tmp_path / "ours.txt").write_text(text.replace(f"{scores[0]['exit_2']}\n", "0.5\n", 1))
  changed = evaluate.run(_bin_config(world, output, **over))
  assert set(changed["computed"]) == {"edc/mini/fr/fiqa", "edc/mini/fr/iso"}
  assert evaluate.run(_bin_config(world, output, **over))["computed"] == []


def test_score_file_errors_before_any_stage(world, tmp_path):
  (tmp_path / "short.txt").write_text("00001.jpg 0.5\n00002.jpg nan\n")
  config = _bin_config(world, tmp_path / "out", **{
      "quality_model.path": f"{world['token']},s=scores:{tmp_path / 'short.txt'}"})
  with pytest.raises(ValueError, match=r"--config\.quality_model\.path=s=scores:.*mini.*missing"):
    evaluate.run(config)
  assert not (tmp_path / "out" / "cache").exists()
  with pytest.raises(ValueError, match=r"'random' cannot name a score file"):
    evaluate.run(_bin_config(world, tmp_path / "out", **{
        "quality_model.path": f"{world['token']},random=scores:{tmp_path / 'short.txt'}"}))
  with pytest.raises(ValueError, match=r"--config\.quality_model\.lower_is_better=.*\['x'\]"):
    evaluate.run(_bin_config(world, tmp_path / "out", **{
        "quality_model.path": f"{world['token']},s=scores:{tmp_path / 'short.txt'}",
        "quality_model.lower_is_better": "x"}))


# ------------------------------------------------- outputs (issue 21, weak): no fixtures, fast
def test_names_that_are_one_file_are_refused_naming_the_flag():
  from exfiqa_jax.evaluation import pipeline
  with pytest.raises(ValueError, match=r"--config.quality_model.path=.*'a b' and 'a_b' are "
                                       r"one file name \(a_b\).*--config.quality_model.path="):
    pipeline.parse_named_list("a b=x.pt,a_b=y.pt", flag="--config.quality_model.path")
  with pytest.raises(ValueError, match=r"--config.fr.path=.*the name 'x' is used twice"):
    pipeline.parse_named_list("x=a.pt,x=b.pt", flag="--config.fr.path")
  with pytest.raises(ValueError, match=r"--config.fr.path=.*'r100' is used twice"):
    pipeline.parse_named_list("/m/r100.pt,/n/r100.pt", flag="--config.fr.path")


@pytest.mark.parametrize("value, what", [("lfw,agedb_30,lfw", "names 'lfw' twice"),
                                         ("a b,a_b", "one output folder")])
def test_a_benchmark_named_twice_is_refused_naming_the_flag(value, what):
  from exfiqa_jax.evaluation import benchmarks
  config = eval_verification.get_config()
  config.benchmarks = value
  with pytest.raises(ValueError, match=f"--config.benchmarks=.*{what}"):
    benchmarks.benchmark_names(config)


@pytest.mark.parametrize("field", ["manual_dir", "manual_dirs.lfw"])
def test_a_manual_dir_that_is_a_file_is_called_a_file(tmp_path, field):
  from exfiqa_jax.evaluation import benchmarks
  (tmp_path / "bins").write_text("not a folder")
  config = worlds.override(eval_verification.get_config("benchmarks=lfw"),
                           **{f"data.{field}": str(tmp_path / "bins")})
  with pytest.raises(FileNotFoundError, match=f"is a file, not a folder; pass "
                                              f"--config.data.{field}="):
    benchmarks.open_benchmark("lfw", config)


def _leaves(node, prefix=""):
  for key, value in node.items():
    if hasattr(value, "items"):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


@pytest.mark.parametrize("job", ["eval_verification", "eval_ijbc", "early_exit", "demo"])
def test_every_path_field_of_a_config_has_its_tilde_expanded(job):
  """The class: every string field that names a file or folder (by its name) is in
  PATH_FIELDS (or a list of models, whose parsers expand each entry), and `~` there is the
  home folder after with_user_paths."""
  import importlib
  from exfiqa_jax.evaluation import pipeline
  module = importlib.import_module(f"exfiqa_jax.configs.{job}")
  config = module.get_config("size=smoke") if job == "early_exit" else module.get_config()
  listed = [f.replace(".*", "") for f in pipeline.PATH_FIELDS]
  pathlike = ("output", "dir", "dirs", "folds", "groups", "path", "cache", "file", "root")
  for key, value in _leaves(config):
    if isinstance(value, str) and any(p in part for part in key.split(".")[-2:]
                                      for p in pathlike):
      assert key in pipeline.LIST_PATH_FIELDS or key in listed or any(
          key.startswith(f + ".") for f in listed), f"{job}: {key} is not in PATH_FIELDS"
  for key, _ in _leaves(config):
    if key in listed or any(key.startswith(f + ".") for f in listed):
      node, leaf = config, key.split(".")
      for part in leaf[:-1]:
        node = node[part]
      node[leaf[-1]] = f"~/x/{leaf[-1]}"
  expanded = pipeline.with_user_paths(config)
  for key, value in _leaves(expanded):
    if key in listed or any(key.startswith(f + ".") for f in listed):
      assert value == os.path.expanduser(f"~/x/{key.split('.')[-1]}"), key
  assert dict(_leaves(config))["output"] == "~/x/output"       # the caller's config unchanged


def test_scores_of_a_model_no_longer_in_the_run_are_removed(tmp_path):
  """An earlier run's scores_<old>.csv beside the new report would be read as this run's; other
  files of the folder stay."""
  import types
  from exfiqa_jax.evaluation import pipeline
  from exfiqa_jax.report import evaluation as report
  stage = stages.Stage("q", "fp", {"name": np.array(["a", "b"]), "crfiqa": np.ones(2)}, False)
  folder = tmp_path / "lfw"
  folder.mkdir()
  for name in ("scores_old.csv", "scores_new.csv", "notes.txt", "scores_old.csv.bak"):
    (folder / name).write_text("x")
  spec = pipeline.QualitySpec("new", "p", None)
  report.write_scores(str(tmp_path), types.SimpleNamespace(quality={"lfw": {"new": stage}}),
                      [spec])
  assert sorted(os.listdir(folder)) == ["notes.txt", "scores_new.csv", "scores_old.csv.bak"]
  assert (folder / "scores_new.csv").read_text().startswith("image,crfiqa")
