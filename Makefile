# The README's two commands: `make run` and `make test`. Both set everything up on a fresh machine.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
RUN_OUT ?= runs/make-run-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup run test bench clean

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

# each benchmark prints ratios measured side by side in one run; figures in docs/benchmarks.md
bench: setup
	$(PYTHON) bench/sim_overhead.py
	$(PYTHON) bench/dist_overhead.py
	$(PYTHON) bench/scaling.py
	$(PYTHON) bench/transport.py --model paper-cifar10
	$(PYTHON) bench/vs_ddp.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
