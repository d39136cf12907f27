"""A checkout's converter commands (python -m converters.torch_to_flax / .flax_to_torch); the
installed package has them as the console scripts exfiqa-torch-to-flax / exfiqa-flax-to-torch.
Not installed: pyproject.toml packages exfiqa_jax only."""
