"""The package's architecture, checked from its source: every import (inside functions too) points
down the layer map below, no two parts import each other (directly or through others), nothing
outside tests and benches imports `testing/`, and no module uses another module's private names.
docs/README.md, "Package layout", draws the same map for readers."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "exfiqa_jax"

# The layer map, from the ground up. A part may import itself and any part in a LOWER row; never a
# part in its own row or above. A part is a subpackage (models, data, ...) or a top-level module.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("files", "parallel", "compile_cache", "columns", "console"),   # leaves: no networks, no formats
    ("identity",),                      # what a result was made from; canonical JSON
    ("data", "metrics", "fusion"),      # formats and pipelines; pure numerics
    ("models",),                        # networks only
    ("convert",),                       # PyTorch key maps → models
    ("checkpoints", "quality_mapping"),  # converted directories; the 0–100 mapping beside them
    ("calibrate", "detection"),         # thresholds, cascade, splits; MTCNN detect → align
    ("embedding", "methods"),           # FR embeddings; the quality methods
    ("configs",),                       # the job configs: ml_collections over pure-Python parts
    ("inference",),                     # the one loader and the QualityModel API
    ("evaluation", "train"),            # evaluation stages and pipeline; training
    ("report",),                        # tables and plots from results, never networks
    ("tasks",),                         # config → library → report
    ("cli", "convert_cli"),             # the absl entry points: jobs, converters
)
TOP = "__init__"          # the package facade (lazy entry points): may import any part
FREE = "testing"          # PyTorch twins and fixtures: may import anything; only tests import it
ROW = {part: i for i, row in enumerate(LAYERS) for part in row}


def _modules() -> dict[str, pathlib.Path]:
  return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
          for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _canonical(name: str) -> str:
  """exfiqa_jax.a.b.__init__ → exfiqa_jax.a.b (how imports spell a package)."""
  return name[: -len(".__init__")] if name.endswith(".__init__") else name


KNOWN = {_canonical(m) for m in MODULES}


def part_of(module: str) -> str:
  parts = module.split(".")
  if len(parts) == 1 or parts[1] == "__init__":
    return TOP
  return parts[1]


def _resolve(module: str, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  base = _canonical(module).split(".")
  is_package = module.endswith(".__init__")
  base = base[: len(base) - node.level + (1 if is_package else 0)]
  return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, imported exfiqa_jax module) for every import statement anywhere in the file."""
  found = []
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      found += [(node.lineno, a.name) for a in node.names if a.name.startswith("exfiqa_jax")]
    elif isinstance(node, ast.ImportFrom):
      target = _resolve(module, node)
      if not target.startswith("exfiqa_jax"):
        continue
      for alias in node.names:   # `from exfiqa_jax.x import y`: y may be a submodule
        sub = f"{target}.{alias.name}"
        found.append((node.lineno, sub if sub in KNOWN else target))
  return found


def _edges() -> dict[tuple[str, str], list[str]]:
  edges: dict[tuple[str, str], list[str]] = {}
  for module, path in MODULES.items():
    src = part_of(module)
    for line, target in imports_of(module, path):
      dst = part_of(target)
      if dst != src:
        edges.setdefault((src, dst), []).append(f"{path.relative_to(ROOT)}:{line} → {target}")
  return edges


EDGES = _edges()


def test_every_part_is_on_the_map():
  parts = {part_of(m) for m in MODULES} - {TOP, FREE}
  assert parts <= set(ROW), f"parts missing from LAYERS: {sorted(parts - set(ROW))}"


def test_every_import_points_down():
  bad = []
  for (src, dst), where in sorted(EDGES.items()):
    if src in (TOP, FREE):
      continue
    if dst == FREE:
      bad += [f"{w} (testing/ is for tests and benches only)" for w in where]
    elif dst == TOP or ROW[dst] >= ROW[src]:
      bad += [f"{w} ({src}, row {ROW[src]} → {dst}, row {ROW.get(dst, '?')})" for w in where]
  assert not bad, "imports against the layer map:\n" + "\n".join(bad)


def test_no_cycle_between_parts():
  graph: dict[str, set[str]] = {}
  for src, dst in EDGES:
    graph.setdefault(src, set()).add(dst)
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      pytest.fail("cycle between parts: " + " → ".join(cycle))


def _where(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _private_uses(path: pathlib.Path, module: str) -> list[str]:
  """`from exfiqa_jax.x import _name` and `alias._name` where alias is an exfiqa_jax module."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  aliases: dict[str, str] = {}
  bad = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("exfiqa_jax") and a.asname:
          aliases[a.asname] = a.name
    elif isinstance(node, ast.ImportFrom):
      target = _resolve(module, node) if module else (node.module or "")
      if not target.startswith("exfiqa_jax"):
        continue
      for a in node.names:
        sub = f"{target}.{a.name}"
        if sub in KNOWN:
          aliases[a.asname or a.name] = sub
        elif a.name.startswith("_") and not a.name.startswith("__") and target != module:
          bad.append(f"{_where(path)}:{node.lineno} imports {target}.{a.name}")
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and node.value.id in aliases and node.attr.startswith("_")
        and not node.attr.startswith("__") and aliases[node.value.id] != _canonical(module)):
      bad.append(f"{_where(path)}:{node.lineno} uses "
                 f"{aliases[node.value.id]}.{node.attr}")
  return bad


@pytest.mark.parametrize("where", ["exfiqa_jax", "bench", "tests", "converters", "configs"])
def test_no_private_name_used_across_modules(where):
  bad = []
  for path in sorted((ROOT / where).rglob("*.py")):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts) if where == "exfiqa_jax" else ""
    bad += _private_uses(path, module)
  assert not bad, "private names used outside their module:\n" + "\n".join(bad)


def test_this_check_sees_function_level_imports_and_cycles(tmp_path):
  """The walker finds an import inside a function, and a cycle through two parts."""
  src = tmp_path / "m.py"
  src.write_text("def f():\n  from exfiqa_jax.report import tables\n  return tables\n")
  assert [part_of(m) for _, m in imports_of("exfiqa_jax.metrics.m", src)] == ["report"]
  src.write_text("import exfiqa_jax.files as f\nx = f._private\n")
  assert _private_uses(src, "exfiqa_jax.metrics.m")
