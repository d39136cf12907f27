"""The field's FIQA methods (exfiqa_jax/methods/) beside the official way of running them:
images/s and ratios measured in ONE run on the same CPU, printed as one Markdown table.

  python -m bench.baselines [--small] [--images=4] [--rounds=3] [--passes=100]

Targets (issue 25; docs/methods.md, Baselines), each printed with "yes" / "NO":
  GraFIQs  ours: methods.grafiqs, vmap(value_and_grad) over the batch, one compiled program;
           official: extract_grafiqs.py's loop, one image at a time, forward + autograd.grad
           (testing/baselines_free_torch.grafiqs)                                        >= 5x
  SER-FIQ  ours: methods.serfiq, the trunk once and T = --passes dropout tails;
           official: get_score, the image repeated T times through the whole network with
           dropout (p = 0.5) active, then the pairwise distances                         >= 20x
           memory: our compiled program's temporary bytes at T = 10, 50, 100 stay flat (grow
           by less than a quarter of what 90 more [B, C·H·W] float32 masks would take)
  ViTNT    ours: the FR ViT's own pass carrying the ViTNT sums (vitnt.in_pass_spec: embedding,
           ATTN and both ViTNT columns); official: calculate_ntfiq, a batched forward over the
           selected blocks, then a Python loop per image and per patch, attention weights on
           (testing/baselines_free_torch.ntfiq)                                          >= 20x
           and against our plain pass (embedding and ATTN, no ViTNT): overhead          <= 15 %
Context, no target: CR-FIQA, eDifFIQA, MagFace — our scorer (BatchNorms folded) against the
PyTorch twin's forward (eval, no_grad) on the same batch; and the ViT twin's plain forward, which
bounds what any route through PyTorch's ViT can reach on this CPU.

Models: random weights in the official module trees (the testing/ twins), converted to ours
through convert/ as the parity tests do, so both sides run the same network. Default: iResNet-50
for the CNN methods (CR-FIQA's and MagFace's r50, eDifFIQA-M's backbone), the CVLFace ViT-S FR
layout for ViTNT (patch 8, 196 patches, width 512, 12 blocks; every block compared, as
calculate_ntfiq's default). `--small`: tiny networks, a seconds-long smoke of the same code.
Float32 on both sides, PyTorch on every core.

Timing: our programs are compiled ahead of time (compile seconds printed), every route is warmed
up once, then timed once per round in a shuffled order (bench/throughput.time_interleaved) so
that load from other jobs falls on all routes alike; figures are medians. The official SER-FIQ
(T full passes per image) scores one image and is timed in one round; our two ViT passes, whose
ratio is the ViTNT overhead, are timed in three times the rounds. Ratios use wall clock; the
CPU-time ratio beside them (this process's CPU seconds over all threads) is a second reading.
The load average is printed: PyTorch's threads lose far more than XLA's on cores other jobs
share, so a loaded machine flatters our routes (docs/methods.md, Baselines, has the spread).
Runtime on the shared 2-core CPU: 1.5 to 5 minutes (default), under 40 s (--small).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from typing import Any, Callable

import flax
import jax
import numpy as np
import torch

from bench import throughput
from exfiqa_jax import convert, models, parallel
from exfiqa_jax.convert import vit_keys
from exfiqa_jax.methods import crfiqa, ediffiqa, grafiqs, magface, serfiq, vitnt
from exfiqa_jax.methods import scorer as scorer_lib
from exfiqa_jax.models import vit
from exfiqa_jax.testing import baselines_free_torch as free_twins
from exfiqa_jax.testing import baselines_torch as bt
from exfiqa_jax.testing import fr_torch_reference as fr_ref
from exfiqa_jax.testing import torch_reference as vit_ref

SERFIQ_MEMORY_PASSES = (10, 50, 100)
SERFIQ_RATE = 0.5
TARGETS = {"grafiqs": 5.0, "serfiq": 20.0, "vitnt": 20.0, "vitnt_overhead": 0.15}


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The networks one run uses: an iResNet for the CNN methods, an FR ViT for ViTNT."""
  name: str
  layers: tuple[int, ...]
  widths: tuple[int, ...]
  features: int
  mlp_hidden: int                  # eDifFIQA's head
  vit: vit.ViTConfig


DEFAULT = Sizes("iResNet-50 (64..512, 512-d) and the CVLFace ViT-S FR layout", (3, 4, 14, 3),
                (64, 128, 256, 512), 512, 1024, vit.cvlface_config("S"))
SMALL = Sizes("tiny iResNet (8..32, 64-d) and a tiny FR ViT (--small)", (1, 1, 1, 1),
              (8, 16, 24, 32), 64, 128,
              vit.ViTConfig(mode="fr", width=32, depth=4, num_heads=4, patch_size=16,
                            mlp_dim=64, embed_dim=24, has_mask_token=False))


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the table; values already formatted."""
  method: str
  ours: str
  theirs: str
  measure: str
  ours_value: str
  theirs_value: str
  ratio: str
  cpu_ratio: str = ""
  target: str = "context"
  met: str = ""


def verdict(ok: bool) -> str:
  return "yes" if ok else "NO"


# ---------------------------------------------------------------------------------- models

def _converted(tmodel: torch.nn.Module) -> tuple[Any, Any, dict]:
  """(our module, variables, model_config) of a twin, through the strict converter."""
  variables, config = convert.convert_state_dict(bt.numpy_state_dict(tmodel))
  return models.get_model(config), jax.device_put(variables), config


def vit_twin(cfg: vit.ViTConfig) -> tuple[torch.nn.Module, Any]:
  """(PyTorch FR ViT twin, our variables converted from its state_dict)."""
  twin = vit_ref.random_init_(vit_ref.VitFiqaTorch(
      mode=cfg.mode, width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
      patch_size=cfg.patch_size, img_size=cfg.img_size, mlp_dim=cfg.mlp_dim,
      embed_dim=cfg.embed_dim, mask_token=cfg.has_mask_token), seed=0)
  sd = {k: v.numpy() for k, v in twin.state_dict().items()}
  return twin, jax.device_put(vit_keys.state_dict_to_variables(sd, cfg.to_dict()))


def iresnet_twin(sizes: Sizes, seed: int, eps: float = 1e-5) -> fr_ref.IResNet:
  return fr_ref.randomize_(fr_ref.IResNet(sizes.layers, sizes.widths, sizes.features, eps=eps),
                           seed=seed)


# ---------------------------------------------------------------------------------- timing

def compiled_route(fn: Callable, *args) -> tuple[Callable[[], object], float, Any]:
  """(a call of `fn`'s ahead-of-time compiled program on `args`, compile seconds, program)."""
  start = time.perf_counter()
  program = (fn if hasattr(fn, "lower") else jax.jit(fn)).lower(*args).compile()
  return (lambda: jax.block_until_ready(program(*args))), time.perf_counter() - start, program


def scorer_route(scorer: scorer_lib.Scorer, images: jax.Array) -> tuple[Callable, float, Any]:
  return compiled_route(scorer.apply, scorer.variables, images)


def measure(routes: dict[str, Callable[[], object]], rounds: int,
            slow: dict[str, int] | None = None) -> dict[str, tuple[float, float]]:
  """{route: (median wall s, median CPU s) per call}, interleaved (bench/throughput.py)."""
  times = throughput.time_interleaved(routes, rounds, slow)
  return {name: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
          for name, ts in times.items()}


def rate_row(method: str, ours: str, theirs: str, n_ours: int, n_theirs: int,
             t_ours: tuple[float, float], t_theirs: tuple[float, float],
             target: float | None = None) -> Row:
  """images/s of both routes and their ratio (wall and CPU) against a >= target, if any."""
  wall = (n_ours / t_ours[0]) / (n_theirs / t_theirs[0])
  cpu = (n_ours / t_ours[1]) / (n_theirs / t_theirs[1])
  return Row(method, ours, theirs, "images/s", f"{n_ours / t_ours[0]:.2f}",
             f"{n_theirs / t_theirs[0]:.2f}", f"{wall:.1f}x", f"{cpu:.1f}x",
             "context" if target is None else f">= {target:g}x",
             "" if target is None else verdict(wall >= target))


# ---------------------------------------------------------------------------------- methods

def grafiqs_rows(sizes: Sizes, faces: np.ndarray, rounds: int, compiled: dict) -> list[Row]:
  tmodel = iresnet_twin(sizes, seed=3)
  module, variables, config = _converted(tmodel)
  images, normalised = jax.device_put(faces), _normalised(faces)
  ours, compiled["GraFIQs"], _ = scorer_route(grafiqs.scorer(module, variables, config), images)
  t = measure({"ours": ours, "official": lambda: free_twins.grafiqs(tmodel, normalised)},
              rounds)
  n = len(faces)
  return [rate_row("GraFIQs", f"vmap(grad), batch {n}, one program",
                   "per image: forward + autograd.grad", n, n, t["ours"], t["official"],
                   TARGETS["grafiqs"])]


def serfiq_official(tmodel: torch.nn.Module, x: torch.Tensor, passes: int) -> np.ndarray:
  """pterhoer/FaceImageQuality `get_score` on the twin: per image, the image repeated T times
  through the whole network with its dropout active, sklearn's normalise and upper-triangle
  Euclidean distances, s = 2 / (1 + exp(mean))."""
  scores = []
  with torch.no_grad():
    for image in x:
      emb = tmodel(image[None].expand(passes, -1, -1, -1)).numpy().astype(np.float64)
      norm = emb / np.linalg.norm(emb, axis=1, keepdims=True)
      dist = np.linalg.norm(norm[:, None] - norm[None], axis=-1)[np.triu_indices(passes, k=1)]
      scores.append(2 / (1 + np.exp(np.mean(dist))))
  return np.asarray(scores)


def serfiq_rows(sizes: Sizes, faces: np.ndarray, rounds: int, passes: int,
                compiled: dict) -> list[Row]:
  tmodel = iresnet_twin(sizes, seed=4)
  module, variables, config = _converted(tmodel)
  tmodel.dropout = torch.nn.Dropout(p=SERFIQ_RATE).train()    # active, the rest in eval mode
  images = jax.device_put(faces)
  temp, routes = {}, {}
  for t in sorted(set(SERFIQ_MEMORY_PASSES) | {passes}):
    route, seconds, program = scorer_route(
        serfiq.scorer(module, variables, config, passes=t, rate=SERFIQ_RATE), images)
    if t == passes:
      routes["ours"], compiled[f"SER-FIQ T={t}"] = route, seconds
    if t in SERFIQ_MEMORY_PASSES:
      analysis = program.memory_analysis()
      temp[t] = None if analysis is None else int(analysis.temp_size_in_bytes)
  one = bt.torch_input(faces[:1])
  routes["official"] = lambda: serfiq_official(tmodel, one, passes)
  t = measure(routes, rounds, slow={"official": 1})
  mask_bytes = 4 * len(faces) * sizes.widths[-1] * (module.config.img_size // 16) ** 2
  return [rate_row("SER-FIQ", f"trunk once + {passes} tails, batch {len(faces)}",
                   f"{passes} full passes per image (batch of {passes} copies)", len(faces), 1,
                   t["ours"], t["official"], TARGETS["serfiq"]),
          serfiq_memory_row(temp, mask_bytes)]


def serfiq_memory_row(temp: dict[int, int | None], mask_bytes: int) -> Row:
  """Compiled temporary bytes at each T against what the extra T's masks [B, C·H·W] would take
  if the program kept them all."""
  lo, hi = min(temp), max(temp)
  masks = (hi - lo) * mask_bytes
  label = "compiled temp at T = " + ", ".join(map(str, temp))
  if any(v is None for v in temp.values()):
    return Row("SER-FIQ memory", label, "", "MB", "n/a (no memory analysis)", "", "",
               target="flat in T", met="n/a")
  growth = temp[hi] - temp[lo]
  return Row("SER-FIQ memory", label, f"{hi - lo} more [B, C·H·W] masks", "MB",
             " / ".join(f"{v / 2 ** 20:.1f}" for v in temp.values()), f"{masks / 2 ** 20:.1f}",
             f"+{growth / 2 ** 20:.2f} MB ({100 * growth / masks:.1f} % of it)",
             target="growth < 25 % of those", met=verdict(growth < 0.25 * masks))


def ntfiq_official(twin: vit_ref.VitFiqaTorch, x: torch.Tensor,
                   scaling: float = vitnt.DEFAULT_SCALING) -> np.ndarray:
  """gurayozgur/ViTNT-FIQA `calculate_ntfiq` (every block, attention weights from the last) on
  the twin's modules as the official file runs it: each block once, its softmax attention kept
  (testing/baselines_free_torch.ntfiq recomputes the logits beside the block: same numbers,
  more work), then the per-image, per-patch Python loop."""
  with torch.no_grad():
    h, normalised = twin.embed(x), []
    for blk in twin.blocks:
      logits, v = blk.attn.logits(blk.norm1(h))
      attn = logits.softmax(dim=-1)
      h = h + blk.attn.proj((attn @ v).transpose(1, 2).reshape(h.shape))
      h = h + blk.mlp(blk.norm2(h))
      z = twin.norm(h.float())
      normalised.append(z / torch.linalg.vector_norm(z, ord=2, dim=2, keepdim=True))
    all_x = torch.stack(normalised, dim=1)                              # [B, T, N, D]
    weights = attn.mean(dim=1).sum(dim=1)
  return free_twins.ntfiq_patch_loop(all_x, weights / weights.sum(dim=1, keepdim=True), scaling)


def vitnt_rows(sizes: Sizes, faces: np.ndarray, rounds: int, compiled: dict) -> list[Row]:
  cfg = sizes.vit
  twin, variables = vit_twin(cfg)
  module = vit.VisionTransformer(cfg)
  spec = vitnt.in_pass_spec(cfg.depth)

  def plain(variables, images):
    return module.apply(variables, scorer_lib.prepare_images(images, "minus1_1"))

  def in_pass(variables, images):
    emb, out = module.apply(variables, scorer_lib.prepare_images(images, "minus1_1"),
                            vitnt=spec)
    return emb, out["attn_scores"], vitnt.columns_from_outputs(out)

  images, normalised = jax.device_put(faces), _normalised(faces)
  routes = {}
  routes["ours"], compiled["ViTNT in the pass"], _ = compiled_route(in_pass, variables, images)
  routes["plain"], compiled["plain ViT pass"], _ = compiled_route(plain, variables, images)
  x = bt.torch_input(faces)
  np.testing.assert_allclose(ntfiq_official(twin, x), free_twins.ntfiq(
      twin, normalised, use_attention_weights=True), rtol=1e-5)        # the same computation
  routes["official"] = lambda: ntfiq_official(twin, x)

  def twin_forward():
    with torch.no_grad():
      return twin(x)

  routes["twin"] = twin_forward
  # the overhead is a ratio of two close, cheap routes: time them in 3x the rounds
  t = measure(routes, 3 * rounds, slow={"official": rounds, "twin": rounds})
  n = len(faces)
  overhead = t["ours"][0] / t["plain"][0] - 1
  cpu_overhead = t["ours"][1] / t["plain"][1] - 1
  name = f"ViTNT ({cfg.depth} blocks)"
  return [
      rate_row(name, f"in the pass, batch {n} (both columns)",
               "calculate_ntfiq: forward, then per image and patch", n, n, t["ours"],
               t["official"], TARGETS["vitnt"]),
      Row(name, "in the pass", "our plain pass (embedding + ATTN)", "images/s",
          f"{n / t['ours'][0]:.2f}", f"{n / t['plain'][0]:.2f}", f"{100 * overhead:+.1f} %",
          f"{100 * cpu_overhead:+.1f} %", f"<= {100 * TARGETS['vitnt_overhead']:.0f} %",
          verdict(overhead <= TARGETS["vitnt_overhead"])),
      rate_row(name + ", bound", "our plain pass (ViTNT for free)", "calculate_ntfiq", n, n,
               t["plain"], t["official"]),
      rate_row("FR ViT pass", "our plain pass", "PyTorch twin forward", n, n, t["plain"],
               t["twin"])]


def context_rows(sizes: Sizes, faces: np.ndarray, rounds: int, compiled: dict) -> list[Row]:
  """CR-FIQA, eDifFIQA, MagFace: our scorer against the twin's forward, same batch."""
  magface_backbone = fr_ref.IResNet(sizes.layers, sizes.widths, sizes.features, eps=2e-5)
  twins = {
      "CR-FIQA": (bt.CRFIQAIResNet(sizes.layers, sizes.widths, sizes.features), crfiqa.scorer,
                  "minus1_1"),
      "eDifFIQA": (bt.ediffiqa(sizes.layers, sizes.widths, sizes.features, sizes.mlp_hidden),
                   ediffiqa.scorer, "minus1_1"),
      "MagFace": (bt.MagFaceCheckpoint(magface_backbone, sizes.features), magface.scorer,
                  "0_1")}
  images, routes = jax.device_put(faces), {}
  for seed, (name, (tmodel, make_scorer, scale)) in enumerate(twins.items()):
    tmodel = fr_ref.randomize_(tmodel, seed=10 + seed)
    module, variables, config = _converted(tmodel)
    routes[name], compiled[name], _ = scorer_route(make_scorer(module, variables, config),
                                                   images)
    routes[name + " twin"] = _no_grad(tmodel, bt.torch_input(faces, scale))
  t = measure(routes, rounds)
  n = len(faces)
  return [rate_row(name, f"scorer, batch {n}, BatchNorms folded", "PyTorch twin forward", n, n,
                   t[name], t[name + " twin"]) for name in twins]


def _no_grad(tmodel: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
  def call():
    with torch.no_grad():
      return tmodel(x)
  return call


def _normalised(faces: np.ndarray) -> np.ndarray:
  """uint8 NHWC → (x/255 − 0.5)/0.5 float32 NHWC (what the official scripts feed)."""
  return (faces.astype(np.float32) / 255.0 - 0.5) / 0.5


# ---------------------------------------------------------------------------------- report

def print_header(sizes: Sizes, args: argparse.Namespace) -> None:
  rates = throughput.ceiling(1024 if args.small else 2048, 3, torch_too=True)
  print(f"CPU: {parallel.cpu_model()}, {os.cpu_count()} cores; PyTorch threads "
        f"{torch.get_num_threads()}; jax {jax.__version__} ({jax.default_backend()}), flax "
        f"{flax.__version__}, torch {torch.__version__}; load average "
        f"{os.getloadavg()[0]:.1f}")
  print(f"ceiling: f32 matmul {1024 if args.small else 2048}², XLA {rates['xla_matmul']:.0f} "
        f"GFLOP/s, PyTorch {rates['torch_matmul']:.0f} GFLOP/s (XLA / PyTorch "
        f"{rates['xla_matmul'] / rates['torch_matmul']:.2f}x: the ratio equal work can reach)")
  if jax.default_backend() != "cpu":
    print(f"note: JAX runs on {jax.default_backend()}, the PyTorch routes on the CPU (torch "
          f"{torch.__version__}): the ratios compare devices, not implementations")
  print(f"models: {sizes.name}; {args.images} images; SER-FIQ T = {args.passes}, rate "
        f"{SERFIQ_RATE}; {args.rounds} rounds", flush=True)


def print_table(rows: list[Row]) -> None:
  print()
  print("| method | ours | official / reference | measure | ours | theirs | ratio (wall) | "
        "ratio (CPU time) | target | met |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r.method} | {r.ours} | {r.theirs} | {r.measure} | {r.ours_value} | "
          f"{r.theirs_value} | {r.ratio} | {r.cpu_ratio} | {r.target} | {r.met} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="tiny networks: a quick smoke")
  parser.add_argument("--images", type=int, default=0, help="batch (0: 4, --small: 2)")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
  parser.add_argument("--passes", type=int, default=100, help="SER-FIQ's T")
  args = parser.parse_args()
  args.images = args.images or (2 if args.small else 4)
  if min(args.images, args.rounds) < 1 or args.passes < 2:
    raise ValueError("--images and --rounds must be >= 1, --passes >= 2")
  torch.set_num_threads(os.cpu_count() or 1)
  sizes = SMALL if args.small else DEFAULT
  start = time.perf_counter()
  print_header(sizes, args)
  faces = bt.uint8_faces(args.images, seed=0)
  compiled: dict[str, float] = {}
  rows = grafiqs_rows(sizes, faces, args.rounds, compiled)
  rows += serfiq_rows(sizes, faces, args.rounds, args.passes, compiled)
  rows += vitnt_rows(sizes, faces, args.rounds, compiled)
  rows += context_rows(sizes, faces, args.rounds, compiled)
  print_table(rows)
  print()
  print("compile (s): " + ", ".join(f"{k} {v:.1f}" for k, v in compiled.items()))
  print(f"total {time.perf_counter() - start:.0f} s; final load average "
        f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
