"""exfiqa_jax/configs/embed.py, for a checkout's documented commands
(`python main.py --config=configs/embed.py`); installed: `exfiqa --config=embed`."""
from exfiqa_jax.configs.embed import *  # noqa: F401,F403
