"""Quality methods: each module is a model plus a scoring function (docs/methods.md, Baselines).

Every method module has `METHOD` (its name in `quality_model.method`) and
`scorer(module, variables, model_config, **options) -> scorer.Scorer`; a Scorer maps images to
named quality columns [B] (exfiqa_jax/columns.py), higher = better.
"""
