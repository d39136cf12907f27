"""The command line: main.py and the `exfiqa` console script are the same entry point; a bad
call says which flag fixes it."""
from __future__ import annotations

import importlib
import logging as std_logging
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(*argv: str) -> subprocess.CompletedProcess:
  return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, env=ENV,
                        timeout=300)


def test_main_without_config_is_a_usage_error():
  proc = _run(sys.executable, "main.py")
  assert proc.returncode != 0 and "pass --config=<config>: a packaged config's name" in proc.stderr


@pytest.mark.parametrize("entry", ["main.py", "exfiqa"])
def test_missing_input_names_the_flag(entry, tmp_path):
  exe = shutil.which("exfiqa", path=os.path.dirname(sys.executable))
  argv = [sys.executable, "main.py"] if entry == "main.py" else [exe]
  if entry == "exfiqa" and exe is None:
    pytest.skip("console script not installed (pip install -e .)")
  proc = _run(*argv, "--config=configs/score.py:size=tiny", f"--config.output={tmp_path}")
  assert proc.returncode != 0
  assert "--config.quality_model.path" in proc.stderr and "--config.images" in proc.stderr
  assert "devices" in proc.stderr                 # the process / device line is logged


def test_third_party_info_stays_out_unless_asked(tmp_path):
  """Orbax logs a dozen INFO lines per checkpoint read; a user sees the toolkit's own INFO lines
  and everyone's warnings, and every package's INFO with --verbosity=0."""
  import numpy as np
  from PIL import Image
  from exfiqa_jax.testing import worlds
  model = worlds.save_vit(tmp_path / "model", "token", 0)        # an Orbax directory
  faces = tmp_path / "faces"
  faces.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), np.uint8)).save(faces / f"{i}.png")
  argv = [sys.executable, "main.py", "--config=configs/score.py:size=tiny",
          f"--config.quality_model.path={model}", f"--config.images={faces}"]
  quiet = _run(*argv, f"--config.output={tmp_path / 'a'}")
  loud = _run(*argv, f"--config.output={tmp_path / 'b'}", "--verbosity=0")
  assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-3000:]
  assert "task score:" in quiet.stderr and "task score:" in loud.stderr

  def foreign_info(stderr: str) -> list[str]:      # absl lines name the file: Orbax's, JAX's
    return [ln for ln in stderr.splitlines() if ln[:1] == "I" and any(
        f" {m}.py:" in ln for m in ("checkpoint", "checkpointer", "event_tracking",
                                   "xla_bridge"))]

  assert len(foreign_info(loud.stderr)) >= 5
  assert foreign_info(quiet.stderr) == []


# ------------------------------------------------------------------ every setting names its flag
CONFIGS = sorted(p.stem for p in (pathlib.Path(ROOT) / "configs").glob("*.py")
                 if p.stem not in ("__init__", "common", "eval_common"))
# A value each validated setting refuses, by its path in the job configs (every config that has
# the setting is tried): batch sizes anywhere, decode threads, exit, dtype, channel order, the
# detection options, the head counts.
BAD = {
    "batch_size": [0, -3, 10 ** 15],        # the last: petabytes for one batch
    "fr.batch_size": [0],
    "eval.batch_size": [0],
    "data.decode_threads": [-1],
    "exit": [-1],
    "compute_dtype": ["f16"],
    "data.channel_order": ["xyz"],
    "data.align": ["detected"],
    "data.face": ["biggest"],
    "data.detect_batch_size": [0],
    "data.detector.min_face_size": [0.0],
    "data.detector.factor": [1.5],
    "data.detector.thresholds": [(0.6, 0.7), (0.6, 0.7, 7.0)],
    "data.detector.max_faces": [0],
    "quality_model.num_heads": [-8],
    "fr.num_heads": [-8],
}


def _has(config, path: str) -> bool:
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def test_the_bad_values_cover_every_checked_setting():
  from exfiqa_jax import cli
  from exfiqa_jax.detection import settings
  names = {p.rsplit(".", 1)[-1] for p in BAD}
  assert set(cli.BY_NAME) <= names
  assert all(any(p == q or p.startswith(q + ".") for p in BAD) for q in cli.BY_PATH)
  job_flags = {f[len("--config."):] for k, f in settings.CONFIG_FLAGS.items() if k != "weights"}
  assert all(any(p == f or p.startswith(f + ".") for p in BAD) for f in job_flags)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_checked_setting_names_its_flag(name):
  """The defaults pass; each bad value is a ValueError that names `--config.<path>=`."""
  from exfiqa_jax import cli
  from exfiqa_jax.testing import worlds
  module = importlib.import_module(f"configs.{name}")
  cli.check_config(module.get_config())
  tried = 0
  for path, values in BAD.items():
    if not _has(module.get_config(), path):
      continue
    for value in values:
      config = worlds.override(module.get_config(), **{path: value})
      with pytest.raises(ValueError) as e:
        cli.check_config(config)
      assert f"--config.{path}=" in str(e.value), (path, value, str(e.value))
      tried += 1
  assert tried >= 3, name


def _parse(monkeypatch, *argv):
  """cli.parse_flags on a fresh flag set (the config flag reads its overrides from sys.argv)."""
  from absl import flags
  from ml_collections import config_flags
  from exfiqa_jax import cli
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values)
  argv = ["main.py", *argv]
  monkeypatch.setattr(sys, "argv", argv)
  with pytest.raises(flags.Error) as e:
    cli.parse_flags(argv, values)
  return str(e.value)


def test_an_unknown_override_says_which_settings_exist(monkeypatch):
  message = _parse(monkeypatch, "--config=configs/eval_verification.py:size=tiny",
                   "--config.eval.fmr=0.1")
  assert message.startswith("--config.eval.fmr: --config.eval has no setting 'fmr'.")
  assert "Did you mean --config.eval.fmrs?" in message and "bootstrap_unit" in message
  assert "Traceback" not in message
  message = _parse(monkeypatch, "--config=configs/score.py", "--config.data.detector.factr=0.5")
  assert "Did you mean --config.data.detector.factor?" in message
  message = _parse(monkeypatch, "--config=configs/score.py", "--config.qualty_model.path=x")
  assert "the config has no setting 'qualty_model'" in message
  assert "Did you mean --config.quality_model?" in message


def test_a_config_argument_typo_is_refused_in_one_line(monkeypatch):
  message = _parse(monkeypatch, "--config=configs/score.py:size=tiyn")
  assert message == ("--config=configs/score.py:size=tiyn: size='tiyn' is not one of "
                     "('default', 'tiny')")


def test_an_exit_beyond_the_model_names_the_flag(tmp_path):
  """Only the loaded model knows its depth: the task's error names --config.exit."""
  import numpy as np
  from PIL import Image
  from configs import score
  from exfiqa_jax import cli
  from exfiqa_jax.testing import worlds
  (tmp_path / "faces").mkdir()
  Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(tmp_path / "faces" / "a.png")
  config = worlds.override(score.get_config("size=tiny"), images=str(tmp_path / "faces"),
                           output=str(tmp_path / "out"), exit=99, **{
                               "quality_model.path": worlds.save_vit(tmp_path / "m", "token", 0)})
  with pytest.raises(ValueError, match=r"^--config\.exit=99: this model has \d+ blocks"):
    cli.run_task(config)


# ----------------------------------------------------------- configs by name, from any folder
def test_a_packaged_config_resolves_by_name_from_any_folder(monkeypatch, tmp_path):
  """Outside the checkout a bare name (with its :argument) is the packaged file; a file that
  exists, e.g. the user's own, wins over a name; a doc's configs/demo.py names the fix."""
  from exfiqa_jax import cli, configs
  monkeypatch.chdir(tmp_path)
  packaged = pathlib.Path(configs.__file__).parent
  assert cli.resolve_config("demo") == str(packaged / "demo.py")
  assert cli.resolve_config("score.py:size=tiny") == f"{packaged / 'score.py'}:size=tiny"
  (tmp_path / "score").write_text("def get_config(arg=None): ...\n")
  assert cli.resolve_config("score") == "score"                  # a file here is the user's
  with pytest.raises(ValueError, match=r"^--config=configs/demo.py:size=smoke: no such file in "
                     r".*runs from any folder: --config=demo:size=smoke$"):
    cli.resolve_config("configs/demo.py:size=smoke")
  with pytest.raises(ValueError, match=r"Did you mean --config=early_exit\?.* demo, early_exit"):
    cli.resolve_config("early_exti")


def test_a_config_name_parses_with_its_argument_and_overrides(monkeypatch, tmp_path):
  from absl import flags
  from ml_collections import config_flags
  from exfiqa_jax import cli
  monkeypatch.chdir(tmp_path)
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values)
  argv = ["exfiqa", "--config", "score:size=tiny", "--config.exit=3"]
  monkeypatch.setattr(sys, "argv", argv)
  cli.parse_flags(argv, values)
  assert (values.config.task, values.config.batch_size, values.config.exit) == ("score", 8, 3)
  assert _parse(monkeypatch, "--config=scor").startswith("--config=scor: neither a file")


def test_the_wheel_ships_the_configs_and_nothing_generic(tmp_path):
  """A non-editable install into a fresh venv: exfiqa_jax.configs resolves and loads from a
  folder outside the checkout; no top-level configs/converters; the console scripts exist.
  (bench/install_check.sh runs the installed `exfiqa` and converters themselves.)"""
  import zipfile
  pip = [sys.executable, "-m", "pip"]
  subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                  str(tmp_path / "dist"), ROOT], check=True, cwd=tmp_path, timeout=120)
  wheel, = (tmp_path / "dist").glob("exfiqa_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  info = wheel.name.split("-py3")[0] + ".dist-info"
  assert {n.split("/")[0] for n in names} == {"exfiqa_jax", info}
  assert "exfiqa_jax/configs/demo.py" in names
  scripts = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
  for script in ("exfiqa", "exfiqa-torch-to-flax", "exfiqa-flax-to-torch"):
    assert f"{script} =" in scripts
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  deps = [p for p in sys.path if p.endswith("site-packages")]      # jax & co., not this checkout
  pathlib.Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
  subprocess.run([*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                 check=True, timeout=120)
  out = subprocess.run([python, "-c", """if True:
    import importlib, importlib.util, sys
    from exfiqa_jax import configs
    for name in configs.names():
      importlib.import_module("exfiqa_jax.configs." + name).get_config()
    print(configs.path("demo"), importlib.util.find_spec("configs"), "jax" in sys.modules)"""],
                       cwd=tmp_path, capture_output=True, text=True, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  path, spec, jax_loaded = out.stdout.split()
  assert path == f"{site}/exfiqa_jax/configs/demo.py" and spec == "None" and jax_loaded == "False"


# ------------------------------------------------------------------------------------- --help
def test_help_lists_every_job_and_where_its_fields_are():
  import runpy
  from exfiqa_jax import cli, configs
  from exfiqa_jax.tasks import TASKS
  text = cli.help_text(None)
  rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
  assert set(TASKS) <= set(rows), set(TASKS) - set(rows)
  assert all(len(rows[task].split()) > 3 for task in TASKS)          # configs + what it does
  assert "eval_ijbc, eval_verification" in rows["eval"]
  listed = {c.strip(",") for task in TASKS for c in rows[task].split()}
  assert set(configs.names()) <= listed
  assert "exfiqa --config=<name> --help" in text and "docs/configs.md" in text
  main_doc = runpy.run_path(os.path.join(ROOT, "main.py"))["__doc__"]
  assert "--config.quality_model.path=X.pt \\\n      --config.images" in cli.help_text(main_doc)


def test_config_help_prints_its_fields_from_outside_the_checkout(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--config=score:size=tiny",
                         "--config.exit=2", "--help"], cwd=tmp_path, capture_output=True,
                        text=True, env=ENV, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert out.startswith("--config=score:size=tiny: job 'score', file ")
  assert "Score a folder of face crops" in out and "docs/configs.md" in out
  assert "  --config.batch_size=8\n" in out and "  --config.exit=2\n" in out
  assert "  --config.quality_model.path=''\n" in out


# ------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_ends_every_job_with_one_line(monkeypatch, capsys, tmp_path):
  """A KeyboardInterrupt inside any job: exit status 130 and one line saying what was kept (the
  task's note, as the score job adds one) and how to go on; no traceback. The flags are parsed
  once (config_flags defines its --config.* overrides at the first parse)."""
  from absl import flags
  from exfiqa_jax import cli
  from exfiqa_jax.tasks import TASKS
  note = "8 of 11 images are scored and kept in OUT/score_chunks; the same command resumes there"

  def pressed(config):
    error = KeyboardInterrupt()
    if config.task == "score":
      error.__notes__ = [note]
    raise error
  monkeypatch.setattr(cli.console, "quiet_third_party", lambda: None)   # absl's handler
  monkeypatch.setattr(cli.compile_cache, "setup", lambda folder: None)  # no process-wide cache
  argv = ["main.py", f"--config={ROOT}/configs/score.py:size=tiny", f"--config.output={tmp_path}"]
  monkeypatch.setattr(sys, "argv", argv)
  absl_level = std_logging.getLogger("absl").level   # parsing the flags sets it (WARNING)
  flags.FLAGS(argv)
  try:
    for task in TASKS:
      monkeypatch.setattr(importlib.import_module(TASKS[task]), "run", pressed)
      flags.FLAGS["config"].value.task = task
      with pytest.raises((SystemExit, KeyboardInterrupt)) as e:   # not one that stops pytest
        cli.main(["main.py"])
      assert e.type is SystemExit and e.value.code == 130, task
      err = capsys.readouterr().err
      assert "Traceback" not in err and err.endswith("\n")
      assert err.splitlines()[-1] == (
          f"score interrupted (Ctrl-C): {note}" if task == "score" else
          f"{task} interrupted (Ctrl-C): run the same command again: it reuses what {tmp_path} "
          "already holds (finished stages, chunks and checkpoints; docs/caching.md)")
  finally:
    flags.FLAGS.unparse_flags()
    std_logging.getLogger("absl").setLevel(absl_level)   # later tests read INFO lines
