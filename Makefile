# Both targets create (or reuse) .venv themselves: see tools/env.sh.
PY := .venv/bin/python

.PHONY: env demo test
env:
	bash tools/env.sh

demo: env
	$(PY) -m polylm_jax.train --gin_file=gin/demo.gin

test: env
	$(PY) -m pytest -n 2 --dist loadfile -q tests
