#!/usr/bin/env bash
# What a newcomer gets from `pip install .` (not editable), checked outside the checkout:
#
#   bash bench/install_check.sh        # from the active environment (jax & co. installed); ~20 s
#
# Builds the wheel, installs it with --no-deps into a fresh venv that borrows the active
# environment's site-packages for the dependencies (not this checkout), then, from an empty
# folder: the wheel holds exfiqa_jax only (no top-level configs/converters); `exfiqa --help`
# lists the jobs; `exfiqa --config=score:size=tiny --help` and `exfiqa --config=demo:size=smoke
# --help` resolve the packaged configs by name; a doc's `--config=configs/demo.py` names the fix;
# the converter scripts answer --help. tests/test_cli.py checks the wheel and the packaged
# configs the same way without running the scripts (they import JAX: seconds each).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python -m pip wheel -q --no-deps --no-build-isolation -w "$TMP/dist" "$ROOT"
python -m venv --without-pip "$TMP/venv"
SITE="$("$TMP/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
python -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("site-packages")))' \
    > "$SITE/deps.pth"
python -m pip --python "$TMP/venv/bin/python" install -q --no-deps "$TMP"/dist/*.whl
mkdir "$TMP/elsewhere" && cd "$TMP/elsewhere"
export JAX_PLATFORMS=cpu
BIN="$TMP/venv/bin"
fail() { echo "FAIL: $*" >&2; exit 1; }
ls "$SITE" | grep -qx configs && fail "a top-level configs package was installed"
ls "$SITE" | grep -qx converters && fail "a top-level converters package was installed"
grep -q "^  early_exit " <<< "$("$BIN/exfiqa" --help)" || fail "exfiqa --help lists no jobs"
grep -q "^  --config.batch_size=8$" <<< "$("$BIN/exfiqa" --config=score:size=tiny --help)" \
    || fail "--config=score:size=tiny did not resolve"
grep -q "file $SITE/exfiqa_jax/configs/demo.py" \
    <<< "$("$BIN/exfiqa" --config=demo:size=smoke --help)" || fail "--config=demo: not the wheel's"
refused="$("$BIN/exfiqa" --config=configs/demo.py 2>&1 || true)"       # exits 1, as it should
grep -q "runs from any folder: --config=demo" <<< "$refused" \
    || fail "--config=configs/demo.py outside a checkout does not name the fix"
for script in exfiqa-torch-to-flax exfiqa-flax-to-torch; do   # absl's --help exits 1
  grep -q -- "--checkpoint: " <<< "$("$BIN/$script" --help || true)" || fail "$script --help"
done
echo "install check passed: $(ls "$TMP"/dist)"
