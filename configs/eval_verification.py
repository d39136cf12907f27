"""EDC evaluation on pair benchmarks: LFW, AgeDB-30, CFP-FP, CALFW, CPLFW, XQLFW, Adience, any .bin.

  python main.py --config=configs/eval_verification.py:lfw,agedb_30,cfp_fp,calfw,cplfw \
      --config.data.manual_dir=~/faces/bins --config.checkpoint=ckpt/vitfiqa_token \
      --config.fr_model=ckpt/elasticface --config.output=out/eval_bins
  python main.py --config=configs/eval_verification.py:xqlfw \
      --config.data.manual_dirs.xqlfw=~/faces/xqlfw --config.checkpoint=vitfiqa_token.pt \
      --config.fr_model=precomputed:emb/xqlfw/embeddings.npy

The argument is a comma list of benchmark names (default: the five .bin sets). `lfw`,
`agedb_30`, `cfp_fp`, `calfw`, `cplfw` (and any other `<name>`/`<name>.bin`) read
`<manual_dir>/<name>.bin` (insightface pickles); `xqlfw` reads `xqlfw_pairs.txt` +
`xqlfw_aligned_112/`; `adience` the aligned Adience folder (see exfiqa_jax/data/builders/).
Give one folder for all (`data.manual_dir`) or one per benchmark (`data.manual_dirs.<name>`).
Several quality models: `--config.checkpoint=t=ckpt/token,c=ckpt/crfiqa`.
Outputs in `output`: edc.csv, pauc.csv, summary.json, summary.md, plots/, <bench>/scores_*.csv,
cache/ (resumable stages). `get_config("...:tiny")` variants are for tests.
"""
from __future__ import annotations

from configs.eval_common import eval_config

DEFAULT = "lfw,agedb_30,cfp_fp,calfw,cplfw"


def get_config(arg: str | None = None):
  names = [b.strip() for b in (arg or DEFAULT).split(",") if b.strip()]
  config = eval_config(names)
  config.output = "out/eval_" + ("_".join(n.replace(".bin", "") for n in names)
                                 if len(names) <= 3 else "verification")
  return config
