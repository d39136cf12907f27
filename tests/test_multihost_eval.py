"""Task "eval" on 2 hosts (2 simulated devices each) against one ordinary process: same pAUC and
EDC tables, every cache stage written once by process 0 on the shared output folder, and a
rerun on 2 hosts that loads every stage."""
from __future__ import annotations

import concurrent.futures
import json
import os
import socket

import pytest

from configs import eval_verification
from exfiqa_jax.data import builders, protocols
from exfiqa_jax.evaluation import stages
from exfiqa_jax.report import tables
from exfiqa_jax.tasks import eval as evaluate
from exfiqa_jax.testing import worlds
from exfiqa_jax.testing.subproc import run_python

STAGES = ["compare/mini/fr", "edc/mini/fr/fiqa", "edc/mini/fr/iso", "embed/mini/fr",
          "quality/mini/q_token"]
FAST = {"report.plots": False}

HOST = """
import json, sys
import jax
jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2,
                           process_id={pid}, initialization_timeout=120)
assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
from configs import eval_verification
from exfiqa_jax.tasks import eval as evaluate
from exfiqa_jax.testing import worlds
config = eval_verification.get_config("benchmarks=mini,size=tiny")
result = evaluate.run(worlds.bin_config(config, {world!r}, {output!r}, **{over!r}))
print(json.dumps({{"computed": result["computed"]}}))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_hosts(world: dict, output: str) -> list[list[str]]:
  """Runs evaluate.run on 2 processes × 2 devices; every host's list of computed stages."""
  port = _free_port()
  strings = {k: str(v) for k, v in world.items()}

  def launch(pid):
    out = run_python(HOST.format(port=port, pid=pid, world=strings, output=output, over=FAST),
                     devices=2, timeout=240)       # raises with stderr on a non-zero exit
    return json.loads(out.strip().splitlines()[-1])["computed"]

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    futures = [pool.submit(launch, pid) for pid in (0, 1)]
    return [f.result() for f in futures]


def _cache_files(output) -> list[str]:
  root = os.path.join(output, "cache")
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files)


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def test_two_hosts_match_one_process_and_share_the_stage_cache(tmp_path):
  world = worlds.build_world(tmp_path)
  # The TFDS data set is built here once, so the two hosts only open it.
  builders.load("verification_bin/mini", world["bins"], world["data_dir"],
                **protocols.build_options("verification_bin", "published"))  # the eval default
  single = tmp_path / "single"
  evaluate.run(worlds.bin_config(eval_verification.get_config("benchmarks=mini,size=tiny"),
                                 world, single, **FAST))
  multi = str(tmp_path / "multi")

  first = _two_hosts(world, multi)
  assert sorted(first[0]) == sorted(first[1]) == STAGES      # every host ran every stage
  expected = ["stages.jsonl"] + [s + ".npz" for s in STAGES]   # no .parts, no temporary files
  assert _cache_files(multi) == sorted(expected) == _cache_files(single)
  log = stages.read_log(os.path.join(multi, "cache"))
  assert sorted(e["stage"] for e in log if e["event"] == "computed") == STAGES  # written once

  for name in ("pauc.csv", "edc.csv"):                     # row by row, in the written order
    want, got = tables.read_csv(single / name), tables.read_csv(os.path.join(multi, name))
    assert len(got) == len(want) > 50 and list(got[0]) == list(want[0]), name
    for i, (w, g) in enumerate(zip(want, got)):
      for col, text in w.items():
        if _is_number(text):
          assert float(g[col]) == pytest.approx(float(text), abs=1e-6, nan_ok=True), (name, i, col)
        else:
          assert g[col] == text, (name, i, col)

  again = _two_hosts(world, multi)
  assert again == [[], []]                                     # every stage loaded
  log = stages.read_log(os.path.join(multi, "cache"))[len(log):]
  assert sorted(e["stage"] for e in log) == STAGES
  assert {e["event"] for e in log} == {"cached"}
  assert _cache_files(multi) == sorted(expected)
