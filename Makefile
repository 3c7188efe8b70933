# zoo — `make help` lists the targets.
PYTHON ?= python
TORCH_VERSION ?= 2.13.0
ARGS ?=
# Most of the suite's time is single-threaded (subprocess start-up, data preparation): two workers keep
# both cores of a 2-core machine busy. `-p no:benchmark`: pytest-benchmark, where a machine has it, warns
# that xdist disables it; the zoo's benchmarks are `make bench`, not pytest fixtures.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast test-prometheus lint format sweep bench bench-gpt-scale bench-events-full bench-tft-full tensorboard notebooks clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

install: ## Install torch (CPU build here, CUDA build on GPU machines) then zoo with dev extras
	$(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e '.[dev,onnx,serve,hf,track,prom]'

train: ## Train (default: small GPT on CPU in ~2 min); pass overrides with ARGS="model=tft trainer=cpu"
	$(PYTHON) -m zoo.train $(ARGS)

test: ## Full test suite, slow tests and notebooks included (what CI runs), on TEST_WORKERS processes
	$(PYTHON) -m pytest tests notebooks --nbmake -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal -p no:benchmark

test-prometheus: ## Prometheus parts (apt-get installs prometheus, promtool, node_exporter where missing), then their tests (~4 min)
	bash .ci/prometheus-parts.sh
	ZOO_PROMETHEUS_TESTS=1 $(PYTHON) -m pytest tests/prometheus -q -p no:cacheprovider -n 0 -p no:benchmark

test-fast: ## Tests without the slow ones and without notebooks
	$(PYTHON) -m pytest tests -q -m "not slow"

lint: ## ruff checks
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

format: ## ruff autoformat and fixes
	$(PYTHON) -m ruff format src tests benchmarks
	$(PYTHON) -m ruff check --fix src tests benchmarks

sweep: ## Optuna sweep (default: GPT); ARGS="hydra.sweeper.n_trials=5"
	$(PYTHON) -m zoo.train -m hparams_search=gpt_optuna $(ARGS)

bench: ## Benchmarks -> docs/benchmarks.md (real-data parts need ../shared/data; GPU parts need CUDA)
	$(PYTHON) -m benchmarks.gpt $(ARGS)
	$(PYTHON) -m benchmarks.events
	$(PYTHON) -m benchmarks.tft
	$(PYTHON) -m benchmarks.report

bench-gpt-scale: ## GPT at scale on CPU: streaming prep of a generated 1 GB corpus (~50 min), step time vs nanoGPT
	$(PYTHON) -m benchmarks.gpt_prep --size-mb 1024 --flat
	$(PYTHON) -m benchmarks.gpt_speed --steps 300 --rounds 3
	$(PYTHON) -m benchmarks.report

bench-events-full: ## Event predictor: throughput, entropy floor, Helpdesk/BPI12 W accuracy + walk-forward, ceiling, drift (long)
	$(PYTHON) -m benchmarks.events --parts throughput,floor,accuracy,ceiling,drift --backtest 8
	$(PYTHON) -m benchmarks.report

bench-tft-full: ## TFT: Alibaba MASE and ETTh1 MSE@96 (long; meant for a GPU machine)
	$(PYTHON) -m benchmarks.tft --parts quality --recipe tft_alibaba --key alibaba $(ARGS)
	$(PYTHON) -m benchmarks.tft --parts quality --recipe tft_etth1 --key etth1 $(ARGS)
	$(PYTHON) -m benchmarks.report

tensorboard: ## TensorBoard over all runs in logs/
	$(PYTHON) -m tensorboard.main --logdir logs --bind_all

notebooks: ## Execute every notebook (as CI does)
	$(PYTHON) -m pytest --nbmake notebooks -q

clean: ## Remove caches, logs and build files (keeps data/)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
