"""Every job config loads (with its tiny/smoke variant), uses the one schema, names a known task,
importing the configs never imports JAX, and a checkout's configs/ is the packaged configs."""
from __future__ import annotations

import importlib
import pathlib

import pytest

from exfiqa_jax import configs
from exfiqa_jax.configs import common
from exfiqa_jax.testing.subproc import run_python

CONFIGS = list(configs.names())
CHECKOUT = pathlib.Path(__file__).parents[1] / "configs"
VARIANTS = {"demo": "size=smoke", "train_tiny": "size=smoke", "train_vitfiqa": "size=smoke",
            "train_crfiqa": "size=smoke",
            "score": "size=tiny", "embed": "size=tiny", "eval_ijbc": "size=tiny",
            "eval_verification": "benchmarks=lfw+xqlfw,size=tiny", "early_exit": "size=smoke"}


def test_every_job_has_a_variant():
  assert set(CONFIGS) <= set(VARIANTS), set(CONFIGS) - set(VARIANTS)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("variant", [False, True])
def test_config_loads_with_the_one_schema(name, variant):
  from exfiqa_jax.tasks import TASKS
  config = importlib.import_module(f"exfiqa_jax.configs.{name}").get_config(
      VARIANTS.get(name) if variant else None)
  assert config.task in TASKS and config.output and isinstance(config.seed, int)
  for key in ("quality_model", "fr"):
    if key in config:
      assert {"path", "family", "num_heads"} <= set(config[key]), (name, key)
      assert config[key].num_heads == common.NUM_HEADS
  if "data" in config and "channel_order" in config.data:
    assert config.data.channel_order in ("", "rgb", "bgr")
  for stale in ("checkpoint", "model", "fr_model", "channel_order", "normalisation"):
    assert stale not in config, (name, stale)         # the old, ambiguous keys


def test_arguments_are_key_value():
  from exfiqa_jax.configs import eval_verification, score
  assert eval_verification.get_config("benchmarks=lfw+agedb_30").benchmarks == "lfw,agedb_30"
  assert score.get_config("size=tiny").batch_size == 8
  with pytest.raises(ValueError, match="key=value"):
    score.get_config("tiny")
  with pytest.raises(ValueError, match="unknown config argument 'sise'"):
    score.get_config("sise=tiny")
  parsed = common.parse_arg("n=3,x=0.5,flag=true,name=a+b", n=1, x=0.0, flag=False, name="")
  assert (parsed.n, parsed.x, parsed.flag, parsed.name) == (3, 0.5, True, "a+b")


@pytest.mark.parametrize("name", CONFIGS)
def test_a_config_argument_value_is_checked(name):
  """size=tiyn is an error listing the sizes, never silently the default."""
  module = importlib.import_module(f"exfiqa_jax.configs.{name}")
  with pytest.raises(ValueError, match=r"size='tiyn' is not one of \('default', '(tiny|smoke)'\)"):
    module.get_config("size=tiyn")


def test_importing_the_configs_does_not_import_jax():
  out = run_python(f"""
    import importlib, sys
    for name in {CONFIGS!r}:
      importlib.import_module("exfiqa_jax.configs." + name).get_config()
    print("jax" in sys.modules, "exfiqa_jax.evaluation" in sys.modules)
  """, devices=1)
  assert out.strip().splitlines()[-1] == "False False"


def test_the_checkout_configs_are_the_packaged_ones():
  """configs/<name>.py (python main.py --config=configs/<name>.py, `from configs import x`)
  re-exports exfiqa_jax/configs/<name>.py, one for one, shared modules included."""
  shims = {p.stem for p in CHECKOUT.glob("*.py")} - {"__init__"}
  assert shims == set(CONFIGS) | set(configs.SHARED)
  for name in shims:
    shim = importlib.import_module(f"configs.{name}")
    packaged = importlib.import_module(f"exfiqa_jax.configs.{name}")
    public = {k for k in vars(packaged) if not k.startswith("_")}
    assert all(getattr(shim, k) is getattr(packaged, k) for k in public), name
