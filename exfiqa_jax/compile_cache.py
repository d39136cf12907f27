"""The persistent XLA compilation cache, set up once per process by the command line (cli.py).

A short run of the scoring or evaluation command spends much of its time compiling (the ViT,
the FR network, the EDC programs); with the cache a second run in a fresh process loads the
executables instead (docs/accelerators.md, "Compilation cache"). `config.compile_cache`
(configs/common.py) names the folder: by default the user cache folder
`~/.cache/exfiqa_jax/xla` (`$XDG_CACHE_HOME/exfiqa_jax/xla` when that is set), `""` disables it.
Every compiled program is cached, however quick its compilation (JAX's default keeps only those
over 1 s, which leaves out exactly the many small programs of a short run). The cache key
covers the program, the JAX/XLA versions, the flags and the device kind, so a folder can be
shared by several machines and versions; as JAX warns, only share it with users you trust.
The folder is not size-bounded: JAX's bounded (evicting) mode needs the optional `filelock`
package and breaks on a folder that unbounded writers also used (entries without access
times); delete the folder to reclaim its space.

`CompileCounter` counts compilations and cache hits through jax.monitoring (tests, benchmarks).
"""
from __future__ import annotations

import os
import threading
from typing import Any

import jax
from absl import logging

DEFAULT = "~/.cache/exfiqa_jax/xla"       # configs/common.py base_config().compile_cache
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"   # compile or cache load
_HITS = "/jax/compilation_cache/cache_hits"
_MISSES = "/jax/compilation_cache/cache_misses"


def resolve(path: str | None) -> str | None:
  """The folder `path` names (None when it is "" or None: the cache is off)."""
  if not path:
    return None
  path = str(path)
  xdg = os.environ.get("XDG_CACHE_HOME")
  if path == DEFAULT and xdg:
    path = os.path.join(xdg, "exfiqa_jax", "xla")
  return os.path.abspath(os.path.expanduser(path))


def setup(path: str | None) -> str | None:
  """Turns the persistent cache on in `path` (see `resolve`) before anything compiles; returns
  the folder, or None when disabled. An unwritable folder is a warning, not an error: the run
  then compiles as usual."""
  folder = resolve(path)
  if folder is None:
    return None
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache %s cannot be created (%s); compiling without it", folder,
                    e)
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  logging.info("XLA compilation cache: %s", folder)
  return folder


class CompileCounter:
  """Counts, while active, every executable built (compiled or loaded from the persistent
  cache: `compiles`), and the persistent cache's `hits` and `misses`.

      with CompileCounter() as c:
        model.score(images)
      assert c.compiles == 0
  """

  _lock = threading.Lock()
  _active: list["CompileCounter"] = []
  _registered = False

  def __init__(self) -> None:
    self.compiles = self.hits = self.misses = 0

  @classmethod
  def _on_event(cls, event: str, *args: Any, **kwargs: Any) -> None:
    for counter in list(cls._active):
      if event == _HITS:
        counter.hits += 1
      elif event == _MISSES:
        counter.misses += 1

  @classmethod
  def _on_duration(cls, event: str, *args: Any, **kwargs: Any) -> None:
    if event == _BACKEND_COMPILE:
      for counter in list(cls._active):
        counter.compiles += 1

  def __enter__(self) -> "CompileCounter":
    with CompileCounter._lock:
      if not CompileCounter._registered:     # jax.monitoring has no unregister: once per process
        jax.monitoring.register_event_listener(CompileCounter._on_event)
        jax.monitoring.register_event_duration_secs_listener(CompileCounter._on_duration)
        CompileCounter._registered = True
      CompileCounter._active.append(self)
    return self

  def __exit__(self, *exc: Any) -> None:
    with CompileCounter._lock:
      CompileCounter._active.remove(self)
