r"""EDC evaluation on pair benchmarks: LFW, AgeDB-30, CFP-FP, CALFW, CPLFW, XQLFW, Adience, any .bin.

  exfiqa --config=eval_verification:benchmarks=lfw+agedb_30+cfp_fp \
      --config.data.manual_dir=~/faces/bins --config.quality_model.path=ckpt/vitfiqa_token \
      --config.fr.path=ckpt/elasticface --config.output=out/eval_bins
  exfiqa --config=eval_verification:benchmarks=xqlfw \
      --config.data.manual_dirs.xqlfw=~/faces/xqlfw --config.quality_model.path=vitfiqa_token.pt \
      --config.fr.path=precomputed:emb/xqlfw/embeddings.npy

Arguments (key=value, comma-separated): `benchmarks` — "+"-separated names (default the five
.bin sets lfw+agedb_30+cfp_fp+calfw+cplfw); `size=tiny` for tests. `lfw`, `agedb_30`, `cfp_fp`,
`calfw`, `cplfw` (and any other `<name>`/`<name>.bin`) read `<manual_dir>/<name>.bin`
(insightface pickles); `xqlfw` reads `xqlfw_pairs.txt` + `xqlfw_aligned_112/`; `adience` the
aligned Adience folder (docs/data.md). Give one folder for all (`data.manual_dir`) or one per
benchmark (`data.manual_dirs.<name>`). Several quality models:
`--config.quality_model.path=t=ckpt/token,c=ckpt/crfiqa`.
Outputs in `output`: edc.csv, pauc.csv, summary.json, summary.md, plots/, <bench>/scores_*.csv,
cache/ (resumable stages).
"""
from __future__ import annotations

from exfiqa_jax.configs import common
from exfiqa_jax.configs.eval_common import eval_config
from exfiqa_jax.data.benchmark_names import VERIFICATION_BINS


SIZES = ("default", "tiny")    # get_config's size= argument


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, benchmarks="+".join(VERIFICATION_BINS), size="default")
  if args.size not in SIZES:
    raise ValueError(f"size={args.size!r} is not one of {SIZES}")
  names = [b.strip() for b in args.benchmarks.split("+") if b.strip()]
  output = "out/eval_" + ("_".join(n.replace(".bin", "") for n in names)
                          if len(names) <= 3 else "verification")
  config = eval_config(names, output=output)
  if args.size == "tiny":
    config.batch_size = 8
    config.eval.bootstrap = 10
    config.report.attention_examples = 0
  return config
