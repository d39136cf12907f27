"""exfiqa-jax: face image quality with Vision Transformers in JAX/Flax.

    import exfiqa_jax as fx
    model = fx.load("vitfiqa_token.pt", num_heads=8)   # or a converted directory
    out = model.score(images)                          # uint8 [B, H, W, 3] RGB
"""


def load(*args, **kwargs):
  """Loads a quality model from a converted directory or a PyTorch `.pt` file."""
  from exfiqa_jax.api import load as _load
  return _load(*args, **kwargs)
