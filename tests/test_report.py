"""Reports: CSV numbers equal the EDC engine's, the best is marked, plots are PNGs, GFLOPs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from exfiqa_jax.report import evaluation as report
from exfiqa_jax.report import plots, tables
from exfiqa_jax.metrics import bootstrap, comparisons, edc
from exfiqa_jax.evaluation import results
from exfiqa_jax import models
from exfiqa_jax.models import vit

FMRS = (1e-2, 1e-3)


def _synthetic_result(seed: int = 0, benchmark: str = "bench") -> tuple[results.BenchmarkEval,
                                                                          dict]:
  """A benchmark with 3 exits of increasing skill, their fusions, ATTN and random."""
  rng = np.random.default_rng(seed)
  n_img, n_pairs = 300, 1500
  pairs = rng.integers(0, n_img, (n_pairs, 2))
  is_gen = rng.random(n_pairs) < 0.4
  severity = rng.random(n_img)
  pair_sev = np.maximum(severity[pairs[:, 0]], severity[pairs[:, 1]])
  scores = np.where(is_gen, 0.7 - 0.8 * pair_sev + 0.1 * rng.normal(size=n_pairs),
                    0.1 * rng.normal(size=n_pairs)).astype(np.float32)
  exits = np.stack([-severity * w + rng.normal(size=n_img) * (1.5 - w) for w in (0.2, 0.8, 1.2)],
                   1)
  cols = results.column_set("m", 3, prefix=False)
  q = [exits[:, 0], exits[:, 1], exits[:, 2], exits.mean(1), exits @ np.array([1, 2, 3]) / 6,
       -severity + rng.normal(size=n_img), rng.normal(size=n_img), -severity * 0.5
       + rng.normal(size=n_img) * 0.3]
  cols.append(results.QualityColumn("random", "random"))
  q.append(comparisons.random_quality(n_img, 7))
  image_q = np.stack(q).astype(np.float32)
  pq = comparisons.image_to_pair_quality(image_q, pairs)
  modes = {}
  engine = {}
  for mode, limit in (("fiqa", 0.3), ("iso", 0.2)):
    curves = edc.edc_curves(scores, is_gen, pq, FMRS, edc.FIQA_DISCARD, mode, pauc_limit=limit)
    point, low, high = bootstrap.pauc_ci(scores, is_gen, pq, FMRS, edc.FIQA_DISCARD, mode,
                                         limit, num_resamples=8, seed=3)
    modes[mode] = results.ModeEval(mode, limit, curves, curves.pauc, low, high)
    engine[mode] = (curves, point, low, high)
  result = results.BenchmarkEval(benchmark, "fr", cols, np.asarray(FMRS), modes, n_pairs,
                                int(is_gen.sum()))
  return result, engine


def test_csv_numbers_equal_engine(tmp_path):
  result, engine = _synthetic_result()
  paths = report.write_tables(str(tmp_path), [result])
  edc_rows = tables.read_csv(paths["edc"])
  assert list(edc_rows[0]) == list(report.EDC_COLUMNS)
  names = result.names
  n = len(names) * len(FMRS) * len(edc.FIQA_DISCARD)
  assert len(edc_rows) == 2 * n
  for row in edc_rows:
    curves = engine[row["mode"]][0]
    s = names.index(row["quality"])
    f = FMRS.index(float(row["fmr"]))
    r = int(np.flatnonzero(np.asarray(curves.discard) == float(row["discard"]))[0])
    assert float(row["fnmr"]) == curves.fnmr[s, f, r]           # exact (float repr)
    assert float(row["threshold"]) == curves.threshold[s, f, r]
    assert int(row["n_genuine"]) == curves.n_genuine[s, r]
    assert int(row["n_impostor"]) == curves.n_impostor[s, r]
  pauc_rows = tables.read_csv(paths["pauc"])
  assert list(pauc_rows[0]) == list(report.PAUC_COLUMNS)
  assert len(pauc_rows) == 2 * len(names) * len(FMRS)
  for row in pauc_rows:
    _, point, low, high = engine[row["mode"]]
    s, f = names.index(row["quality"]), FMRS.index(float(row["fmr"]))
    assert float(row["pauc"]) == point[s, f]
    assert float(row["ci_low"]) == low[s, f] and float(row["ci_high"]) == high[s, f]
    assert float(row["limit"]) == (0.3 if row["mode"] == "fiqa" else 0.2)
  # An independent check of one fiqa pAUC: numpy trapezoid over the grid points <= 0.3.
  curves = engine["fiqa"][0]
  x = np.asarray(edc.FIQA_DISCARD)[:7]
  y = curves.fnmr[2, 1, :7]
  ref = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
  row = next(r for r in pauc_rows if r["quality"] == names[2] and r["mode"] == "fiqa"
             and float(r["fmr"]) == FMRS[1])
  assert float(row["pauc"]) == pytest.approx(ref, rel=1e-12, abs=1e-15)
  summary = json.loads(open(paths["json"]).read())
  assert summary["benchmarks"]["bench"]["fr"]["fiqa"]["0.001"]["exit_3"]["pauc"] == \
      engine["fiqa"][1][2, 1]


def test_summary_marks_best_and_skips_baselines(tmp_path):
  result, _ = _synthetic_result()
  m = result.modes["fiqa"]
  # Make the random baseline the lowest everywhere: it must still not be marked.
  m.pauc[result.names.index("random")] = -1.0
  md = report.summary_markdown([result])
  fiqa_section = md.split("## ")[1]
  assert "mode `fiqa`" in fiqa_section.splitlines()[0]
  table = [l for l in fiqa_section.splitlines() if l.startswith("| ")]
  header, rows = table[0], {l.split(" | ")[0][2:]: l for l in table[1:]}
  fiqa_rows = rows
  for f in range(len(FMRS)):
    vals = m.pauc[:, f].copy()
    best = min((i for i, c in enumerate(result.columns) if not c.is_baseline),
               key=lambda i: vals[i])
    cell = fiqa_rows[result.names[best]].split(" | ")[1 + f]
    assert cell.strip(" |") == f"**{1e3 * vals[best]:.2f}**"
    assert "**" not in rows["random"].split(" | ")[1 + f]
  assert sum(l.count("**") for l in table[1:]) == 2 * len(FMRS)
  assert "bench @FMR 1e-02" in header


def _keep_figures(monkeypatch) -> list:
  """plots.save still writes both files; the figures are kept for a look at what they draw."""
  figures, save = [], plots.save
  monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or save(fig, path))
  return figures


def _early_exit_rows(depth: int = 3) -> list[dict]:
  rows = [dict(kind="exit", method=f"exit_{k}", exits=str(k), mean_gflops=float(k),
               pauc=0.02 - 0.002 * k) for k in range(1, depth + 1)]
  rows += [dict(kind="fusion", method=m, exits="all", mean_gflops=3.2, pauc=0.0135)
           for m in ("ex_fiqa_f", "ex_fiqa_fw")]
  rows += [dict(kind="cascade", method=f"cascade@{t:g}", target=t, exits="1+2+3",
                mean_gflops=2.0, pauc=0.0141, decided=[0.5, 0.3, 0.2]) for t in (0.9, 0.99)]
  return rows


def test_every_plot_writes_png_and_pdf(tmp_path, monkeypatch):
  """Every plot function writes a PNG at >= 200 dpi and a vector PDF beside it (identical bytes
  when drawn again); the EDC figure has one legend outside its panels, bands for at most two
  columns, the limit labelled, a curve that stops early said; pAUC-vs-GFLOPs is ×1e3 at the
  tables' FMR; the attention figure has a colour bar."""
  from exfiqa_jax.evaluation import comparison as comparison_lib
  from exfiqa_jax.evaluation.groups import GroupEval
  from exfiqa_jax.report import comparison as comparison_report
  from exfiqa_jax.report import early_exit as early_exit_report
  from exfiqa_jax.report import groups as groups_report
  figures = _keep_figures(monkeypatch)
  result, _ = _synthetic_result()
  m = result.modes["fiqa"]
  r = result.names.index("random")      # stops early: no genuine pair left beyond 0.85
  m.curves.fnmr[r, :, -2:], m.curves.n_genuine[r, -2:] = np.nan, 0
  a = result.names.index("attn_1")      # no impostor pair left beyond 0.9
  m.curves.fnmr[a, :, -1:], m.curves.n_impostor[a, -1:] = np.nan, 0
  bands = {("bench", "fr", mode): (e.curves.fnmr - 0.05, e.curves.fnmr + 0.05)
           for mode, e in result.modes.items()}
  g = models.gflops(vit.tiny_config("token").to_dict())
  written = report.write_plots(str(tmp_path), [result], {"m": (g[0][:3], g[1])}, bands)
  assert len(written) == 2 + 2          # EDC per mode + pAUC-vs-GFLOPs per mode
  edc_fig, gflops_fig = figures[0], figures[2]
  rng = np.random.default_rng(1)
  written.append(plots.plot_attention(str(tmp_path / "att.png"), rng.integers(
      0, 256, (4, 112, 112, 3), dtype=np.uint8), rng.normal(size=(4, 16)), rng.normal(size=4), "t"))
  ge = GroupEval("bench", "fr", "fiqa", "g", ["a", "b"], result.columns, result.fmrs,
                 np.asarray(m.curves.discard), m.limit, np.stack([m.curves.fnmr] * 2),
                 np.stack([m.curves.threshold] * 2), np.stack([m.curves.n_genuine] * 2),
                 np.stack([m.curves.n_impostor] * 2), np.stack([m.pauc] * 2), np.array([9, 9]),
                 np.array([4, 4]), np.array([5, 5]))
  written.append(groups_report.plot(str(tmp_path / "groups.png"), ge, [result]))
  comp = comparison_lib.build([result], {}, "", "", "", 0.05)
  written.append(comparison_report.plot_edc(str(tmp_path / "comp.png"), comp, [result], "fiqa"))
  rows = _early_exit_rows()
  written.append(early_exit_report.plot_pauc_vs_gflops(
      str(tmp_path / "ee.png"), rows, {"random": 0.03}, 1e-3))
  written.append(early_exit_report.plot_decided(str(tmp_path / "decided.png"), rows, 3))
  from PIL import Image
  for path in written:
    with Image.open(path) as im:
      assert im.format == "PNG" and min(im.info["dpi"]) >= 199.5, path
    with open(plots.pdf_path(path), "rb") as pdf:
      assert pdf.read(5) == b"%PDF-", path
  first = open(plots.pdf_path(written[-1]), "rb").read()
  early_exit_report.plot_decided(written[-1], rows, 3)
  assert open(plots.pdf_path(written[-1]), "rb").read() == first      # no timestamp inside
  # One legend, below the panels; bands only for the highlighted columns (at most two).
  assert len(edc_fig.legends) == 1 and all(ax.get_legend() is None for ax in edc_fig.axes)
  bold = report.highlighted(result, "fiqa")
  assert 1 <= len(bold) <= 2
  for ax in edc_fig.axes:
    assert len(ax.collections) == len(bold)
    assert any(t.get_text() == f"pAUC limit {m.limit:g}" for t in ax.texts)
    assert "× random: no genuine pair left beyond r = 0.85" in ax.get_xlabel()
    assert "× attn_1: no impostor pair left beyond r = 0.9" in ax.get_xlabel()
  # pAUC ×1e3 at FMR 1e-3 (the tables' FMR), the exits' line first.
  ax = gflops_fig.axes[0]
  exits = [s for s, c in enumerate(result.columns) if c.kind == "exit"]
  np.testing.assert_allclose(ax.lines[0].get_ydata(), 1e3 * m.pauc[exits, 1])
  assert "×1e3" in ax.get_ylabel() and "FMR 1e-03" in ax.get_title()
  assert len(figures[4].axes) == 4 + 1                 # 4 overlays and the colour bar


def test_gflops_match_the_poster():
  crfiqa, fuse_c = models.gflops(vit.vit_s_config("crfiqa").to_dict())
  token, fuse_t = models.gflops(vit.vit_s_config("token").to_dict())
  poster_c = [1.06, 2.01, 2.96, 3.91, 4.85, 5.80, 6.75, 7.70, 8.65, 9.60, 10.55, 11.49]
  poster_t = [0.99, 1.95, 2.90, 3.86, 4.81, 5.76, 6.72, 7.67, 8.63, 9.58, 10.54, 11.49]
  # The poster's own numbers, exactly (2 decimals): (C) exit 7 and 12, (T) exit 6, fusion (C).
  assert (round(crfiqa[6], 2), round(crfiqa[11], 2), round(token[5], 2)) == (6.75, 11.49, 5.76)
  assert round(fuse_c, 2) == 12.33 and round(fuse_t, 2) == 11.49
  # docs/methods.md full table, to its rounding (its (C) exit 11 reads 10.55 and (T) exit 4 3.86
  # where the exact count gives 10.544 and 3.855).
  np.testing.assert_allclose(crfiqa, poster_c, atol=0.0106)
  np.testing.assert_allclose(token, poster_t, atol=0.0106)
  md = "\n".join(report.gflops_markdown({"vitfiqa_c": (crfiqa, fuse_c)}))
  assert "| vitfiqa_c | 1.06 |" in md and "| 6.75 |" in md and "12.33 |" in md


def _bilinear_ref(m: np.ndarray, size: int) -> np.ndarray:
  """Half-pixel-centre bilinear upsampling with edge clamping (cv2/PIL convention)."""
  n = m.shape[0]
  c = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
  i0 = np.floor(c).astype(int)
  i1 = np.minimum(i0 + 1, n - 1)
  w = c - i0
  rows = m[i0] * (1 - w)[:, None] + m[i1] * w[:, None]
  return rows[:, i0] * (1 - w)[None, :] + rows[:, i1] * w[None, :]


def test_attention_overlay_matches_numpy_reference():
  rng = np.random.default_rng(2)
  maps = rng.normal(size=(3, 144)) * 3 + 1
  images = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
  heat = plots.attention_heatmaps(maps)
  lo, hi = maps.min(), maps.max()          # ONE global min-max over all maps
  ref = np.stack([_bilinear_ref(((m - lo) / (hi - lo + 1e-8)).reshape(12, 12), 112)
                  for m in maps])
  np.testing.assert_allclose(heat, ref, atol=2e-5)
  assert 0.9 < heat.max() <= 1.0 + 1e-6 and -1e-6 <= heat.min() < 0.1
  over = plots.attention_overlays(images, maps)
  from matplotlib import colormaps
  expect = 0.6 * images + 0.4 * 255 * colormaps["jet"](ref)[..., :3]
  assert np.abs(over.astype(float) - expect).max() <= 1.0 + 1e-6


def test_tables_exact_numbers_and_markdown(tmp_path):
  rows = [{"name": "a", "x": 0.1 + 0.2, "n": np.int64(3)}, {"name": "b", "x": float("nan"), "n": 0}]
  path = tables.write_csv(str(tmp_path / "t.csv"), rows, ("name", "x", "n"))
  back = tables.read_csv(path)
  assert float(back[0]["x"]) == 0.1 + 0.2 and back[0]["n"] == "3" and back[1]["x"] == "nan"
  assert tables.markdown_table(["q", "v"], [["a", "1"], ["b", ""]]) == [
      "| q | v |", "|---|---|", "| a | 1 |", "| b |  |"]
  assert tables.score_header(2, False) == ["image", "attn_1", "attn_2"]


def test_report_sections(tmp_path):
  from exfiqa_jax.evaluation import paired_columns
  rows = [dict(benchmark="lfw", fr_model="arc", mode="fiqa", fmr=1e-3, quality_a=a, quality_b=b,
               delta_pauc=-2e-4, ci_low=-3e-4, ci_high=-1e-4, p_value=0.01)
          for a, b in (("ex_fiqa_fw", "exit_12"), ("exit_1", "random"))]
  path = report.write_paired(str(tmp_path), rows)
  got = tables.read_csv(path)
  assert list(got[0]) == list(paired_columns.COLUMNS) and float(got[0]["delta_pauc"]) == -2e-4
  md = "\n".join(report.paired_markdown(rows))
  assert "| ex_fiqa_fw | exit_12 | -0.200 | [-0.300, -0.100] | 0.01 |" in md
  assert "1 comparisons, 1 significantly better" in md
  line = report.sanity_markdown([{"benchmark": "lfw", "fr_model": "arc", "kind": "accuracy",
                                  "accuracy_10fold": 0.9975},
                                 {"benchmark": "lfw", "fr_model": "elastic", "kind": "accuracy",
                                  "accuracy_10fold": 0.9981},
                                 {"benchmark": "ijbc", "fr_model": "arc", "kind": "tar_at_far",
                                  "tar@far=1e-04": 0.961, "tar@far=1e-05": 0.93}])[0]
  assert ("`arc`: lfw (10-fold accuracy 99.75 %), ijbc (TAR@FAR=1e-04 96.10 %, TAR@FAR=1e-05 "
          "93.00 %); `elastic`: lfw (10-fold accuracy 99.81 %).") in line     # per FR model


def test_demo_time_line_keeps_the_computing_runs_seconds():
  from exfiqa_jax.report import demo as demo_report
  full = {"train": 150.2, "test_data": 2.0, "evaluate": 30.4, "early_exit": 14.0, "total": 197.1}
  parts = [p for p, _ in demo_report.PARTS]
  first = demo_report.merge_timings(None, full, parts)
  assert first == {"seconds": full}
  assert demo_report.time_line(first) == ("Time: 197 s (training 150 s, test data 2 s, "
                                          "evaluation 30 s, early exits 14 s).")
  rerun = {"train": 0.0, "test_data": 1.9, "evaluate": 0.4, "early_exit": 1.1, "total": 4.6}
  again = demo_report.merge_timings(first, rerun, ())
  assert again == {"seconds": full, "rerun": rerun}
  assert demo_report.time_line(again) == (
      "Time: 197 s (training 150 s, test data 2 s, evaluation 30 s, early exits 14 s), each part "
      "as long as the run that computed it took (cached rerun: 5 s).")
  # Only the early exits recomputed: their new seconds swap into the total.
  part = demo_report.merge_timings(first, {**rerun, "early_exit": 20.0}, ["early_exit"])
  assert part["seconds"] == {**full, "early_exit": 20.0, "total": 203.1}
  # No record of the computing run (a folder from before timings.json): nothing invented.
  blind = demo_report.merge_timings(None, rerun, ["early_exit"])
  assert blind["seconds"]["total"] is None and blind["seconds"]["early_exit"] == 1.1
  assert "training —" in demo_report.time_line(blind)
  assert demo_report.time_line(demo_report.merge_timings(None, rerun, ())) == (
      "Time: cached rerun 5 s; the runs that computed the parts recorded no times.")


def test_early_exit_untimed_rows_say_dash():
  """Rows whose images/s was not measured print "—", not nan; no "-0.0 %" saved."""
  from exfiqa_jax.report import early_exit as early_exit_report
  rows = [{**r, "saved": -0.0 if r["kind"] == "fusion" else 0.25, "agreement": 1.0,
           "agreement_calibration": 1.0,
           "images_per_second": 812.0 if r["method"] == "exit_3" else float("nan")}
          for r in _early_exit_rows()]
  summary = {"benchmark": {"calibration": {"name": "val", "images": 16},
                           "evaluation": {"name": "test", "images": 24, "pairs": 276}},
             "tau": {"value": 0.1, "rule": "discard"}, "fmr": 1e-3, "pauc_limit": 0.3,
             "headline": {"text": "h"}, "baselines": {"random": 0.03}}
  md = early_exit_report.markdown(summary, rows)
  assert "nan" not in md and "-0.0" not in md
  table = {l.split(" | ")[0][2:]: l for l in md.splitlines() if l.startswith("| ")}
  assert " | 812 | " in table["exit_3"] and " | — | " in table["exit_1"]
  assert " | 0.0 % | " in table["ex_fiqa_f"]
