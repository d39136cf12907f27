"""exfiqa_jax/configs/score.py, for the checkout's documented commands
(`python main.py --config=configs/score.py`); installed, `exfiqa --config=score` runs the same file."""
from exfiqa_jax.configs.score import *  # noqa: F401,F403
