"""exfiqa_jax/configs/eval_ijbc.py, for a checkout's documented commands
(`python main.py --config=configs/eval_ijbc.py`); installed: `exfiqa --config=eval_ijbc`."""
from exfiqa_jax.configs.eval_ijbc import *  # noqa: F401,F403
