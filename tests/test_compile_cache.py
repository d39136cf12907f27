"""Compilations: the persistent cache is hit by a second run in a fresh process, and the last
partial batch compiles nothing new (docs/accelerators.md, "Compilation cache")."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from configs import common
from exfiqa_jax import compile_cache, inference
from exfiqa_jax.data import pipeline
from exfiqa_jax.testing import worlds
from exfiqa_jax.testing.subproc import run_python

# The real command line (cli.main sets the cache up from --config.compile_cache), with every
# executable counted: built (compiled or loaded), persistent-cache hits and misses.
COMMAND = """
import json, sys
from exfiqa_jax import cli
from exfiqa_jax.compile_cache import CompileCounter
sys.argv = ["main.py", "--config=configs/score.py:size=tiny", "--config.progress=False",
            "--config.compile_cache={cache}", "--config.quality_model.path={model}",
            "--config.images={images}", "--config.output={output}"]
with CompileCounter() as c:
  try:
    cli.run_main()                   # what main.py runs
  except SystemExit as e:
    assert not e.code, e.code
print(json.dumps({{"compiles": c.compiles, "hits": c.hits, "misses": c.misses}}))
"""


def _images(folder, n: int) -> str:
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (112, 112, 3), np.uint8)).save(
        os.path.join(folder, f"{i:03d}.png"))
  return str(folder)


def test_second_run_loads_every_program_from_the_cache(tmp_path):
  model = worlds.save_vit(tmp_path / "q", "token", 1)
  images = _images(tmp_path / "images", 11)          # one full batch of 8 and a partial one
  cache = tmp_path / "xla"
  runs = []
  for k in range(2):                                 # fresh outputs: both really score
    out = run_python(COMMAND.format(cache=cache, model=model, images=images,
                                    output=tmp_path / f"out{k}"), devices=1)
    runs.append(json.loads(out.strip().splitlines()[-1]))
  first, second = runs
  assert first["misses"] > 0 and first["hits"] == 0, first
  assert second["misses"] == 0 and second["hits"] == second["compiles"] > 0, second
  assert any(os.scandir(cache))


def test_compile_cache_folder_and_off_switch(tmp_path, monkeypatch):
  assert common.base_config("score").compile_cache == compile_cache.DEFAULT
  assert compile_cache.resolve("") is None and compile_cache.setup("") is None
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.resolve(compile_cache.DEFAULT) == str(tmp_path / "exfiqa_jax" / "xla")
  assert compile_cache.resolve(str(tmp_path / "mine")) == str(tmp_path / "mine")


def test_last_partial_batch_compiles_nothing(tmp_path):
  """Score path (pipeline.host_batches + run_batch, as tasks/score.py and the quality stage of
  evaluation/pipeline.py) over 11 rows in batches of 8: the partial batch reuses the program."""
  model = inference.load(worlds.save_vit(tmp_path / "q", "token", 1), batch_size=8)
  images = np.random.default_rng(0).integers(0, 256, (11, 112, 112, 3), np.uint8)
  batches = list(pipeline.host_batches(pipeline.array_reader(images), len(images), 8))
  assert [b.num_rows for b in batches] == [8, 3]
  assert {b.images.shape for b in batches} == {(8, 112, 112, 3)}
  model.run_batch(batches[0].images)                 # compiles the one program
  with compile_cache.CompileCounter() as counter:
    out = model.run_batch(batches[1].images)
  assert counter.compiles == 0
  assert model._forward(False, model.num_exits)._cache_size() == 1
  np.testing.assert_allclose(out["exit_scores"][:3], model.score(images[8:])["exit_scores"],
                             atol=1e-5)
