# zoo — `make help` lists the targets.
PYTHON ?= python
TORCH_VERSION ?= 2.13.0
ARGS ?=
# Most of the suite's time is single-threaded (subprocess start-up, data preparation): two workers keep
# both cores of a 2-core machine busy. `-p no:benchmark`: pytest-benchmark, where a machine has it, warns
# that xdist disables it; the zoo's benchmarks are `make bench`, not pytest fixtures.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install train test test-fast lint format sweep bench bench-gpt-scale bench-events-full bench-tft-full tensorboard notebooks clean docker-wheels docker docker-cuda test-docker bench-docker test-prometheus bench-prometheus

# Container image (docs/docker.md). The CPU image: a slim Python base, torch from the CPU index; the CUDA
# image: DOCKER_TORCH_INDEX empty (PyPI's torch is the CUDA build) on an NVIDIA base.
DOCKER ?= docker
DOCKER_IMAGE ?= zoo:cpu
DOCKER_BASE ?= python:3.11-slim-bookworm
DOCKER_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
DOCKER_CUDA_BASE ?= nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
DOCKER_EXTRAS ?= onnx
# The base image's Python, for the torch wheel fetched into the wheelhouse.
DOCKER_PYTHON_VERSION ?= 3.11
DOCKER_WHEELS := build/docker/wheels
# CA certificates pip trusts during the build (a TLS-intercepting proxy's CA, as the host's pip trusts it);
# used in the build stage only, not kept in the image. Empty: the base image's own.
DOCKER_CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)

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
	$(PYTHON) -m benchmarks.serve
	$(PYTHON) -m benchmarks.quant
	$(PYTHON) -m benchmarks.report

bench-prometheus: ## Prometheus: pull vs a plain requests loop, 500-series monitor round, whole fleet run (~10 min; installs the parts like test-prometheus)
	bash .ci/prometheus-parts.sh
	$(PYTHON) -m benchmarks.prom
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

docker-wheels: ## The image's wheelhouse: the zoo wheel, and (CPU image) the torch wheel the host's pip resolves
	rm -rf $(DOCKER_WHEELS) && mkdir -p $(DOCKER_WHEELS)
	$(PYTHON) -m pip wheel --no-deps . -w $(DOCKER_WHEELS)
	$(if $(DOCKER_TORCH_INDEX),$(PYTHON) -m pip download "torch==$(TORCH_VERSION)" --no-deps --only-binary=:all: \
		--python-version $(DOCKER_PYTHON_VERSION) --extra-index-url $(DOCKER_TORCH_INDEX) -d $(DOCKER_WHEELS))
	$(if $(DOCKER_CA_BUNDLE),cp $(DOCKER_CA_BUNDLE) $(DOCKER_WHEELS)/ca-bundle.crt)

docker: docker-wheels ## Build the image (zoo:cpu; DOCKER_BASE=, DOCKER_IMAGE=, DOCKER_EXTRAS=onnx,track ...)
	$(DOCKER) build --network host -f docker/Dockerfile -t $(DOCKER_IMAGE) \
		--build-arg BASE_IMAGE=$(DOCKER_BASE) --build-arg TORCH_VERSION=$(TORCH_VERSION) \
		--build-arg TORCH_INDEX=$(DOCKER_TORCH_INDEX) --build-arg ZOO_EXTRAS=$(DOCKER_EXTRAS) $(DOCKER_WHEELS)

docker-cuda: ## Build the CUDA image (zoo:cuda) on an NVIDIA CUDA runtime base (DOCKER_CUDA_BASE=)
	$(MAKE) docker DOCKER_IMAGE=zoo:cuda DOCKER_BASE=$(DOCKER_CUDA_BASE) DOCKER_TORCH_INDEX=

test-docker: ## The image for real: own dockerd, debootstrap base, build, train 5 steps, TensorBoard (root; 17 min on 2 busy cores)
	ZOO_DOCKER_TEST=1 PYTHON=$(PYTHON) $(PYTHON) -m pytest tests/docker -q -p no:cacheprovider -n 0 -p no:benchmark -s

bench-docker: ## Image size and build time -> docs/benchmarks/docker.md (same steps as test-docker)
	PYTHON=$(PYTHON) $(PYTHON) -m benchmarks.docker
	$(PYTHON) -m benchmarks.report

clean: ## Remove caches, logs and build files (keeps data/)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
