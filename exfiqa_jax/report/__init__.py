"""Reports: what a task writes from the library's results (never running a network).

  tables.py      CSV text with exact numbers, scores.csv, markdown tables
  plots.py       a figure on matplotlib's Agg canvas, an atomic PNG save, attention overlays
  evaluation.py  the evaluation report (edc.csv, pauc.csv, summary.json/.md, plots)
  groups.py      the per-group EDC files and sections
  early_exit.py  the early-exit study's files
  score.py       the score job's files (scores.csv, scores.npz, the stamp last)
"""
