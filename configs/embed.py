"""exfiqa_jax/configs/embed.py, for the checkout's documented commands
(`python main.py --config=configs/embed.py`); installed, `exfiqa --config=embed` runs the same file."""
from exfiqa_jax.configs.embed import *  # noqa: F401,F403
