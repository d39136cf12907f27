"""exfiqa_jax/configs/eval_ijbc.py, for the checkout's documented commands
(`python main.py --config=configs/eval_ijbc.py`); installed, `exfiqa --config=eval_ijbc` runs the same file."""
from exfiqa_jax.configs.eval_ijbc import *  # noqa: F401,F403
