"""exfiqa_jax/configs/score.py, for a checkout's documented commands
(`python main.py --config=configs/score.py`); installed: `exfiqa --config=score`."""
from exfiqa_jax.configs.score import *  # noqa: F401,F403
