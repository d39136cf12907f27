"""A checkout's view of the packaged configs (exfiqa_jax/configs/): each configs/<name>.py
re-exports exfiqa_jax/configs/<name>.py, so `python main.py --config=configs/demo.py` and
`from configs import score` keep working. Installed, run them by name: `exfiqa --config=demo`.
Not installed: pyproject.toml packages exfiqa_jax only."""
