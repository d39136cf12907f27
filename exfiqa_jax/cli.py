r"""The command line: resolve and parse a config, set up devices and hosts, run `config.task`.

  exfiqa --config=demo                     (a checkout: python main.py --config=configs/demo.py)
  exfiqa --config=score --config.quality_model.path=X.pt --config.images=DIR \
      --config.output=OUT
  exfiqa --help                            the jobs; --config=score --help: that config's fields

`--config` is a packaged config's name (exfiqa_jax/configs/) or a config file's path
(`resolve_config`).

Every task is a module of exfiqa_jax/tasks with `run(config) -> dict`, so tests call it directly.
A bad call names the flag that fixes it: an override naming no setting (with the settings at its
level and a "did you mean"), a config argument get_config refuses, and every setting in
`check_config`'s tables, before the task starts; errors raised later name `--config.exit=`.
Ctrl-C ends any job with one line saying what it kept and how to go on (`interrupted`; exit
status 130), not a traceback.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import pathlib
import re
import shlex
import sys
import textwrap
from typing import Any, Callable, Mapping

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from exfiqa_jax import compile_cache, configs, console, inference
from exfiqa_jax.convert import strict
from exfiqa_jax.data import preprocess
from exfiqa_jax.detection import settings as detection_settings
from exfiqa_jax.tasks import TASKS

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A packaged config's name (demo, score, ...: exfiqa --help lists them) or "
    "the path of a config file, with an optional :key=value,... argument (score:size=tiny).",
    lock_config=True)


# ------------------------------------------------------------------------- parsing the flags
def unknown_setting(config: Any, path: str) -> str | None:
  """Why `--config.<path>` names no setting of `config` (the settings at the level where it
  goes wrong, the closest first), or None when it names one."""
  node, walked = config, []
  for part in path.split("."):
    name = part.split("[")[0]
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or name not in node:
      where = "--config." + ".".join(walked) if walked else "the config"
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        return (f"--config.{path}: {where} is a value ({type(node).__name__}), not a group of "
                "settings")
      keys = sorted(node.keys())
      prefix = "--config." + "".join(w + "." for w in walked)
      close = difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
      hint = f" Did you mean {' or '.join(prefix + c for c in close)}?" if close else ""
      return (f"--config.{path}: {where} has no setting {name!r}.{hint} Its settings: "
              f"{', '.join(keys)}.")
    node, walked = node[name], walked + [name]
  return None


def resolve_config(value: str) -> str:
  """A `--config=` value → the config file to load, its `:argument` kept: a file that exists
  (a checkout's configs/demo.py, a config of the user's own) as given, else a packaged config's
  name (`demo`, `score:size=tiny`: exfiqa_jax/configs/<name>.py, from any folder). Anything else
  is a ValueError naming the packaged configs."""
  file, sep, arg = value.partition(":")
  if os.path.isfile(os.path.expanduser(file)):
    return os.path.expanduser(file) + sep + arg
  name = os.path.basename(file)
  name, names = name[:-3] if name.endswith(".py") else name, configs.names()
  if name in names and os.path.basename(file) == file:
    return f"{configs.path(name)}{sep}{arg}"
  if name in names:                   # configs/demo.py copied from a doc, outside a checkout
    raise ValueError(f"--config={value}: no such file in {os.getcwd()}; the packaged config "
                     f"of that name runs from any folder: --config={name}{sep}{arg}")
  close = difflib.get_close_matches(name, names, n=1)
  hint = f" Did you mean --config={close[0]}{sep}{arg}?" if close else ""
  raise ValueError(f"--config={value}: neither a file in {os.getcwd()} nor a packaged config."
                   f"{hint} Packaged configs (exfiqa --help): {', '.join(names)}.")


def _config_index(argv: list[str]) -> int | None:
  """Where argv holds the `--config` value: `--config=X` (the index of that word) or
  `--config X` (the index of X)."""
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):
      return i
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return i + 1
  return None


def _config_argument(argv: list[str]) -> str | None:
  """The `--config` value as given, or None."""
  i = _config_index(argv)
  if i is None:
    return None
  return argv[i].split("=", 1)[1] if argv[i].startswith("-") else argv[i]


def _with_config_resolved(argv: list[str]) -> list[str]:
  i, value = _config_index(argv), _config_argument(argv)
  if i is None:
    return argv
  resolved = resolve_config(value)
  return argv[:i] + [argv[i][: len(argv[i]) - len(value)] + resolved] + argv[i + 1:]


def _override_error(argv: list[str]) -> str | None:
  """The first `--config.<path>` of argv that names no setting of the config, explained."""
  value = _config_argument(argv)
  if value is None:
    return None
  file, _, arg = value.partition(":")
  spec = importlib.util.spec_from_file_location("exfiqa_config_to_explain", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(*([arg] if arg else []))
  paths = [m.group(2) for arg in argv
           if (m := re.match(r"^-{1,2}(no)?config\.([^=]+)", arg))]
  return next((msg for path in paths if (msg := unknown_setting(config, path))), None)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's parsing (app.run's `flags_parser`) after `resolve_config` on the --config value,
  with a config's errors in one line instead of ml_collections' tracebacks: an override naming
  no setting, an argument get_config refuses, a config that is neither a file nor a name."""
  try:
    resolved = _with_config_resolved(argv)
  except ValueError as e:
    raise flags.Error(str(e)) from None
  try:
    return flag_values(resolved)
  except (KeyError, AttributeError):
    message = _override_error(resolved)
    if message is None:
      raise
    raise flags.Error(message) from None
  except flags.IllegalFlagValueError as e:
    root = e
    while root.__context__ is not None:
      root = root.__context__
    if root is e or "Error whilst parsing config file" not in str(e):
      raise
    raise flags.Error(f"--config={_config_argument(argv)}: {root}") from None


def _parse_flags_or_exit(argv: list[str]) -> list[str]:
  """`parse_flags` for app.run: a flag error is printed as absl prints it, without a traceback;
  --help prints `help_text` (the jobs, or the --config's fields) instead of absl's usage."""
  wants_help = any(arg in HELP_FLAGS for arg in argv[1:])
  try:
    rest = parse_flags([arg for arg in argv if arg not in HELP_FLAGS])
  except flags.Error as e:
    message = str(e)
    message = f":\n{textwrap.indent(message, '  ')}" if "\n" in message else f" {message}"
    sys.stderr.write(f"FATAL Flags parsing error:{message}\n"
                     "Pass --help for the jobs, --helpfull for every flag.\n")
    sys.exit(1)
  if wants_help:
    value = _config_argument(argv)
    sys.stdout.write(help_text(sys.modules["__main__"].__doc__, value,
                               None if value is None else _CONFIG.value))
    sys.exit(0)
  return rest


# -------------------------------------------------------------------------------------- help
HELP_FLAGS = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")
USAGE = """\
usage: exfiqa --config=<config>[:key=value,...] [--config.<field>=<value> ...]

<config> is a packaged config's name (below; e.g. --config=demo, --config=score:size=tiny) or the
path of a config file of your own: a module with get_config(arg=None) returning an
ml_collections.ConfigDict (start from a packaged one: `exfiqa --config=score --help` names its
file). A checkout runs the same as `python main.py --config=configs/<name>.py`.
"""


def _summary(path: str, task: str) -> str:
  """A task module's first docstring line without its `Task "x": ` label and config paths."""
  doc = ast.get_docstring(ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))) or ""
  line = doc.splitlines()[0] if doc else ""
  line = line.removeprefix(f'Task "{task}": ')
  return re.sub(r"\s*\([^()]*configs/[^()]*\)", "", line).rstrip(".")


def jobs_help() -> str:
  """One line per job of tasks.TASKS: the packaged configs that run it and what it does."""
  by_task: dict[str, list[str]] = {}
  for name in configs.names():
    task = importlib.import_module(f"{configs.__name__}.{name}").get_config().task
    by_task.setdefault(task, []).append(name)
  lines = [f"  {'job':<11} {'packaged configs':<30} what it does"]
  for task, module in TASKS.items():
    summary = _summary(importlib.util.find_spec(module).origin, task)
    lines.append(f"  {task:<11} {', '.join(by_task.get(task, ['—'])):<30} {summary}")
  return "\n".join(lines) + "\n"


def config_help(value: str, config: Any) -> str:
  """What `--config=<value> --help` prints: the config file and its docstring, then every field
  with its value (the defaults after the overrides given), as flags to copy."""
  file = resolve_config(value).partition(":")[0]
  doc = ast.get_docstring(ast.parse(pathlib.Path(file).read_text(encoding="utf-8"))) or ""
  fields = "\n".join(f"  --config.{path}={shlex.quote(str(v))}" for path, _, v in _leaves(config))
  task = config.get("task", "")
  doc = f"{doc}\n\n" if doc else ""
  return (f"--config={value}: job {task!r}, file {file}\n\n{doc}"
          f"Fields (defaults, after the overrides given); set any with --config.<field>=<value>:\n"
          f"{fields}\n\ndocs/configs.md, section {task!r}, says what each field means; "
          "settings are checked before any work (an unknown one gets a 'did you mean').\n")


def help_text(main_doc: str | None, value: str | None = None, config: Any = None) -> str:
  """--help: with a --config, `config_help`; else the usage (main.py's docstring as written, or
  USAGE for the `exfiqa` script), the jobs, and where their fields are documented."""
  if value is not None:
    return config_help(value, config)
  return (f"{main_doc.strip() if main_doc else USAGE}\n\nJobs (config.task), one per run:\n"
          f"{jobs_help()}\nA config's fields and their defaults: exfiqa --config=<name> --help. "
          "Each job's fields\nexplained: docs/configs.md (a section per job) in the source "
          "repository. --helpfull: every absl flag.\n")


# ---------------------------------------------------------------- settings checked up front
def _whole(value: Any, low: int) -> bool:
  return not isinstance(value, bool) and isinstance(value, int) and value >= low


def _host_memory() -> int | None:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def _gib(n: float) -> str:
  units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
  i = 0
  while n >= 1024 and i < len(units) - 1:
    n, i = n / 1024, i + 1
  return f"{n:.1f} {units[i]}"


def _batch_size(value: Any, flag: str, config: Any) -> None:
  """A whole number >= 1 whose batch of uint8 112x112 images fits in half the host memory."""
  if not _whole(value, 1):
    raise ValueError(f"{flag}={value!r}: must be a whole number >= 1 (images per step, all "
                     "devices together)")
  per_host = -(-value // jax.process_count()) * preprocess.IMAGE_SIZE ** 2 * 3
  memory = _host_memory()
  if memory and per_host > memory // 2:
    raise ValueError(f"{flag}={value}: one batch of {preprocess.IMAGE_SIZE}x"
                     f"{preprocess.IMAGE_SIZE} images takes {_gib(per_host)} of host memory per "
                     f"process; this machine has {_gib(memory)}. Typical values are 32-1024.")


def _whole_at_least(low: int, meaning: str) -> Callable[[Any, str, Any], None]:
  def check(value: Any, flag: str, config: Any) -> None:
    if not _whole(value, low):
      raise ValueError(f"{flag}={value!r}: must be a whole number >= {low} ({meaning})")
  return check


def _channel_order(value: Any, flag: str, config: Any) -> None:
  allowed = preprocess.CHANNEL_ORDERS + (("",) if config.task in AS_RECORDED_TASKS else ())
  if value not in allowed:
    raise ValueError(f"{flag}={value!r}: must be one of {allowed}"
                     + (" ('': as the data set records)" if "" in allowed else ""))


def _compute_dtype(value: Any, flag: str, config: Any) -> None:
  inference.check_compute_dtype(value, flag + "=")


def _align(value: Any, flag: str, config: Any) -> None:
  detection_settings.check_align_mode(value, flag)


def _photos(value: Any, flag: str, config: Any) -> None:
  detection_settings.PhotoSettings.from_config(config.data)   # names its flags itself


AS_RECORDED_TASKS = ("eval", "early_exit", "demo")   # data.channel_order "" = the data set's
# A setting by its key anywhere in a config, then by its path (when the config has it):
# check(value, flag, config) raises a ValueError naming `flag`.
BY_NAME: Mapping[str, Callable[[Any, str, Any], None]] = {
    "batch_size": _batch_size,
    "decode_threads": _whole_at_least(0, "0: decode in the main thread"),
}
BY_PATH: Mapping[str, Callable[[Any, str, Any], None]] = {
    "exit": _whole_at_least(0, "the block after which the model stops; 0 = every exit"),
    "compute_dtype": _compute_dtype,
    "data.channel_order": _channel_order,
    "data.align": _align,
    "data.detector": _photos,
    "quality_model.num_heads": _whole_at_least(0, "0 = the checkpoint's own count"),
    "fr.num_heads": _whole_at_least(0, "0 = the checkpoint's own count"),
}


def _leaves(config: Any, prefix: str = ""):
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", key, value


def check_config(config: Any) -> None:
  """Every setting of BY_NAME and BY_PATH that `config` has, checked before the task starts:
  a ValueError naming its `--config.` flag (docs/configs.md)."""
  for path, key, value in _leaves(config):
    if key in BY_NAME:
      BY_NAME[key](value, f"--config.{path}", config)
  for path, check in BY_PATH.items():
    node = config
    for part in path.split("."):
      node = node.get(part) if isinstance(node, (ml_collections.ConfigDict, dict)) else None
    if node is not None:
      check(node, f"--config.{path}", config)


# ------------------------------------------------------------------------------- running
def run_task(config: Any) -> Any:
  """`config.task`'s run(config); errors raised inside name `--config.exit=` where the library
  would say `exit=` (convert/strict.py flags_named)."""
  if config.task not in TASKS:
    raise app.UsageError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
  with strict.flags_named(exit="--config.exit="):
    return importlib.import_module(TASKS[config.task]).run(config)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass settings as --config.<field>=")
  console.quiet_third_party()
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("pass --config=<config>: a packaged config's name (--config=demo; "
                         "--help lists them) or a config file's path")
  try:
    config.get("task")        # ml_collections defers a missing config file to the first use
  except OSError as e:
    raise app.UsageError(f"--config: {e}") from None
  if config.get("distributed", False):
    jax.distributed.initialize()      # before anything asks JAX (check_config does)
  try:
    check_config(config)                                  # before any work
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  compile_cache.setup(config.get("compile_cache", ""))    # before anything compiles
  logging.info("task %s: process %d of %d, %d local / %d global devices (%s)", config.task,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    run_task(config)
  except KeyboardInterrupt as e:      # Ctrl-C: one line, not a traceback; 130 = 128 + SIGINT
    sys.stderr.write(interrupted(config, e) + "\n")
    sys.exit(130)


def interrupted(config: Any, error: KeyboardInterrupt) -> str:
  """The line a job stopped by Ctrl-C ends with: what it kept, as the task noted on the
  exception (PEP 678 `__notes__`; the score job counts its images), and how to go on."""
  notes = getattr(error, "__notes__", None)
  kept = notes[-1] if notes else (
      f"run the same command again: it reuses what {config.get('output', '')} already holds "
      "(finished stages, chunks and checkpoints; docs/caching.md)")
  return f"{config.task} interrupted (Ctrl-C): {kept}"


def run_main() -> None:
  """Console-script entry point (`exfiqa`)."""
  jax.config.config_with_absl()
  app.run(main, flags_parser=_parse_flags_or_exit)
