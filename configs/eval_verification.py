"""exfiqa_jax/configs/eval_verification.py, for a checkout's documented commands
(`python main.py --config=configs/eval_verification.py`); installed: `exfiqa --config=eval_verification`."""
from exfiqa_jax.configs.eval_verification import *  # noqa: F401,F403
