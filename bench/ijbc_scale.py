"""IJB-C at growing size: the real eval_ijbc command on a synthetic IJB-C-shaped release, per stage.

  python -m bench.ijbc_scale [--fractions=1/256,1/64] [--root=/tmp/ijbc_scale]
      [--resume_at=1/256] [--kill_cold=1] [--bootstrap=20] [--keep]

  The issue-14 run (about 90 min on 2 cores): --fractions=1/16,1/4,1 --resume_at=1/4 --kill_cold=1

For each size fraction f (of 469,375 face lines, 23,124 templates, 15,658,489 pairs):
  release   exfiqa_jax/testing/ijbc_release.py writes loose crops, landmarks, templates with
            several media and shared media ids, and the pair list (deterministic);
  build     the IJB-C builder aligns every crop into the TFDS data set (its own command, as
            docs/accelerators.md does before a multi-host run, so that it is measured apart);
  eval      `python main.py --config=configs/eval_ijbc.py` with tiny random models (a token
            ViT-FIQA and an iResNet, as exfiqa_jax/testing/worlds.py makes them), three times
            on one output: "cold" (every stage computed; fixed-shape programs come from the
            compile cache, which an unreported first size --warmup filled), "warm" (the EDC
            stage's files removed: it is recomputed with its programs cached, the other stages
            load), "bootstrap" (--config.eval.bootstrap=N: the EDC stage again, with the
            bootstrap; its cost is the growth over "warm").
Per stage (from <output>/cache/stages.jsonl and the wall clock): wall seconds and CPU seconds
(the child's /proc utime + stime, sampled every 0.1 s with its VmRSS), images/s or pairs/s,
peak RSS inside the stage (the whole process's peak from wait4 is printed too), disk used; then
the growth exponent between the two largest sizes (CPU seconds ∝ n^e, n = the stage's images
or pairs: e ≈ 1 linear, n log n a little above 1, below 1 while fixed costs dominate) and an
extrapolation to full size, which is only that: a fixed cost plus a linear part fitted on the
two largest sizes (or n^e when e > 1.1), RSS linear in n. Kill and resume: the eval command is
SIGKILLed from outside in the middle of an embed chunk once half of that stage's chunks are
stored (like a preempted VM: no cleanup), then rerun; reported are the work lost, the chunks
the rerun resumed, what it loaded and computed. With --resume_at=f that is a second cold pass
on a new output whose tables must equal the uninterrupted pass's byte for byte; with
--kill_cold=f the cold pass itself is the killed one (at full size, where a second pass costs
too much), its embed time being both processes' parts. Everything runs where JAX runs (here: the CPU); the machine is
shared, so the load average after each pass is printed with the tables.
"""
from __future__ import annotations

import argparse
import fractions
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE_DONE = "bench_release.json"     # beside a complete release: its counts (--reuse_release)
STAGES = ("startup", "build", "quality", "embed", "compare", "edc", "bootstrap", "report")

PAIRS_FLAG = "--_pairs_child="


def _pairs_child(root: str, bootstrap: int) -> None:
  """The pair-side stages (compare, EDC in both modes, bootstrap) at FULL IJB-C size, in this
  process, through exfiqa_jax/evaluation/pipeline.py: the full release structure (469,375 lines,
  23,124 templates, 15,658,489 pairs) with synthetic embeddings and 9 quality columns like the
  tiny token model's (no images: the image stages scale per image and are measured above).
  Prints one JSON line per stage: its start and stop times."""
  import numpy as np
  from configs import eval_ijbc
  from exfiqa_jax import columns
  from exfiqa_jax.evaluation import benchmarks, pipeline, results, stages
  from exfiqa_jax.testing import ijbc_release

  def mark(name: str, start: float) -> None:
    print(json.dumps({"stage": name, "start": start, "stop": time.time()}), flush=True)

  t = time.time()
  st = ijbc_release.structure(1.0)
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((int(st.subject.max()) + 1, 128), dtype=np.float32)
  emb = centres[st.subject] + 1.5 * rng.standard_normal((st.num_images, 128), dtype=np.float32)
  image_q = rng.random((9, st.num_images), dtype=np.float32)
  bench = benchmarks.Benchmark("ijbc", st.num_images, None, "template", st.label.astype(bool),
                               {"kind": "synthetic", "fraction": 1.0},
                               template_pairs=np.stack([st.pair_a, st.pair_b], 1),
                               template_ids=st.template_id, media_ids=st.media_id)
  del st
  config = eval_ijbc.get_config()
  config.eval.bootstrap = bootstrap
  cache = stages.StageCache(os.path.join(root, "cache"), progress=False)
  embed = stages.Stage("embed/ijbc/fr", "synthetic", {"embedding": emb}, False)
  cols = results.column_set("q", 3, False) + [results.QualityColumn(columns.RANDOM, "random")]
  mark("setup", t)
  t = time.time()
  cmp = pipeline.compare_stage(cache, bench, "fr", embed)
  mark("compare", t)
  for mode in ("fiqa", "iso"):
    t = time.time()
    pipeline.edc_stage(cache, bench, "fr", mode, cmp, cols, image_q, {"synthetic": 1}, config)
    mark(f"edc_{mode}", t)


def pairs_full(args) -> dict[str, Any]:
  """Runs `_pairs_child` twice (without and with the bootstrap): seconds, CPU s, peak RSS."""
  out: dict[str, Any] = {}
  for name, bootstrap in (("edc", 0), ("bootstrap", args.bootstrap)):
    root = os.path.join(args.root, f"pairs_full_{name}")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    log = os.path.join(root, "child.log")
    run = run_child([sys.executable, "-m", "bench.ijbc_scale", f"{PAIRS_FLAG}{root}",
                     str(bootstrap)], log)
    if run["rc"]:
      raise RuntimeError(f"full-size pair stages failed, see {log}")
    with open(log, encoding="utf-8") as f:
      marks = [json.loads(line) for line in f if line.startswith("{")]
    sampler = run["sampler"]
    for m in marks:
      key = m["stage"] if name == "edc" or m["stage"].startswith("edc") else None
      if key is None:
        continue
      key = key if name == "edc" else key.replace("edc", "bootstrap")
      out[key] = {"seconds": m["stop"] - m["start"], "cpu": sampler.cpu(m["start"], m["stop"]),
                  "rss": sampler.peak(m["start"], m["stop"])}
    out[f"peak_rss_{name}"] = run["peak_rss"]
    shutil.rmtree(root, ignore_errors=True)
  print(f"[full-size pair stages] {json.dumps(out)}", flush=True)
  return out


class Sampler:
  """VmRSS and CPU seconds (user + system, all threads) of one process every `period` seconds,
  with time stamps: CPU seconds move less than wall clock with other jobs' load."""

  def __init__(self, pid: int, period: float = 0.1):
    self.pid, self.period, self.samples = pid, period, []   # (time, rss bytes, cpu seconds)
    self._tick = os.sysconf("SC_CLK_TCK")
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
          rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
          fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick     # utime + stime
        self.samples.append((time.time(), rss, cpu))
      except (OSError, StopIteration, IndexError, ValueError):
        return
      self._stop.wait(self.period)

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()

  def peak(self, start: float, stop: float) -> int:
    inside = [rss for t, rss, _ in self.samples if start <= t <= stop]
    return max(inside) if inside else 0

  def cpu(self, start: float, stop: float) -> float:
    """CPU seconds spent between two times (nearest samples)."""
    if not self.samples:
      return 0.0
    def at(t):
      return min(self.samples, key=lambda s: abs(s[0] - t))[2]
    return max(0.0, at(stop) - at(start))


def run_child(argv: Sequence[str], log: str,
              watch: Callable[[subprocess.Popen], None] | None = None) -> dict[str, Any]:
  """Runs argv (cwd = the checkout); wall seconds, exit code, peak RSS (wait4), RSS samples.
  `watch(proc)`, when given, runs in a thread beside the child (it may kill it)."""
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  with open(log, "w", encoding="utf-8") as out:
    start = time.time()
    proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid)
    watcher = threading.Thread(target=watch, args=(proc,), daemon=True) if watch else None
    if watcher:
      watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    stop = time.time()
    sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
  return {"start": start, "stop": stop, "seconds": stop - start, "rc": proc.returncode,
          "peak_rss": usage.ru_maxrss * 1024, "cpu": usage.ru_utime + usage.ru_stime,
          "sampler": sampler}


def chunk_events(output: str, prefix: str, since: float) -> list[dict[str, Any]]:
  from exfiqa_jax.evaluation import stages
  return [e for e in stages.read_log(os.path.join(output, "cache"))
          if e["time"] >= since and e["event"] == "chunk" and e["stage"].startswith(prefix)]


def kill_mid_stage(output: str, prefix: str, num_chunks: int):
  """A watcher for run_child: SIGKILL the child in the middle of a chunk of the first chunked
  stage named `prefix…`, once half of its `num_chunks` chunks are stored (no cleanup, like a
  preempted VM). The kill lands half a chunk's time after a chunk was stored."""
  since = time.time()

  def watch(proc: subprocess.Popen) -> None:
    while proc.poll() is None:
      events = chunk_events(output, prefix, since)
      if len(events) >= max(1, num_chunks // 2):
        times = [e["time"] for e in events]
        per_chunk = (times[-1] - times[0]) / max(len(times) - 1, 1) if len(times) > 1 else 1.0
        time.sleep(per_chunk / 2)
        proc.kill()
        return
      time.sleep(0.2)
  return watch


def save_models(folder: str) -> tuple[str, str]:
  """Tiny random token ViT-FIQA and iResNet, as converted directories (worlds.py's)."""
  from exfiqa_jax.testing import worlds
  q, fr = os.path.join(folder, "q_token"), os.path.join(folder, "fr")
  if not os.path.isdir(q):
    worlds.save_vit(q, "token", 1)
  if not os.path.isdir(fr):
    worlds.save_iresnet(fr, 3)
  return q, fr


def eval_argv(release: str, data_dir: str, models: tuple[str, str], output: str, cache: str,
              bootstrap: int) -> list[str]:
  return ["--config=configs/eval_ijbc.py", f"--config.data.manual_dir={release}",
          f"--config.data.data_dir={data_dir}", f"--config.quality_model.path={models[0]}",
          f"--config.fr.path={models[1]}", f"--config.output={output}",
          f"--config.eval.bootstrap={bootstrap}", "--config.progress=False",
          f"--config.compile_cache={cache}"]


def stage_times(output: str, since: float) -> dict[str, list[tuple[float, float, str]]]:
  """(start, stop, event) per stage kind from the stage log entries written after `since`."""
  from exfiqa_jax.evaluation import stages
  out: dict[str, list[tuple[float, float, str]]] = {}
  for e in stages.read_log(os.path.join(output, "cache")):
    if e["time"] < since or e["event"] not in ("computed", "cached"):
      continue
    kind = e["stage"].split("/")[0]
    out.setdefault(kind, []).append((e["time"] - e.get("seconds", 0.0), e["time"], e["event"]))
  return out


def measure_eval(run: dict[str, Any], output: str) -> dict[str, dict[str, float]]:
  """Per stage kind: seconds (computed stages only), peak RSS inside, cached or not."""
  times = stage_times(output, run["start"])
  rows: dict[str, dict[str, float]] = {}
  first = min((a for v in times.values() for a, _, _ in v), default=run["stop"])
  last = max((b for v in times.values() for _, b, _ in v), default=run["start"])
  sampler = run["sampler"]
  rows["startup"] = {"seconds": first - run["start"], "rss": sampler.peak(run["start"], first),
                     "cpu": sampler.cpu(run["start"], first)}
  for kind, spans in times.items():
    start, stop = min(a for a, _, _ in spans), max(b for _, b, _ in spans)
    rows[kind] = {"seconds": sum(b - a for a, b, ev in spans if ev == "computed"),
                  "cpu": sum(sampler.cpu(a, b) for a, b, ev in spans if ev == "computed"),
                  "rss": sampler.peak(start, stop),
                  "cached": all(ev == "cached" for _, _, ev in spans)}
  rows["report"] = {"seconds": run["stop"] - last, "rss": sampler.peak(last, run["stop"]),
                    "cpu": run["cpu"] - sampler.cpu(run["start"], last)}
  return rows


def one_size(fraction: fractions.Fraction, args, models) -> dict[str, Any]:
  from configs import eval_ijbc
  from exfiqa_jax import files
  from exfiqa_jax.testing import ijbc_release
  label = f"{fraction.numerator}_{fraction.denominator}"
  base = os.path.join(args.root, label)
  release, data_dir, output = (os.path.join(base, n) for n in ("IJBC", "tfds", "out"))
  cache = os.path.join(args.root, "xla")
  reuse = args.reuse_release and os.path.exists(os.path.join(release, RELEASE_DONE))
  for path in (data_dir, output) if reuse else (release, data_dir, output):
    shutil.rmtree(path, ignore_errors=True)
  t0 = time.time()
  if reuse:       # written by an earlier run of this bench (deterministic): not rewritten
    counts = files.read_json(os.path.join(release, RELEASE_DONE))
  else:
    counts = ijbc_release.write_release(release, float(fraction))
    files.write_json(os.path.join(release, RELEASE_DONE), counts)
  result: dict[str, Any] = {"fraction": str(fraction), "counts": counts,
                            "write_seconds": time.time() - t0 if not reuse else float("nan"),
                            "disk": {"release": counts["bytes"]}}
  print(f"[{fraction}] release {'reused' if reuse else 'written'}: {counts} in "
        f"{result['write_seconds']:.1f} s", flush=True)
  build = run_child([sys.executable, "-c", "import sys\nfrom exfiqa_jax.data import builders\n"
                     "builders.build('ijbc', sys.argv[1], sys.argv[2])", release, data_dir],
                    os.path.join(base, "build.log"))
  if build["rc"]:
    raise RuntimeError(f"build failed, see {base}/build.log")
  result["build"] = {"seconds": build["seconds"], "rss": build["peak_rss"], "cpu": build["cpu"]}
  result["disk"]["tfds"] = files.folder_bytes(data_dir)
  print(f"[{fraction}] built in {build['seconds']:.1f} s", flush=True)
  passes = {}
  chunk = args.chunk_images or eval_ijbc.get_config().eval.chunk_images

  def argv(bootstrap: int, out: str = output) -> list[str]:
    return [sys.executable, "main.py", *eval_argv(release, data_dir, models, out, cache,
                                                  bootstrap), f"--config.eval.chunk_images={chunk}"]
  embed_chunks = -(-counts["images"] // chunk)
  # cold: new shapes compile (the compile cache is warm for fixed-shape programs only); at the
  # --kill_cold sizes it is SIGKILLed in the middle of the embed stage and rerun. warm: the EDC
  # stage recomputed with its programs in the compile cache (stages before it loaded);
  # bootstrap: the EDC stage again with the bootstrap on.
  for name, bootstrap in (("cold", 0), ("warm", 0), ("bootstrap", args.bootstrap)):
    if name == "warm":
      shutil.rmtree(os.path.join(output, "cache", "edc"))
    run_argv = argv(bootstrap)
    log = os.path.join(base, f"eval_{name}.log")
    if name == "cold" and fraction in args.kill_cold:
      passes[name], result["resume"] = killed_pass(run_argv, output, log, embed_chunks)
    else:
      run = run_child(run_argv, log)
      if run["rc"]:
        raise RuntimeError(f"eval failed ({run['rc']}), see {log}")
      passes[name] = {"seconds": run["seconds"], "peak_rss": run["peak_rss"], "cpu": run["cpu"],
                      "load": os.getloadavg()[0], "stages": measure_eval(run, output)}
    if name == "warm":
      tables = read_tables(output)
    print(f"[{fraction}] eval {name}: {passes[name]['seconds']:.1f} s", flush=True)
  result["passes"] = passes
  result["disk"]["output"] = files.folder_bytes(output)
  for kind in ("quality", "embed", "compare", "edc"):
    result["disk"][kind] = files.folder_bytes(os.path.join(output, "cache", kind))
  if fraction in args.resume_at:
    result["resume"] = resume_check(argv(0, output + "_killed"), output + "_killed", base,
                                    tables, embed_chunks)
  if not args.keep:
    shutil.rmtree(base, ignore_errors=True)
  return result


def read_tables(output: str) -> dict[str, bytes]:
  return {n: open(os.path.join(output, n), "rb").read() for n in ("edc.csv", "pauc.csv")}


def killed_pass(argv: list[str], output: str, log: str, embed_chunks: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
  """One eval pass made of two processes: SIGKILLed in the middle of the embed stage, then
  rerun to the end. Returns the pass (stage rows of both processes joined: embed = its part
  before the kill, lost work included, + the rerun's part) and what the resume did."""
  from exfiqa_jax.evaluation import stages
  killed = run_child(argv, log.replace(".log", "_killed.log"),
                     watch=kill_mid_stage(output, "embed/", embed_chunks))
  if killed["rc"] != -9:
    raise RuntimeError(f"the run to kill ended by itself ({killed['rc']}), see {log}")
  rerun = run_child(argv, log)
  if rerun["rc"]:
    raise RuntimeError(f"rerun after the kill failed ({rerun['rc']}), see {log}")
  before, after = measure_eval(killed, output), measure_eval(rerun, output)
  log = stages.read_log(os.path.join(output, "cache"))
  killed_log = [e for e in log if killed["start"] <= e["time"] <= killed["stop"]]
  rerun_log = [e for e in log if e["time"] >= rerun["start"]]
  done = [e for e in killed_log if e["event"] == "chunk" and e["stage"].startswith("embed/")]
  embed_start = back_at_embed(killed_log, killed["start"])
  part = {"seconds": killed["stop"] - embed_start,
          "cpu": killed["sampler"].cpu(embed_start, killed["stop"]),
          "rss": killed["sampler"].peak(embed_start, killed["stop"])}
  rows = {**after, "startup": before["startup"], "quality": before["quality"]}
  rows["embed"] = {"seconds": part["seconds"] + after["embed"]["seconds"],
                   "cpu": part["cpu"] + after["embed"]["cpu"],
                   "rss": max(part["rss"], after["embed"]["rss"]), "cached": False}
  events = [e for e in rerun_log if e["event"] in ("computed", "cached")]
  embed_done = next(e for e in events if e["stage"].startswith("embed/"))
  ready = back_at_embed(rerun_log, rerun["start"])
  resume = {"killed_rc": killed["rc"], "killed_seconds": killed["seconds"],
            "chunks_before_kill": len(done), "chunks": embed_chunks,
            "lost_seconds": killed["stop"] - done[-1]["time"],
            "rerun_seconds": rerun["seconds"],
            "resumed_chunks": embed_done.get("resumed_chunks", 0),
            "rerun_ready_seconds": None if ready is None else ready - rerun["start"],
            "loaded": sorted(e["stage"] for e in events if e["event"] == "cached"),
            "computed": sorted(e["stage"] for e in events if e["event"] == "computed")}
  pass_ = {"seconds": killed["seconds"] + rerun["seconds"],
           "peak_rss": max(killed["peak_rss"], rerun["peak_rss"]),
           "cpu": killed["cpu"] + rerun["cpu"], "load": os.getloadavg()[0], "stages": rows}
  return pass_, resume


def back_at_embed(log: list[dict[str, Any]], start: float) -> float | None:
  """When one process (its stage-log entries `log`, started at `start`) began computing embed
  chunks: its last stage loaded or computed before its first new embed chunk (start-up and
  loading before it). None when it stored no embed chunk."""
  first = next((e["time"] for e in log if e["event"] == "chunk"
                and e["stage"].startswith("embed/")), None)
  if first is None:
    return None
  return max((e["time"] for e in log if e["time"] <= first
              and e["event"] in ("computed", "cached")), default=start)


def resume_check(argv: list[str], output: str, base: str, tables: dict[str, bytes],
                 embed_chunks: int) -> dict[str, Any]:
  """The cold pass again on a new output, SIGKILLed in the middle of the embed stage and rerun;
  its tables compared byte for byte with the uninterrupted run's (`tables`: edc.csv, pauc.csv
  without the bootstrap)."""
  shutil.rmtree(output, ignore_errors=True)
  _, resume = killed_pass(argv, output, os.path.join(base, "eval_resume.log"), embed_chunks)
  resume["tables_equal"] = read_tables(output) == tables
  return resume


def _units(kind: str, counts: dict[str, int]) -> tuple[str, int]:
  if kind in ("build", "quality", "embed"):
    return "images/s", counts["images"]
  if kind in ("compare", "edc", "bootstrap"):
    return "pairs/s", counts["pairs"]
  return "", 0


def rows_of(result: dict[str, Any]) -> dict[str, dict[str, float]]:
  """Stage → seconds, rss, disk, n for one size: the cold pass, EDC from the warm pass,
  bootstrap = EDC with it − EDC without (both warm)."""
  cold, warm, boot = (result["passes"][k]["stages"] for k in ("cold", "warm", "bootstrap"))
  rows = {k: dict(v) for k, v in cold.items()}
  rows["build"] = {**result["build"], "disk": result["disk"]["tfds"]}
  rows["edc"] = dict(warm["edc"])
  edc_with = boot.get("edc", {"seconds": 0.0, "rss": 0})
  rows["bootstrap"] = {"seconds": max(edc_with["seconds"] - rows["edc"]["seconds"], 0.0),
                       "cpu": max(edc_with.get("cpu", 0.0) - rows["edc"].get("cpu", 0.0), 0.0),
                       "rss": edc_with["rss"]}
  for kind, row in rows.items():
    row["n"] = _units(kind, result["counts"])[1]
    row.setdefault("disk", result["disk"].get(kind, 0))
  return rows


def extrapolate(n1: float, t1: float, n2: float, t2: float, n: float, e: float
                ) -> tuple[float, str]:
  """Time at size n from two measured sizes: a fixed cost plus a linear part (t = a + b·n) when
  the growth exponent e (of CPU seconds) is at most 1.1, else the power law n^e."""
  if e > 1.1:
    return t2 * (n / n2) ** e, f"n^{e:.2f}"
  slope = (t2 - t1) / (n2 - n1)
  if slope <= 0:                       # noise: no growth seen; scale the larger one linearly
    return t2 * n / n2, "linear"
  return t2 + slope * (n - n2), "a + b·n"


def report(results: list[dict[str, Any]], pairs_full: dict[str, Any] | None = None) -> None:
  from exfiqa_jax.testing import ijbc_release
  full = ijbc_release.FULL
  measured: dict[str, dict[str, float]] = {}
  if pairs_full:
    print()
    print(f"Measured at full size ({full['pairs']:,} pairs, {full['templates']:,} templates, "
          f"{full['images']:,} lines; synthetic embeddings, 9 quality columns):")
    print()
    print("| stage | wall s | CPU s | pairs/s | peak RSS in the stage |")
    print("|---|---|---|---|---|")
    rows = {"compare": pairs_full.get("compare")}
    for kind in ("edc", "bootstrap"):
      parts = [pairs_full.get(f"{kind}_{m}") for m in ("fiqa", "iso")]
      if all(parts):
        rows[kind] = {"seconds": sum(p["seconds"] for p in parts),
                      "cpu": sum(p["cpu"] for p in parts), "rss": max(p["rss"] for p in parts)}
    if "edc" in rows and "bootstrap" in rows:       # the bootstrap pass includes the EDC
      b, e = rows["bootstrap"], rows["edc"]
      rows["bootstrap"] = {"seconds": b["seconds"] - e["seconds"], "cpu": b["cpu"] - e["cpu"],
                           "rss": b["rss"]}
    measured.update({k: v for k, v in rows.items() if v})
    for kind, row in rows.items():
      if row:
        print(f"| {kind} | {row['seconds']:.1f} | {row['cpu']:.1f} | "
              f"{full['pairs'] / max(row['seconds'], 1e-9):,.0f} | {row['rss'] / 2**30:.2f} GiB |")
    print(f"whole process peak RSS (wait4): without the bootstrap "
          f"{pairs_full['peak_rss_edc'] / 2**30:.2f} GiB, with it "
          f"{pairs_full['peak_rss_bootstrap'] / 2**30:.2f} GiB")
  print()
  print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
  print()
  print("| size | images | templates | (template, media) groups | pairs | genuine | release | "
        "TFDS | output |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in results:
    c, d = r["counts"], r["disk"]
    print(f"| {r['fraction']} | {c['images']:,} | {c['templates']:,} | {c['media']:,} | "
          f"{c['pairs']:,} | {c['genuine']:,} | {d['release'] / 2**20:.1f} MiB | "
          f"{d['tfds'] / 2**20:.1f} MiB | {d['output'] / 2**20:.1f} MiB |")
  per = [rows_of(r) for r in results]
  print()
  head = " | ".join(f"{r['fraction']}: wall s (CPU s), rate, peak RSS, disk" for r in results)
  print(f"| stage | {head} | growth e, CPU s ∝ n^e (between neighbouring sizes) | "
        "full size (extrapolated: wall, CPU, RSS) |")
  print("|---|" + "---|" * len(results) + "---|---|")
  for kind in STAGES:
    cells, growth, extra = [], "", ""
    for r, rows in zip(results, per):
      row = rows.get(kind)
      if row is None:
        cells.append("—")
        continue
      unit, n = _units(kind, r["counts"])
      rate = f", {n / row['seconds']:,.0f} {unit}" if unit and row["seconds"] > 0 else ""
      disk = f", {row['disk'] / 2**20:.1f} MiB" if row.get("disk") else ""
      cells.append(f"{row['seconds']:.1f} ({row.get('cpu', 0):.1f}){rate}, "
                   f"{row['rss'] / 2**20:.0f} MiB{disk}")
    exps = []
    for (ra, a), (rb, b) in zip(zip(results, per), zip(results[1:], per[1:])):
      if kind in a and kind in b:
        ca, cb = a[kind].get("cpu", 0.0), b[kind].get("cpu", 0.0)
        if ca > 0 and cb > 0 and b[kind]["n"] > a[kind]["n"] > 0:
          exps.append(math.log(cb / ca) / math.log(b[kind]["n"] / a[kind]["n"]))
          growth += ("" if not growth else " / ") + f"{exps[-1]:.2f}" + (
              " (< 1 CPU s: noise)" if ca < 1 else "")
    if exps and fractions.Fraction(results[-1]["fraction"]) < 1:
      a, b, e = per[-2][kind], per[-1][kind], exps[-1]
      n_full = {"images/s": full["images"], "pairs/s": full["pairs"]}.get(
          _units(kind, results[-1]["counts"])[0])
      if n_full:
        t, how = extrapolate(a["n"], a["seconds"], b["n"], b["seconds"], n_full, e)
        c, _ = extrapolate(a["n"], a["cpu"], b["n"], b["cpu"], n_full, e)
        slope = max(0.0, (b["rss"] - a["rss"]) / (b["n"] - a["n"]))
        rss = b["rss"] + slope * (n_full - b["n"])
        extra = f"≈ {t:,.0f} s, {c:,.0f} CPU s ({how}), ≈ {rss / 2**30:.1f} GiB"
    if kind in measured:
      m = measured[kind]
      extra = (f"measured: {m['seconds']:,.0f} s, {m['cpu']:,.0f} CPU s, "
               f"{m['rss'] / 2**30:.1f} GiB (extrapolation: {extra or '—'})")
    print(f"| {kind} | " + " | ".join(cells) + f" | {growth} | {extra} |")
  print()
  for r in results:
    peaks = {k: v["peak_rss"] / 2**20 for k, v in r["passes"].items()}
    edc_cold = r["passes"]["cold"]["stages"].get("edc", {}).get("seconds", 0.0)
    loads = "/".join(f"{v.get('load', 0):.1f}" for v in r["passes"].values())
    print(f"size {r['fraction']} (load average after each pass {loads}): whole eval command "
          f"{r['passes']['cold']['seconds']:.1f} s "
          f"(EDC with compilation {edc_cold:.1f} s), rerun for the EDC "
          f"{r['passes']['warm']['seconds']:.1f} s, with the bootstrap "
          f"{r['passes']['bootstrap']['seconds']:.1f} s; peak RSS "
          + " / ".join(f"{v:.0f}" for v in peaks.values()) + " MiB (wait4), build "
          f"{r['build']['rss'] / 2**20:.0f} MiB; release written in {r['write_seconds']:.1f} s")
    if "resume" in r:
      print(resume_line(r["fraction"], r["resume"]))


def parse_fractions(text: str) -> tuple[fractions.Fraction, ...]:
  return tuple(fractions.Fraction(f) for f in text.split(",") if f)


def resume_line(fraction: str, k: dict[str, Any]) -> str:
  ready = k.get("rerun_ready_seconds")
  equal = k.get("tables_equal")
  return (f"kill and resume at {fraction}: SIGKILL after {k['killed_seconds']:.0f} s with "
          f"{k['chunks_before_kill']} of {k['chunks']} embed chunks stored "
          f"({k['lost_seconds']:.0f} s of work lost); the rerun took {k['rerun_seconds']:.0f} s"
          + (f", back at the embed stage after {ready:.1f} s" if ready is not None else "")
          + f", resumed {k['resumed_chunks']} chunks, loaded {', '.join(k['loaded'])}, "
          f"computed {', '.join(k['computed'])}"
          + ("" if equal is None else
             f"; tables {'byte-identical to' if equal else 'DIFFERENT from'} the uninterrupted "
             "run's"))


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1].startswith(PAIRS_FLAG):
    _pairs_child(sys.argv[1][len(PAIRS_FLAG):], int(sys.argv[2]))
    return
  parser = argparse.ArgumentParser()
  parser.add_argument("--fractions", default="1/256,1/64")
  parser.add_argument("--root", default="/tmp/ijbc_scale")
  parser.add_argument("--resume_at", default="", type=parse_fractions,
                      help="fractions: also a second cold pass there, killed mid-embed and "
                      "rerun, whose tables must equal the uninterrupted pass's")
  parser.add_argument("--reuse_release", action="store_true",
                      help="use a complete release left by an earlier run (--keep or a failure)")
  parser.add_argument("--chunk_images", type=int, default=0,
                      help="rows per resumable chunk (0: configs/eval_ijbc.py's)")
  parser.add_argument("--kill_cold", default="", type=parse_fractions,
                      help="fractions whose cold pass is itself killed mid-embed and rerun "
                      "(the full size, where a second pass does not fit)")
  parser.add_argument("--bootstrap", type=int, default=20, help="eval_ijbc's default")
  parser.add_argument("--keep", action="store_true", help="keep the files of every size")
  parser.add_argument("--json", default="", help="also write the raw results here")
  parser.add_argument("--warmup", default="1/4096", help="an unreported first size ('' = none)")
  parser.add_argument("--report_from", default="", help="print the tables of a --json file")
  parser.add_argument("--pairs_full", action="store_true",
                      help="also run compare / EDC / bootstrap at full IJB-C size (no images)")
  args = parser.parse_args()
  if args.report_from:
    with open(args.report_from, encoding="utf-8") as f:
      saved = json.load(f)
    saved = saved if isinstance(saved, dict) else {"sizes": saved, "pairs_full": None}
    report(saved["sizes"], saved.get("pairs_full"))
    return
  os.makedirs(args.root, exist_ok=True)
  models = save_models(args.root)
  full_pairs = pairs_full(args) if args.pairs_full else None
  sizes = [f for f in args.fractions.split(",") if f]
  if args.warmup and sizes:   # fill the compile cache with the fixed-shape programs (unreported)
    one_size(fractions.Fraction(args.warmup), argparse.Namespace(
        **{**vars(args), "keep": False, "resume_at": (), "kill_cold": ()}), models)
  results = []
  for item in sizes:
    results.append(one_size(fractions.Fraction(item), args, models))
    if args.json:
      with open(args.json, "w", encoding="utf-8") as f:
        json.dump({"sizes": results, "pairs_full": full_pairs}, f, indent=1, default=str)
  report(results, full_pairs)


if __name__ == "__main__":
  main()
