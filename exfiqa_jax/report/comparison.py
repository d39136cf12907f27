"""The comparison report (docs/evaluation.md, "Compare with other methods"): the table every FIQA
paper prints, from an evaluation's results (exfiqa_jax/evaluation/comparison.py computes it).

  comparison.md    per EDC mode: rows = quality methods, columns = (benchmark, FR model, FMR),
                   pAUC-EDC ×1e3 with its bootstrap interval, **bold** = best per column, the
                   mean rank; then Δ pAUC of the reference row against every other row with
                   its paired-bootstrap p-value; the FR models' sanity numbers
  comparison.csv   the same numbers, one line per (row, benchmark, FR model, mode, FMR), raw
                   pAUC exactly as pauc.csv writes it
  plots/comparison_edc.png (the first mode; comparison_edc_<mode>.png for the others): EDC
                   curves of the rows, one panel per benchmark (a row of panels per FR model),
                   one shared legend
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from exfiqa_jax import files
from exfiqa_jax.evaluation.comparison import CSV_COLUMNS, Comparison, csv_rows
from exfiqa_jax.evaluation.results import BenchmarkEval
from exfiqa_jax.report import plots, tables

P_SIGNIFICANT = 0.05
PLOT_FMR = 1e-3           # the papers' headline FMR: the EDC panels' FMR when evaluated


def _ms(v: float, digits: int = 2) -> str:
  return f"{1e3 * v:.{digits}f}" if np.isfinite(v) else "n/a"


def _header(comp: Comparison) -> list[str]:
  several_fr = len({fr for _, fr, _ in comp.columns}) > 1
  return [f"{b}" + (f" / {fr}" if several_fr else "") + f" @{fmr:.0e}"
          for b, fr, fmr in comp.columns]


def _label(comp: Comparison, row: str) -> str:
  marks = (" (reference)" if row == comp.reference else "") + (" †" if row in comp.why else "")
  return f"`{row}`{marks}"


def pauc_table(comp: Comparison, mi: int) -> list[str]:
  """The pAUC table of mode `mi`: cells "pAUC [low, high]" ×1e3, best bold, mean rank last."""
  rows = []
  for ri, name in enumerate(comp.rows):
    cells = []
    for k in range(len(comp.columns)):
      if not comp.present[mi, ri, k]:
        cells.append("—")
        continue
      text = _ms(comp.pauc[mi, ri, k])
      if np.isfinite(comp.ci_low[mi, ri, k]) and np.isfinite(comp.ci_high[mi, ri, k]):
        text += f" [{_ms(comp.ci_low[mi, ri, k])}, {_ms(comp.ci_high[mi, ri, k])}]"
      cells.append(f"**{text}**" if comp.best[mi, ri, k] else text)
    rank = comp.mean_rank[mi, ri]
    rows.append([_label(comp, name)] + cells + [f"{rank:.2f}" if np.isfinite(rank) else "—"])
  return tables.markdown_table(["quality"] + _header(comp) + ["mean rank"], rows)


def delta_table(comp: Comparison, mi: int) -> list[str]:
  """Δ pAUC ×1e3 = reference − row with the paired p-value (* : p < 0.05), per column."""
  rows = []
  for ri, name in enumerate(comp.rows):
    if name == comp.reference:
      continue
    cells = []
    for k in range(len(comp.columns)):
      d, p = comp.delta[mi, ri, k], comp.p_value[mi, ri, k]
      if not comp.present[mi, ri, k] or not np.isfinite(d):
        cells.append("—")
      elif np.isfinite(p):
        cells.append(f"{_ms(d, 3)} (p {p:.2g}){' *' if p < P_SIGNIFICANT else ''}")
      else:
        cells.append(_ms(d, 3))
    rows.append([f"`{name}`"] + cells)
  return tables.markdown_table(["vs reference"] + _header(comp), rows)


def sanity_table(sanity: Sequence[Mapping[str, Any]]) -> list[str]:
  """FR sanity per FR model (rows) and benchmark (columns): 10-fold accuracy of pair sets,
  TAR at the smallest FAR of template sets."""
  if not sanity:
    return []
  benches = list(dict.fromkeys(s["benchmark"] for s in sanity))
  frs = list(dict.fromkeys(s["fr_model"] for s in sanity))
  cell = {(s["fr_model"], s["benchmark"]): _sanity_text(s) for s in sanity}
  return ["FR sanity (is each FR model, the data and the channel order right?):", ""] + (
      tables.markdown_table(["FR model"] + benches,
                            ([f"`{fr}`"] + [cell.get((fr, b), "—") for b in benches]
                             for fr in frs))) + [""]


def _sanity_text(s: Mapping[str, Any]) -> str:
  if s.get("kind") == "tar_at_far":
    fars = sorted((float(k.split("=", 1)[1]), v) for k, v in s.items()
                  if k.startswith("tar@far="))
    return f"TAR@FAR={fars[0][0]:g} {100 * fars[0][1]:.2f} %" if fars else "—"
  return f"{100 * s['accuracy_10fold']:.2f} % (10-fold)"


def markdown(comp: Comparison, sanity: Sequence[Mapping[str, Any]] = (), level: int = 1,
             with_deltas: bool = True) -> list[str]:
  """comparison.md's lines (`level` = its top heading level: 2 inside summary.md)."""
  h = "#" * level
  lines = [f"{h} Comparison", "",
           f"pAUC-EDC ×1e3 (lower is better; [95 % bootstrap interval]); **bold** = best per "
           f"column; mean rank over the columns (1 = best; ties share their places). "
           f"Reference row: `{comp.reference}`."]
  lines += [f"† `{row}`: {why}." for row, why in comp.why.items()] + [""]
  for mi, mode in enumerate(comp.modes):
    lines += [f"{h}# Mode `{mode}` (discard up to {comp.limits[mi]:g})", ""]
    lines += pauc_table(comp, mi) + [""]
    if with_deltas:
      lines += [f"Δ pAUC-EDC ×1e3 = `{comp.reference}` − row (paired bootstrap; < 0: the "
                f"reference is better; * p < {P_SIGNIFICANT:g}):", ""]
      lines += delta_table(comp, mi) + [""]
  return lines + sanity_table(sanity)


def plot_edc(path: str, comp: Comparison, results: Sequence[BenchmarkEval], mode: str) -> str:
  """EDC curves of the comparison's rows at one FMR (PLOT_FMR if evaluated, else the nearest),
  a panel per benchmark, a row of panels per FR model, one legend below them all; the pAUC
  limit labelled; a curve that stops early is marked and said."""
  benches = list(dict.fromkeys(r.benchmark for r in results))
  frs = list(dict.fromkeys(r.fr_model for r in results))
  fmrs = sorted({f for _, _, f in comp.columns})
  fmr = min(fmrs, key=lambda f: abs(np.log10(f) - np.log10(PLOT_FMR)))
  fig = plots.figure(3.8 * len(benches), 3.2 * len(frs) + 0.4)
  handles = {}
  for r in results:
    if mode not in r.modes:
      continue
    m = r.modes[mode]
    f = [float(x) for x in r.fmrs].index(fmr)
    ax = fig.add_subplot(len(frs), len(benches),
                         frs.index(r.fr_model) * len(benches) + benches.index(r.benchmark) + 1)
    x = np.asarray(m.curves.discard)
    ends = []
    for ri, name in enumerate(comp.rows):
      if name not in r.names:
        continue
      s = r.names.index(name)
      color = f"C{ri % 10}"
      line, = ax.plot(x, m.curves.fnmr[s, f], lw=1.6, color=color, ls="-" if ri < 10 else "--")
      handles.setdefault(name, line)
      end = plots.curve_end(x, m.curves.fnmr[s, f], m.curves.n_genuine[s],
                            m.curves.n_impostor[s])
      if end is not None:
        ends.append((name, color, end))
    plots.limit_line(ax, m.limit)
    plots.axes_text(ax, "fraction of pairs discarded" if mode == "fiqa"
                    else "fraction of genuine comparisons discarded", f"FNMR @FMR {fmr:.0e}",
                    f"{r.benchmark}" + (f" / {r.fr_model}" if len(frs) > 1 else ""),
                    plots.mark_ends(ax, ends))
  fig.suptitle(f"EDC ({mode}), FMR {fmr:.0e}", fontsize=9)
  plots.shared_legend(fig, list(handles.values()), list(handles))
  return plots.save(fig, path)


def write(output: str, comp: Comparison, results: Sequence[BenchmarkEval],
          sanity: Sequence[Mapping[str, Any]] = (), with_plots: bool = True) -> dict[str, Any]:
  """comparison.md, comparison.csv and (with_plots) the EDC figures, atomically each."""
  md = os.path.join(output, "comparison.md")
  files.write_text(md, "\n".join(markdown(comp, sanity)) + "\n")
  rows = [{**row, "best": int(row["best"])} for row in csv_rows(comp)]
  csv_path = tables.write_csv(os.path.join(output, "comparison.csv"), rows, CSV_COLUMNS)
  written = []
  if with_plots:
    for mi, mode in enumerate(comp.modes):
      name = "comparison_edc.png" if mi == 0 else f"comparison_edc_{mode}.png"
      written.append(plot_edc(os.path.join(output, "plots", name), comp, results, mode))
  return {"comparison_md": md, "comparison_csv": csv_path, "comparison_plots": written}
