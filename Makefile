# The README's two commands: `make run` and `make test`. Both set everything up on a fresh machine.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
RUN_OUT ?= runs/make-run-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup run test test-quick lint bench experiments clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on local disk, never a multi-GB CUDA download
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's Fashion-MNIST, when we may install it (root) and it is missing
.PHONY: data
data:
	@if [ ! -f $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

run: setup
	$(VENV)/bin/softsync train --engine dist --learners 4 --protocol 2-softsync --lr-policy staleness --model cnn-small \
		--batch-size 32 --lr 0.02 --momentum 0.9 --epochs 5 --out $(RUN_OUT)
	$(VENV)/bin/softsync plot $(RUN_OUT)
	@echo "run directory: $(RUN_OUT) (metrics.jsonl, summary.json, checkpoint.pt, test-error.png, staleness.png)"

test: setup
	$(PYTHON) -m pytest tests

# the quick loop: everything but the tests that start real dist processes or are marked slow
test-quick: setup
	$(PYTHON) -m pytest tests -m "not slow and not dist"

# ruff (lint and format, line length 120) and mypy over src/, configured in pyproject.toml; CI runs it first
lint: setup
	$(VENV)/bin/ruff check src tests bench experiments examples
	$(VENV)/bin/ruff format --check src tests bench experiments examples
	$(VENV)/bin/mypy

# each benchmark prints ratios measured side by side in one run; figures in docs/benchmarks.md
bench: setup
	$(PYTHON) bench/sim_overhead.py
	$(PYTHON) bench/dist_overhead.py
	$(PYTHON) bench/scaling.py
	$(PYTHON) bench/transport.py --model paper-cifar10
	$(PYTHON) bench/vs_ddp.py
	$(PYTHON) bench/user_spec.py
	$(PYTHON) bench/tensorboard_overhead.py
	$(PYTHON) bench/corrections.py
	$(PYTHON) bench/sim_scale.py
	$(PYTHON) bench/server_speed.py

# the paper's experiments (about an hour on 2 cores) and issue 13's (about another hour); results in docs/results.md. A rerun skips finished runs.
EXPERIMENTS := runs/experiments
experiments: setup
	$(VENV)/bin/softsync sweep experiments/fig1-staleness.toml --out $(EXPERIMENTS)/fig1-staleness --jobs 2
	$(VENV)/bin/softsync sweep experiments/fig3-lr-policy.toml --out $(EXPERIMENTS)/fig3-lr-policy --jobs 2
	$(VENV)/bin/softsync sweep experiments/fig3-lr-policy-0.01.toml --out $(EXPERIMENTS)/fig3-lr-policy-0.01 --jobs 2
	$(VENV)/bin/softsync sweep experiments/mulambda.toml --out $(EXPERIMENTS)/mulambda --jobs 2
	$(PYTHON) experiments/calibrate_speedup.py
	$(VENV)/bin/softsync sweep experiments/speedup-measured.toml --out $(EXPERIMENTS)/speedup-measured
	$(VENV)/bin/softsync sweep experiments/speedup-predicted.toml --out $(EXPERIMENTS)/speedup-predicted --jobs 2
	$(VENV)/bin/softsync sweep experiments/corrections.toml --out $(EXPERIMENTS)/corrections --jobs 2
	$(VENV)/bin/softsync sweep experiments/ssp.toml --out $(EXPERIMENTS)/ssp --jobs 2
	$(PYTHON) experiments/theorem.py experiments/theorem.toml --out $(EXPERIMENTS)/theorem

clean:
	rm -rf $(VENV) runs build src/*.egg-info
