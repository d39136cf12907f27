"""The documentation's map stays true to the code: docs/README.md's package layout names every
module of the package, and every test file is named after what it tests (tests/test_<module>.py,
or test_<part>_<module>.py where two parts have a module of that name), so each module has one
obvious place for its tests."""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "exfiqa_jax"

# Test files that check a property across many modules rather than one module.
SUITES = {
    "test_layers": "the import graph against the layer map",
    "test_docs": "this file: the docs map and the test-file names",
    "test_faults": "fault injection across jobs: kills, bad input, full disks, races",
    "test_multihost_eval": "several processes (hosts) running one evaluation",
    "test_bf16": "bfloat16 matmuls across the models and jobs",
    "test_protocol": "the published protocols' pixels, end to end across data and models",
    "test_converters": "the command-line converters (converters/*.py)",
    "test_configs": "configs/*.py: every job's config",
}


def _section(text: str, heading: str) -> str:
  match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
  assert match, f"docs/README.md has no '## {heading}' section"
  return match.group(1)


def _modules() -> list[pathlib.Path]:
  return [p.relative_to(PACKAGE) for p in sorted(PACKAGE.rglob("*.py"))]


def _entries(layout: str) -> list[tuple[str, str]]:
  """(first word, whole text) of each entry of the map: a line that starts with a path, and the
  deeper-indented lines that continue it."""
  entries: list[tuple[str, str]] = []
  for line in layout.splitlines():
    words = re.findall(r"[\w./]+", line)
    if not words:
      continue
    if line.startswith("  ") and not line.startswith(" " * 8) and ("/" in words[0]
                                                                    or ".py" in words[0]):
      entries.append((words[0], line))
    elif entries and line.startswith(" " * 8):
      entries[-1] = (entries[-1][0], entries[-1][1] + " " + line)
  return entries


def test_the_package_map_names_every_module():
  layout = _section((ROOT / "docs" / "README.md").read_text(encoding="utf-8"), "Package layout")
  entries = _entries(layout)
  missing = []
  for rel in _modules():
    path, folder = rel.as_posix(), rel.parent.as_posix() + "/"
    if rel.parent == pathlib.Path("."):
      named = any(head == path for head, _ in entries)
    elif rel.name == "__init__.py":
      named = any(head in (folder, path) for head, _ in entries)
    else:
      named = any(head == path or (head.startswith(folder)
                                   and rel.name in re.findall(r"[\w.]+", text))
                  for head, text in entries)
    if not named:
      missing.append(path)
  assert not missing, "docs/README.md's Package layout does not name: " + ", ".join(missing)


def test_every_test_file_is_named_after_what_it_tests():
  stems: dict[str, list[str]] = {}
  for rel in _modules():
    if rel.name != "__init__.py":
      stems.setdefault(rel.stem, []).append(rel.parent.as_posix())
  packages = {rel.parent.as_posix().replace("/", "_") for rel in _modules()
              if rel.name == "__init__.py" and rel.parent != pathlib.Path(".")}
  accepted = set(SUITES) | {f"test_{p}" for p in packages}
  for stem, parents in stems.items():
    if len(parents) == 1:
      accepted.add(f"test_{stem}")
    for parent in parents:          # test_<part>_<module> always names it without doubt
      if parent != ".":
        accepted.add(f"test_{parent.replace('/', '_')}_{stem}")
  wrong = [p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if p.stem not in accepted]
  assert not wrong, ("test files not named after a module (tests/test_<module>.py, "
                     "test_<part>_<module>.py) nor listed in SUITES: " + ", ".join(wrong))
