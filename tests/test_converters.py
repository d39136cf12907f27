"""Converters: torch ⇄ flax for the ViT family, strictness, wrappers, CLI, Orbax directories.

Independent reference: the PyTorch twin (tests/torch_reference.py) with the official key names.
Round trips are bitwise; converted-model parity with the twin uses atol 1e-4 on the final score
and the embedding (every exit is tested by the model's own tests).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from exfiqa_jax import convert
from exfiqa_jax import models
from exfiqa_jax.convert import families, strict, torch_io, vit_keys
from exfiqa_jax.convert.strict import CheckpointError, check_state_dict
from exfiqa_jax import checkpoints
from exfiqa_jax.models import vit
from exfiqa_jax.testing import torch_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# "fr_nomask": a CVLFace-style FR ViT built without masking (no mask_token key)
MODES = ("token", "crfiqa", "full", "fr", "fr_nomask")
APPENDIX_A_HEAD = ("qs_token", "pos_embed", "mask_token", "patch_embed.proj.weight",
                   "patch_embed.proj.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias",
                   "blocks.0.norm2.weight")
ARCH_FIELDS = ("mode", "width", "depth", "num_heads", "patch_size", "img_size", "mlp_dim",
               "embed_dim", "has_mask_token")


def _twin(mode: str, seed: int = 0):
  """(ViTConfig, twin with random weights and BN statistics) for a tiny config of `mode`."""
  overrides = {}
  if mode == "fr_nomask":
    mode, overrides = "fr", {"has_mask_token": False}
  cfg = vit.tiny_config(mode, **overrides)
  model = ref.VitFiqaTorch(**ref.tiny_kwargs(mode, mask_token=cfg.has_mask_token))
  ref.random_init_(model, seed=seed)
  return cfg, model.eval()


def _fresh_twin(cfg):
  return ref.VitFiqaTorch(**ref.tiny_kwargs(cfg.mode, mask_token=cfg.has_mask_token))


def _sd(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _images(n: int = 3, seed: int = 1) -> np.ndarray:
  return np.random.RandomState(seed).uniform(-1, 1, (n, 112, 112, 3)).astype(np.float32)


@pytest.fixture(scope="module", params=MODES)
def twin(request):
  cfg, model = _twin(request.param, seed=MODES.index(request.param))
  return request.param, cfg, model, _sd(model)


def test_inferred_config_matches_the_twin(twin):
  mode, cfg, _, sd = twin
  config = vit_keys.VIT.infer_config(sd, num_heads=cfg.num_heads)
  assert config["family"] == "vit" and config["input_scale"] == "minus1_1"
  for field in ARCH_FIELDS:
    assert config[field] == getattr(cfg, field), field
  assert families.detect_family(sd) is vit_keys.VIT
  assert vit_keys.expected_shapes(config) == {k: tuple(v.shape) for k, v in sd.items()}


def test_round_trip_is_bitwise_and_loads_strictly(twin):
  mode, cfg, model, sd = twin
  config = vit_keys.VIT.infer_config(sd, num_heads=cfg.num_heads)
  variables = vit_keys.VIT.to_flax(sd, config)
  back = vit_keys.VIT.to_torch(variables, config)
  assert set(back) == set(sd)
  head = [k for k in APPENDIX_A_HEAD if k in sd]
  assert list(back)[:len(head)] == head   # official order (Appendix A)
  for k, v in sd.items():
    if k.endswith("num_batches_tracked"):
      assert back[k].shape == () and back[k].dtype == np.int64 and back[k] == 0
    else:
      assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
  fresh = _fresh_twin(cfg)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
  if cfg.has_mask_token:   # kept in params (training needs it), not dropped
    np.testing.assert_array_equal(variables["params"]["mask_token"], sd["mask_token"])


def test_flax_tree_is_what_the_module_creates(twin):
  mode, cfg, _, sd = twin
  config = vit_keys.VIT.infer_config(sd, num_heads=cfg.num_heads)
  variables = vit_keys.VIT.to_flax(sd, config)
  abstract = checkpoints.abstract_variables(config)
  got = jax.tree.map(lambda x: (x.shape, str(x.dtype)), variables)
  want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), dict(abstract))
  assert got == want


def test_converted_model_matches_the_twin(twin):
  mode, cfg, model, sd = twin
  variables, config = convert.convert_state_dict(sd, num_heads=cfg.num_heads)
  images = _images()
  _, out = models.get_model(config).apply(variables, images)
  with torch.no_grad():
    embedding, score = model(torch.from_numpy(images).permute(0, 3, 1, 2))
    attn_scores, _ = model.attention(torch.from_numpy(images).permute(0, 3, 1, 2))
  np.testing.assert_allclose(out["embedding"], embedding.numpy(), atol=1e-4)
  np.testing.assert_allclose(out["attn_scores"], attn_scores.numpy(), atol=1e-4)
  if cfg.mode == "fr":
    assert "exit_scores" not in out
  else:
    np.testing.assert_allclose(out["exit_scores"][:, -1], score.numpy(), atol=1e-4)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module.", "net.",
                                  "state_dict+module."])
def test_wrapped_and_prefixed_checkpoints(tmp_path, wrap):
  _, model = _twin("token")
  tensors = model.state_dict()
  obj = tensors
  if wrap.endswith("."):
    obj = {wrap.split("+")[-1] + k: v for k, v in tensors.items()}
  if wrap.startswith(("state_dict", "model")):
    inner = {"module." + k: v for k, v in tensors.items()} if "+" in wrap else tensors
    obj = {wrap.split("+")[0]: inner, "epoch": 3}
  path = tmp_path / "w.pt"
  torch.save(obj, path)
  sd = torch_io.load_state_dict(path)
  assert list(sd) == list(tensors)
  for k, v in tensors.items():
    np.testing.assert_array_equal(sd[k], v.numpy())


def test_bad_checkpoint_lists_every_problem():
  cfg, model = _twin("token")
  sd = _sd(model)
  config = vit_keys.VIT.infer_config(sd, num_heads=cfg.num_heads)
  broken = dict(sd)
  del broken["blocks.1.attn.proj.bias"]
  del broken["head_qs.1.weight"]
  broken["blocks.0.attn.qkv.bias"] = np.ones(3 * cfg.width, np.float32)   # qkv has no bias
  broken["blocks.2.mlp.fc1.weight"] = broken["blocks.2.mlp.fc1.weight"][:-1]
  broken["feature.1.num_batches_tracked"] = np.float32(3.0)
  with pytest.raises(CheckpointError) as e:
    vit_keys.VIT.to_flax(broken, config)
  msg = str(e.value)
  for part in ("missing keys (2)", "blocks.1.attn.proj.bias", "head_qs.1.weight",
               "unexpected keys (1)", "blocks.0.attn.qkv.bias", "mis-shaped keys (1)",
               "blocks.2.mlp.fc1.weight", "feature.1.num_batches_tracked"):
    assert part in msg, (part, msg)


@pytest.mark.parametrize("bad", ["missing", "extra", "shape"])
def test_each_bad_case_alone_through_the_file_path(tmp_path, bad):
  cfg, model = _twin("crfiqa")
  tensors = dict(model.state_dict())
  if bad == "missing":
    key = "blocks.0.norm2.weight"
    del tensors[key]
  elif bad == "extra":
    key = "blocks.9.norm1.bias_extra"
    tensors[key] = torch.ones(4)
  else:
    key = "feature.2.weight"
    tensors[key] = torch.ones(3, 3)
  torch.save(tensors, tmp_path / "bad.pt")
  with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
    checkpoints.pt_to_directory(str(tmp_path / "bad.pt"), str(tmp_path / "out"),
                          num_heads=cfg.num_heads)
  assert not os.path.exists(tmp_path / "out")


class _NotATensor:
  pass


def test_pickled_objects_are_refused(tmp_path):
  torch.save({"blocks.0.norm1.weight": torch.ones(4), "config": _NotATensor()},
             tmp_path / "obj.pt")
  with pytest.raises(CheckpointError, match="not a plain state_dict") as e:
    torch_io.load_state_dict(tmp_path / "obj.pt")
  assert "torch.save(" in str(e.value) and "_NotATensor" in str(e.value)
  torch.save({"w": torch.ones(2), "epoch": 3}, tmp_path / "mixed.pt")   # allowed pickle types
  with pytest.raises(CheckpointError, match="non-tensor entries.*epoch"):
    torch_io.load_state_dict(tmp_path / "mixed.pt")
  torch.save([torch.ones(2)], tmp_path / "list.pt")
  with pytest.raises(CheckpointError, match="not a state_dict"):
    torch_io.load_state_dict(tmp_path / "list.pt")


def test_heads_flag_is_validated(caplog):
  cfg, model = _twin("token")
  sd = _sd(model)
  for bad in (7 if cfg.width % 7 else 5, -2, True, 2.0):
    with pytest.raises(CheckpointError, match="--num_heads"):
      vit_keys.VIT.infer_config(sd, num_heads=bad)
  heads = next(h for h in (1, 2, 4) if h != cfg.num_heads)
  assert vit_keys.VIT.infer_config(sd, num_heads=heads)["num_heads"] == heads
  # 0 and None = the architecture's own count: no published ViT has these shapes, so the
  # default 8 is assumed, with a warning that says how to pass another count
  for unset in (0, None):
    caplog.clear()
    config = vit_keys.VIT.infer_config(sd, num_heads=unset, source="tiny.pt")
    assert config["num_heads"] == vit_keys.DEFAULT_HEADS
    assert vit_keys.HEADS_OVERRIDE not in config
    assert "tiny.pt: assuming 8 attention heads" in caplog.text and "--num_heads=<n>" in caplog.text


def test_published_architectures_know_their_head_count():
  """No weight shape records the heads: the official code's architectures are known by the
  shapes that do (ViT-FIQA ViT-S 8; CVLFace / ATTN-FIQA ViT-S 8, ViT-B 16)."""
  def heads(width, depth, patch_size, mlp_dim):
    found = vit_keys.release_of(dict(width=width, depth=depth, patch_size=patch_size,
                                     mlp_dim=mlp_dim))
    return found and found.num_heads
  assert heads(512, 12, 9, 2048) == 8         # ViT-FIQA's released checkpoints
  assert heads(512, 12, 8, 2560) == 8         # CVLFace ViT-S (mlp_ratio 5)
  assert heads(512, 24, 8, 1536) == 16        # CVLFace ViT-B (mlp_ratio 3)
  assert heads(32, 3, 28, 64) is None
  keys = [(r.width, r.depth, r.patch_size, r.mlp_dim) for r in vit_keys.RELEASES]
  assert len(set(keys)) == len(keys)
  assert all(r.width % r.num_heads == 0 for r in vit_keys.RELEASES)


@pytest.fixture
def tiny_release(monkeypatch):
  """The tiny token twin registered as a published architecture with its 4 heads (the real
  releases are 76 M parameters and more)."""
  cfg, model = _twin("token")
  release = vit_keys.Release("tiny release", cfg.width, cfg.depth, cfg.patch_size, cfg.mlp_dim,
                             cfg.num_heads)
  monkeypatch.setattr(vit_keys, "RELEASES", vit_keys.RELEASES + (release,))
  return cfg, model


def test_a_published_architecture_loads_with_its_heads_and_warns_on_another(tiny_release,
                                                                             caplog):
  cfg, model = tiny_release
  sd = _sd(model)
  for unset in (None, 0):
    config = vit_keys.VIT.infer_config(sd, num_heads=unset)
    assert config["num_heads"] == cfg.num_heads and vit_keys.HEADS_OVERRIDE not in config
  assert not caplog.records
  # the issue's case: a 4-head model loaded with 8 (divisible, so nothing else objects)
  with strict.flags_named(num_heads="--config.quality_model.num_heads="):
    config = vit_keys.VIT.infer_config(sd, num_heads=8, source="m.pt")
  assert config["num_heads"] == 8 and config[vit_keys.HEADS_OVERRIDE] is True
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
  assert "m.pt has the shapes of the tiny release" in warning
  assert f"uses {cfg.num_heads} attention heads" in warning
  assert "--config.quality_model.num_heads=0" in warning


def _edit_config(directory, **fields):
  path = os.path.join(directory, checkpoints.CONFIG_FILE)
  with open(path) as f:
    config = json.load(f)
  config.update(fields)
  config = {k: v for k, v in config.items() if v is not None}
  with open(path, "w") as f:
    json.dump(config, f)
  return path


def test_model_config_heads_must_agree_with_the_architecture(tiny_release, tmp_path):
  """The converted directory records its head count; a hand-edited one that the variables or
  the published architecture contradict is an error naming the file."""
  cfg, model = tiny_release
  torch.save(model.state_dict(), tmp_path / "m.pt")
  directory = str(tmp_path / "ckpt")
  checkpoints.pt_to_directory(str(tmp_path / "m.pt"), directory)
  with open(os.path.join(directory, checkpoints.CONFIG_FILE)) as f:
    recorded = json.load(f)
  assert recorded["num_heads"] == cfg.num_heads and vit_keys.HEADS_OVERRIDE not in recorded
  clean = open(os.path.join(directory, checkpoints.CONFIG_FILE)).read()
  other = next(h for h in (2, 1) if h != cfg.num_heads)
  cases = {"num_heads": (dict(num_heads=other), "tiny release, which uses 4 heads"),
           "not dividing": (dict(num_heads=cfg.width - 1), "does not divide the width"),
           "string": (dict(width=str(cfg.width)), "whole numbers"),
           "float": (dict(num_heads=float(cfg.num_heads)), "whole numbers"),
           "override type": (dict(num_heads_override="yes"), "true or false")}
  for name, (fields, message) in cases.items():
    path = _edit_config(directory, **fields)
    with pytest.raises(CheckpointError, match=message) as e:
      checkpoints.load_model(directory)
    assert path in str(e.value), name
    with open(path, "w") as f:
      f.write(clean)
  # an override on purpose (a model trained with that count) is recorded and loads
  _edit_config(directory, num_heads=other, num_heads_override=True)
  assert checkpoints.load_model(directory)[1]["num_heads"] == other


def test_mode_inference_errors_and_unknown_family():
  cfg, model = _twin("token")
  sd = _sd(model)
  sd["feature.0.weight"] = sd["feature.0.weight"][:, :-cfg.width // 2]
  with pytest.raises(CheckpointError, match="mode token.*mode full"):
    vit_keys.VIT.infer_config(sd)
  with pytest.raises(CheckpointError, match="no known model family"):
    families.detect_family({"foo.weight": np.ones(3, np.float32)})
  with pytest.raises(CheckpointError, match="unknown model family 'resnet'"):
    families.detect_family(sd, "resnet")


def test_orbax_directory_round_trip_and_reverse_converter(tmp_path):
  cfg, model = _twin("full", seed=4)
  torch.save(model.state_dict(), tmp_path / "m.pt")
  config = checkpoints.pt_to_directory(str(tmp_path / "m.pt"), str(tmp_path / "ckpt"),
                                 num_heads=cfg.num_heads)
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["model_config.json", "variables"]
  assert not os.path.exists(tmp_path / "ckpt.partial")
  variables, loaded = checkpoints.load_model(tmp_path / "ckpt")
  assert loaded == config
  # overwriting an existing directory replaces it atomically
  checkpoints.save_model(tmp_path / "ckpt", checkpoints.to_numpy(variables), loaded)
  sd = checkpoints.directory_to_pt(str(tmp_path / "ckpt"), str(tmp_path / "back.pt"))
  fresh = _fresh_twin(cfg)
  fresh.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True), strict=True)
  for k, v in model.state_dict().items():
    if not k.endswith("num_batches_tracked"):
      assert np.array_equal(sd[k], v.numpy()), k


def test_directory_that_does_not_fit_its_config(tmp_path):
  cfg, model = _twin("token", seed=2)
  variables, config = convert.convert_state_dict(_sd(model), num_heads=cfg.num_heads)
  checkpoints.save_model(tmp_path / "ckpt", variables, {**config, "depth": config["depth"] + 1})
  with pytest.raises(CheckpointError, match="do not fit"):
    checkpoints.load_model(tmp_path / "ckpt")
  with pytest.raises(CheckpointError, match="not a converted model directory"):
    checkpoints.load_model(tmp_path)


def test_missing_torch_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
    torch_io.load_state_dict("whatever.pt")


def test_check_state_dict_accepts_an_exact_match():
  check_state_dict({"a": (2, 3), "n.num_batches_tracked": ()},
                   {"a": np.ones((2, 3)), "n.num_batches_tracked": np.int64(5)})


def _run_cli(module: str, *args: str, returncode: int = 0) -> subprocess.CompletedProcess:
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == returncode, proc.stderr[-4000:]
  assert "orbax" not in proc.stderr.lower(), proc.stderr[-4000:]   # INFO: ours only (console.py)
  return proc


def test_cli_round_trip(tmp_path):
  cfg, model = _twin("crfiqa", seed=7)
  torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
             tmp_path / "in.pt")
  _run_cli("converters.torch_to_flax", f"--checkpoint={tmp_path / 'in.pt'}",
           f"--out={tmp_path / 'ckpt'}", f"--num_heads={cfg.num_heads}")
  (tmp_path / "out.pt").write_bytes(b"an older file")       # replaced: --overwrite
  _run_cli("converters.flax_to_torch", f"--checkpoint={tmp_path / 'ckpt'}",
           f"--out={tmp_path / 'out.pt'}", "--overwrite")
  back = torch.load(tmp_path / "out.pt", weights_only=True)
  for k, v in model.state_dict().items():
    assert back[k].dtype == v.dtype and torch.equal(back[k], v) or \
        k.endswith("num_batches_tracked"), k
  # a typo --out=<the input> is refused in one line, before any work, the input untouched
  before = (tmp_path / "in.pt").read_bytes()
  refused = _run_cli("converters.torch_to_flax", f"--checkpoint={tmp_path / 'in.pt'}",
                     f"--out={tmp_path / 'in.pt'}", "--overwrite", returncode=1)
  assert refused.stderr.startswith("error: --out=") and "Traceback" not in refused.stderr
  assert f"e.g. --out={tmp_path / 'in'}" in refused.stderr
  assert (tmp_path / "in.pt").read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["ckpt", "in.pt", "out.pt"]


# ----------------------------------------------- the converters never delete what they did not write
CONVERTED = ["model_config.json", "variables"]


@pytest.fixture(scope="module")
def small_pt(tmp_path_factory):
  """(a tiny token-mode .pt, its num_heads), written once for the --out cases."""
  cfg, model = _twin("token", seed=5)
  path = tmp_path_factory.mktemp("small") / "m.pt"
  torch.save(model.state_dict(), path)
  return str(path), cfg.num_heads


def test_out_holding_other_files_is_refused_unless_overwrite(small_pt, tmp_path):
  pt, heads = small_pt
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="--overwrite") as e:
    checkpoints.pt_to_directory(pt, str(out), num_heads=heads)
  assert "notes.txt" in str(e.value) and "--out=" in str(e.value)
  assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
  checkpoints.pt_to_directory(pt, str(out), num_heads=heads, overwrite=True)
  assert sorted(os.listdir(out)) == CONVERTED


def test_a_previous_conversion_is_replaced_even_after_a_killed_save(small_pt, tmp_path):
  """A conversion's own folder is replaced without --overwrite; the `.old` and `.partial`
  folders a killed save leaves beside it do not stop the next one."""
  pt, heads = small_pt
  out = tmp_path / "ckpt"
  checkpoints.pt_to_directory(pt, str(out), num_heads=heads)
  shutil.copytree(out, tmp_path / "ckpt.old")          # killed after its first rename
  shutil.copytree(out / "variables", tmp_path / "ckpt.partial" / "variables")
  checkpoints.pt_to_directory(pt, str(out), num_heads=heads)
  assert sorted(os.listdir(out)) == CONVERTED
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]
  checkpoints.load_model(out)


@pytest.mark.parametrize("where", ["the input's folder", "the input file", "another file",
                                   "a folder above the input"])
def test_out_that_is_a_file_or_holds_the_input_is_refused(small_pt, tmp_path, where):
  pt, heads = small_pt
  folder = tmp_path / "weights"
  (folder / "sub").mkdir(parents=True)
  src = folder / "sub" / "m.pt"
  shutil.copyfile(pt, src)
  (folder / "other.pt").write_bytes(b"not mine to delete")
  out = {"the input's folder": src.parent, "the input file": src,
         "another file": folder / "other.pt", "a folder above the input": folder}[where]
  before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
  for overwrite in (False, True):
    with pytest.raises(FileExistsError, match="--out=") as e:
      checkpoints.pt_to_directory(str(src), str(out), num_heads=heads, overwrite=overwrite)
    assert str(out) in str(e.value)
  assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
  assert sorted(os.listdir(tmp_path)) == ["weights"]


def test_reverse_converter_never_replaces_what_it_did_not_write(small_pt, tmp_path):
  pt, heads = small_pt
  ckpt = tmp_path / "ckpt"
  checkpoints.pt_to_directory(pt, str(ckpt), num_heads=heads)
  mine = tmp_path / "mine.pt"
  mine.write_bytes(b"the original")
  with pytest.raises(FileExistsError, match="--overwrite"):
    checkpoints.directory_to_pt(str(ckpt), str(mine))
  assert mine.read_bytes() == b"the original"
  (tmp_path / "elsewhere").mkdir()
  for folder in (ckpt, tmp_path, tmp_path / "elsewhere"):     # the input, above it, any folder
    with pytest.raises(FileExistsError, match=r"(the input|a folder).*pass --out=.*\.pt"):
      checkpoints.directory_to_pt(str(ckpt), str(folder), overwrite=True)
  assert sorted(os.listdir(ckpt)) == CONVERTED and sorted(os.listdir(tmp_path)) == [
      "ckpt", "elsewhere", "mine.pt"]
  sd = checkpoints.directory_to_pt(str(ckpt), str(mine), overwrite=True)
  assert set(torch.load(mine, weights_only=True)) == set(sd)


def test_a_safetensors_file_is_named_as_such(tmp_path):
  """Not 'load it with weights_only=False' (wrong and unsafe advice): what the toolkit reads
  instead, and the two lines that make it."""
  header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
  path = tmp_path / "model.safetensors"
  path.write_bytes(len(header).to_bytes(8, "little") + header + np.ones(2, "<f4").tobytes())
  for name in ("model.safetensors", "model.pt"):        # the contents decide, not the name
    path = path.rename(tmp_path / name)
    with pytest.raises(CheckpointError, match="is a safetensors file") as e:
      torch_io.load_state_dict(path)
    assert "weights_only" not in str(e.value) and "safetensors.torch import load_file" in str(
        e.value) and ".pt" in str(e.value)
