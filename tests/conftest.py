"""Test-wide setup. Multi-device cases run in subprocesses (exfiqa_jax.testing.subproc) with
XLA_FLAGS set there; the package is installed (`pip install -e .[dev]`), so nothing patches
sys.path."""
