"""The quality-method vocabulary (exfiqa_jax/methods/registry.py): names, options with their
official defaults, `[method:]path` entries, the cache identity of an asked method, and the config
fields built from it (configs/common.py). Pure Python: no model is loaded here."""
from __future__ import annotations

import pytest

from configs import common, eval_ijbc, score
from exfiqa_jax.methods import registry


def test_entries_split_a_method_from_a_path():
  assert registry.split_method("crfiqa:cr.pth") == ("crfiqa", "cr.pth")
  assert registry.split_method("grafiqs:/m/r100.pth") == ("grafiqs", "/m/r100.pth")
  assert registry.split_method("ckpt/vitfiqa_token") == ("", "ckpt/vitfiqa_token")
  for windows in ("C:\\models\\cr.pth", "c:/models/cr.pth"):   # a drive is not a method
    assert registry.split_method(windows) == ("", windows)
  assert registry.split_method("/data/a:b/model") == ("", "/data/a:b/model")
  with pytest.raises(ValueError, match=r"'crfiq' is not a quality method.*'crfiqa'.*\./crfiq"):
    registry.split_method("crfiq:cr.pth")
  assert registry.resolve_entry("cr.pth", "serfiq") == ("serfiq", "cr.pth")
  assert registry.resolve_entry("crfiqa:cr.pth", "serfiq") == ("crfiqa", "cr.pth")  # entry wins
  with pytest.raises(ValueError, match=r"^--config.quality_model.method='x' is not a quality"):
    registry.resolve_entry("cr.pth", "x", "--config.quality_model.method=")


def test_options_defaults_overrides_and_errors():
  assert registry.options("serfiq")["passes"] == 100
  assert registry.options("serfiq", {"passes": 5})["passes"] == 5
  assert registry.options("vitnt", {"blocks": [0, 1, 2]})["blocks"] == (0, 1, 2)
  assert registry.options("vitnt", {"blocks": ""})["blocks"] == ()
  assert registry.options("crfiqa") == {} and registry.options("") == {}
  with pytest.raises(ValueError, match=r"method=crfiqa takes no options; got \['passes'\]"):
    registry.options("crfiqa", {"passes": 5})
  with pytest.raises(ValueError, match=r"method=vitnt takes \['attention', 'blocks', 'scaling'\]"):
    registry.options("vitnt", {"block": (0, 1)})
  assert registry.check_method(None) == "" and registry.check_method(" vitnt ") == "vitnt"


def test_identity_is_empty_for_the_default_pass_and_follows_the_options():
  tables = registry.config_options(score.get_config().quality_model)
  assert registry.identity("", tables) == {}            # stamps before methods stay valid
  assert registry.identity("grafiqs", tables) == {"method": "grafiqs", "options": {}}
  serfiq = registry.identity("serfiq", tables)
  assert serfiq["options"] == registry.OPTIONS["serfiq"]
  tables["serfiq"]["passes"] = 10
  assert registry.identity("serfiq", tables) != serfiq
  assert registry.identity("", tables) == {}             # "" never reads SER-FIQ's options
  tables["vitnt"]["scaling"] = 4.0                        # an FR ViT reads ViTNT's
  assert registry.identity("", tables) == {"method": "", "options": {
      "vitnt": {**registry.OPTIONS["vitnt"], "scaling": 4.0}}}


def test_every_job_config_has_the_method_and_its_options():
  for config in (score.get_config(), eval_ijbc.get_config()):
    assert config.quality_model.method == ""
    assert registry.config_options(config.quality_model) == registry.OPTIONS
  assert set(common.quality_model()) == {"path", "num_heads", "family", "method",
                                         *registry.OPTIONS}
