"""Thin `run(config) -> dict` entry points, one module per job of main.py (configs/<job>.py)."""

TASKS = {
    "score": "exfiqa_jax.tasks.score",
    "eval": "exfiqa_jax.tasks.eval",
    "demo": "exfiqa_jax.tasks.demo",
    "train": "exfiqa_jax.tasks.train",
    "embed": "exfiqa_jax.tasks.embed",
    "early_exit": "exfiqa_jax.tasks.early_exit",
}
