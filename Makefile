# Convenience targets; the README's two commands are scripts/demo.sh and scripts/test.sh.
.PHONY: demo test lint bench
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
lint:
	venv=$$(bash scripts/bootstrap.sh) && $$venv/bin/ruff check cm2data adapters tests benchmarks scripts \
	  && $$venv/bin/ruff format --check cm2data adapters tests benchmarks scripts && $$venv/bin/python -m mypy
bench:
	$$(bash scripts/bootstrap.sh)/bin/python benchmarks/validate.py
