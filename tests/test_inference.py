"""`fx.load(path, method=...)` (exfiqa_jax/inference.py): every method gives the columns its scorer
gives (methods/; the scorers themselves are checked against PyTorch twins in test_<method>.py),
what a checkpoint implies when no method is asked, the ViT-FIQA result unchanged, the method
registry's defaults equal to the scorers', and errors that name the setting to change."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

import exfiqa_jax as fx
from exfiqa_jax import columns, convert, inference, models
from exfiqa_jax.convert import strict
from exfiqa_jax.methods import crfiqa, ediffiqa, grafiqs, magface, registry, serfiq, vitnt
from exfiqa_jax.testing import baselines_torch as bt
from exfiqa_jax.testing import fr_torch_reference as ref
from exfiqa_jax.testing import worlds

TINY = (8, 16, 24, 32)
LAYERS = (1, 1, 1, 1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  """One tiny checkpoint per kind: CR-FIQA / eDifFIQA .pth (official key names), a MagFace
  release file, a plain iResNet FR model, a ViT-FIQA and an FR ViT (converted directories)."""
  root = tmp_path_factory.mktemp("inference")
  out = {}
  for name, twin in (("crfiqa", bt.CRFIQAIResNet(LAYERS, TINY, 64)),
                     ("ediffiqa", bt.ediffiqa(LAYERS, TINY, 64, hidden=16))):
    out[name] = str(root / f"{name}.pth")
    convert.torch_io.save_state_dict(bt.numpy_state_dict(ref.randomize_(twin, seed=3)),
                                     out[name])
  mag = ref.randomize_(bt.MagFaceCheckpoint(ref.IResNet(LAYERS, TINY, 64, eps=2e-5), 64), seed=4)
  out["magface"] = str(root / "magface.pth")
  torch.save({"state_dict": mag.state_dict()}, out["magface"])
  out["cnn"] = worlds.save_iresnet(root / "cnn", 5)
  out["token"] = worlds.save_vit(root / "token", "token", 6)
  out["fr_vit"] = worlds.save_vit(root / "fr_vit", "fr", 7)
  out["images"] = bt.uint8_faces(3, seed=8)
  return out


def _scorer_columns(path, method_module, **options):
  variables, config = inference.load_variables(path)
  return method_module.scorer(models.get_model(config), variables, config, **options)


def _same(got, want):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], np.asarray(want[k]), rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kind, method, module, options", [
    ("crfiqa", "", crfiqa, {}), ("ediffiqa", "ediffiqa", ediffiqa, {}),
    ("magface", "", magface, {"channel_order": "bgr"}),
    ("cnn", "magface", magface, {"any_family": True}),
    ("cnn", "serfiq", serfiq, {"passes": 4, "rescale": True}), ("cnn", "grafiqs", grafiqs, {})])
def test_every_method_gives_its_scorers_columns(ckpts, kind, method, module, options):
  model = fx.load(ckpts[kind], method=method, batch_size=2, **options)
  want = _scorer_columns(ckpts[kind], module, **options)
  assert isinstance(model, inference.MethodModel) and not model.has_exits
  assert model.columns == want.columns and model.method == want.method
  assert model.method_identity() == {"method": want.method,
                                     "options": registry.options(want.method, options)}
  _same(model.score(ckpts["images"]), want(ckpts["images"]))    # 3 images: two padded chunks
  assert {k: v.shape for k, v in model.score(ckpts["images"][:0]).items()} == {
      c: (0,) for c in want.columns}


def test_method_options_tables_and_overrides(ckpts):
  tables = {"magface": {"channel_order": "bgr", "any_family": False}, "serfiq": {"passes": 3}}
  model = fx.load(ckpts["magface"], method_options=tables)      # the family implies magface
  assert model.options == {"channel_order": "bgr", "any_family": False}
  model = fx.load(ckpts["magface"], method_options=tables, channel_order="rgb")
  assert model.options["channel_order"] == "rgb"


def test_vitfiqa_unchanged_and_vitnt_from_the_same_pass(ckpts):
  images = ckpts["images"]
  plain = fx.load(ckpts["token"], batch_size=4)
  out = plain.score(images)
  assert isinstance(plain, inference.QualityModel) and plain.method_identity() == {}
  assert set(out) == {"exit_scores", "ex_fiqa_f", "ex_fiqa_fw", "attn_scores", "embedding"}
  assert plain.columns == tuple(columns.score_names(plain.num_exits))
  asked = fx.load(ckpts["token"], method="vitnt", batch_size=4)
  both = asked.score(images)
  for k in out:                                 # the ViT-FIQA result bit-identical beside ViTNT
    np.testing.assert_array_equal(both[k], out[k], err_msg=k)
  assert asked.columns == plain.columns + vitnt.COLUMNS
  _same({c: both[c] for c in vitnt.COLUMNS}, _scorer_columns(ckpts["token"], vitnt)(images))
  for blocks in ((0, 1), (0, 2)):               # a prefix in the pass, any other subset apart
    model = fx.load(ckpts["token"], method="vitnt", blocks=blocks, attention="mean",
                    batch_size=4)
    _same({c: model.score(images)[c] for c in vitnt.COLUMNS},
          _scorer_columns(ckpts["token"], vitnt, blocks=blocks, attention="mean")(images))
  truncated = asked.score(images, exit=2)       # ViTNT over the blocks the program runs
  _same({c: truncated[c] for c in vitnt.COLUMNS},
        _scorer_columns(ckpts["token"], vitnt, blocks=(0, 1))(images))


def test_fr_vit_gets_attn_and_vitnt(ckpts):
  model = fx.load(ckpts["fr_vit"], batch_size=4)
  out = model.score(ckpts["images"])
  assert set(out) == {"attn_scores", "embedding", "vitnt", "vitnt_uniform"}
  assert model.columns == tuple(columns.attn_names(model.num_exits)) + vitnt.COLUMNS
  assert model.method_identity() == {"method": "vitnt", "options": registry.options("vitnt")}
  _same({c: out[c] for c in vitnt.COLUMNS}, _scorer_columns(ckpts["fr_vit"], vitnt)(
      ckpts["images"]))


def test_a_wrong_method_names_the_setting(ckpts):
  with pytest.raises(ValueError, match=r"^method=grafiqs needs an iResNet"):
    fx.load(ckpts["token"], method="grafiqs")
  with strict.flags_named(method="--config.quality_model.method="):   # what the tasks set
    with pytest.raises(ValueError, match=r"--config.quality_model.method=vitnt needs a ViT"):
      fx.load(ckpts["cnn"], method="vitnt")
    with pytest.raises(ValueError, match=r"--config.quality_model.method=crfiqa needs"):
      fx.load(ckpts["ediffiqa"], method="crfiqa")
    with pytest.raises(ValueError, match=r"--config.quality_model.method=magface needs"):
      fx.load(ckpts["cnn"], method="magface")
    with pytest.raises(convert.strict.CheckpointError,
                       match=r"without a quality head.*method=<one of serfiq, grafiqs, magface"):
      fx.load(ckpts["cnn"])
  with pytest.raises(ValueError, match=r"method='serfic' is not a quality method.*crfiqa"):
    fx.load(ckpts["cnn"], method="serfic")
  with pytest.raises(ValueError, match=r"method=serfiq takes \[.*passes.*\]; got \['blocks'\]"):
    fx.load(ckpts["cnn"], method="serfiq", blocks=(0, 1))
  with pytest.raises(ValueError, match=r"method='' takes no options; got \['passes'\]"):
    fx.load(ckpts["token"], passes=3)
  model = fx.load(ckpts["crfiqa"])
  with pytest.raises(ValueError, match=r"exit=3: method=crfiqa has no early exits"):
    model.run_batch(ckpts["images"][:1], exit=3)


def test_registry_defaults_are_the_scorers():
  for name, module in (("magface", magface), ("serfiq", serfiq), ("vitnt", vitnt)):
    params = inspect.signature(module.scorer).parameters
    scorer_defaults = {k: p.default for k, p in params.items()
                       if k not in ("module", "variables", "model_config")}
    registry_defaults = dict(registry.OPTIONS[name])
    if name == "vitnt":              # () and None both mean every block of the program
      assert scorer_defaults.pop("blocks") is None and registry_defaults.pop("blocks") == ()
    assert scorer_defaults == registry_defaults, name
  for module in (crfiqa, ediffiqa, grafiqs):
    assert set(inspect.signature(module.scorer).parameters) == {"module", "variables",
                                                                "model_config"}
    assert module.METHOD in registry.METHODS and module.METHOD not in registry.OPTIONS
  assert set(inference.SCORERS) == set(registry.METHODS)
  from exfiqa_jax.convert import iresnet_keys, quality_head_keys
  assert set(registry.FAMILY_METHODS) == {quality_head_keys.CRFIQA.name,
                                          quality_head_keys.EDIFFIQA.name,
                                          iresnet_keys.MAGFACE.name}


def test_a_directory_keeps_its_recorded_heads(ckpts, caplog):
  """A converted directory records its head count: loading it without num_heads (None or 0:
  the checkpoint's own) says nothing; a different count passed is ignored with a warning that
  names the flag of the entry point."""
  recorded = inference.load_variables(ckpts["token"])[1]["num_heads"]
  inference.load_variables(ckpts["token"], num_heads=0)
  assert "ignoring" not in caplog.text
  other = 2 * recorded
  _, config = inference.load_variables(ckpts["token"], num_heads=other)
  assert config["num_heads"] == recorded
  assert f"ignoring num_heads={other}" in caplog.text
  caplog.clear()
  with strict.flags_named(num_heads="--config.quality_model.num_heads="):
    inference.load_variables(ckpts["token"], num_heads=other)
  assert f"ignoring --config.quality_model.num_heads={other}" in caplog.text



def test_score_adds_the_models_q100_columns(tmp_path):
  """A model directory with a quality_mapping.json: score adds its q100_* columns, as the score
  job's scores.csv (QualityMapping.apply, which under exit=k maps exit_1..k only:
  tests/test_quality_mapping.py); mapping="none" leaves them out."""
  from exfiqa_jax import quality_mapping
  path = worlds.save_vit(tmp_path / "m", "token", 3)
  model = fx.load(path)
  assert model.mapping is None                          # no file: no q100_* columns
  depth = model.num_exits
  raw = np.random.default_rng(1).normal(size=(50, depth)).astype(np.float32)
  mapping = quality_mapping.fit_mapping({"exit_scores": raw, "ex_fiqa_f": raw.mean(1),
                                         "ex_fiqa_fw": raw[:, -1]}, knots=5)
  quality_mapping.store_with_model(path, mapping)
  model = fx.load(path)
  images = np.random.default_rng(0).integers(0, 255, (5, 112, 112, 3), np.uint8)
  out = model.score(images)
  names = [columns.exit_name(k) for k in range(1, depth + 1)] + ["ex_fiqa_f", "ex_fiqa_fw"]
  assert [k for k in out if k.startswith("q100_")] == [columns.q100_name(n) for n in names]
  for key, want in mapping.apply(out).items():
    np.testing.assert_array_equal(out[key], want)
    assert want.shape == (5,) and 0 <= want.min() and want.max() <= 100
  assert fx.load(path, mapping="none").mapping is None
  assert fx.load(path, mapping=str(tmp_path / "m" / "quality_mapping.json")).mapping == mapping
