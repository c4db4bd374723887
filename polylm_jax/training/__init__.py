"""The trainer: settings, the loop and its named parts (resume, reporter, evaluator),
the jitted step and its pre-compute checks. The binary is polylm_jax/train.py."""
