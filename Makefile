# fraudpipe developer entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
DATA   ?= fraudpipe-data

# Images and clusters (need docker, kind, helm and kubectl; see README "Deploy").
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE     ?= fraudpipe
DOCKER    ?= docker
CLUSTER   ?= fraudpipe
RELEASE   ?= fraudpipe
NAMESPACE ?= fraudpipe
VALUES    ?= values-kind.yaml
HELM_ARGS ?=

# $(call need,TOOL,where to get it): stop with a clear message when TOOL is not installed.
need = @command -v $(1) >/dev/null 2>&1 || { echo "error: '$(1)' is not installed (needed by 'make $@'): $(2)" >&2; exit 127; }

.PHONY: install lock audit run test test-fast test-gpu lint format bench soak clean \
	chart-test chart-schema chart-readme chart-package image image-gpu kind-up kind-down deploy \
	e2e e2e-clean

# Installs are the lock's (scripts/lock.py): every version pinned, every file hashed.
$(BIN)/fraudpipe: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $@

install: $(BIN)/fraudpipe ## create .venv and install fraudpipe with its dev tools, from the lock

LOCK_ARGS ?=
lock: install ## re-resolve uv.lock from pyproject.toml and export requirements/ (LOCK_ARGS=--upgrade: newest releases)
	$(PY) scripts/lock.py $(LOCK_ARGS)

AUDIT_ARGS ?=
audit: install ## the locked set against the OSV vulnerability database (report: test-artifacts/audit/)
	$(PY) scripts/audit.py $(AUDIT_ARGS)

run: install ## run the whole pipeline locally (Ctrl-C stops)
	$(BIN)/fraudpipe run --data-dir $(DATA)

lint: install ## ruff + mypy
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

test: install lint ## lint, then every test (unit, property, multi-process, whole pipeline)
	$(BIN)/pytest

test-fast: install ## skip the whole-pipeline tests
	$(BIN)/pytest -m "not slow"

test-gpu: install ## on a machine with an NVIDIA GPU: the gpu extra, then the GPU tests beside their CPU twins
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.txt -r requirements/gpu.txt
	$(BIN)/pytest -m gpu -rs
	$(BIN)/pytest -rs tests/test_devices.py tests/test_forest.py
	$(BIN)/fraudpipe bench --device gpu --stage preprocess --stage infer --stage train

BENCH_ARGS ?=
bench: install ## every stage's hot path beside its baseline (fraudpipe bench; docs/performance.md)
	$(BIN)/fraudpipe bench $(BENCH_ARGS)

SOAK_S ?= 60
MOUNTS ?= 1
soak: install ## the fault soak and its audit (tests/soak.py): make soak SOAK_S=1800 MOUNTS=2; needs root
	$(PY) -m tests.soak --seconds $(SOAK_S) --mounts $(MOUNTS)

chart-test: install ## the chart tests only (real Helm engine, strict Kubernetes schemas)
	$(BIN)/pytest tests/test_chart.py

e2e: install ## the chart in a real cluster: kind if installed, else one built here (hack/, root)
	PYTEST=$(abspath $(BIN))/pytest hack/e2e.sh

e2e-clean: ## remove what make e2e left here: its cache (GBs), last cluster, deb-src entry, packages
	hack/clean.sh

chart-schema: install ## regenerate the `config` part of chart/values.schema.json
	$(BIN)/python scripts/chart_schema.py

chart-readme: install ## regenerate chart/README.md from the `# --` comments of chart/values.yaml
	$(BIN)/python scripts/chart_readme.py

chart-package: install ## helm package: dist/fraudpipe-<version>.tgz (Helm's own engine)
	@mkdir -p dist
	$(BIN)/python -c "import helm_python; print(helm_python.package('chart', destination='dist'))"

image: ## build the CPU image $(IMAGE):$(VERSION)
	$(call need,$(DOCKER),https://docs.docker.com/get-docker/ (or DOCKER=podman))
	$(DOCKER) build --target cpu --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION) .

image-gpu: ## build the GPU image $(IMAGE):$(VERSION)-gpu (CUDA 12 runtime, cupy, OpenCL loader)
	$(call need,$(DOCKER),https://docs.docker.com/get-docker/ (or DOCKER=podman))
	$(DOCKER) build --target gpu --build-arg VERSION=$(VERSION) -t $(IMAGE):$(VERSION)-gpu .

kind-up: ## local cluster: create it, build and load the image, install values-kind.yaml
	$(call need,$(DOCKER),https://docs.docker.com/get-docker/)
	$(call need,kind,https://kind.sigs.k8s.io/docs/user/quick-start/#installation)
	$(call need,helm,https://helm.sh/docs/intro/install/)
	$(call need,kubectl,https://kubernetes.io/docs/tasks/tools/)
	kind get clusters 2>/dev/null | grep -qx '$(CLUSTER)' || kind create cluster --name $(CLUSTER) --wait 120s
	$(MAKE) --no-print-directory image
	kind load docker-image $(IMAGE):$(VERSION) --name $(CLUSTER)
	helm upgrade --install $(RELEASE) chart --kube-context kind-$(CLUSTER) \
		-n $(NAMESPACE) --create-namespace -f values-kind.yaml \
		--set image.repository=$(IMAGE) --set image.tag=$(VERSION) $(HELM_ARGS) --wait --timeout 10m
	@echo
	@echo "fraudpipe is running in kind cluster '$(CLUSTER)', namespace '$(NAMESPACE)'."
	@echo "  watch:  kubectl --context kind-$(CLUSTER) -n $(NAMESPACE) get pods"
	@echo "  prove:  helm test $(RELEASE) --kube-context kind-$(CLUSTER) -n $(NAMESPACE) --logs --timeout 7m"
	@echo "  queues: kubectl --context kind-$(CLUSTER) -n $(NAMESPACE) exec deploy/$(RELEASE)-infer -- fraudpipe queue stats --config /etc/fraudpipe/config.yaml"
	@echo "  dashboard: kubectl --context kind-$(CLUSTER) -n $(NAMESPACE) port-forward svc/$(RELEASE)-dashboard 8080:80"
	@echo "  token:  kubectl --context kind-$(CLUSTER) -n $(NAMESPACE) get secret $(RELEASE)-dashboard -o jsonpath='{.data.token}' | base64 -d"
	@echo "          then open http://127.0.0.1:8080/#token=<token>"
	@echo "  remove: make kind-down"

kind-down: ## delete the local kind cluster
	$(call need,kind,https://kind.sigs.k8s.io/docs/user/quick-start/#installation)
	kind delete cluster --name $(CLUSTER)

deploy: ## helm upgrade --install into the current kubectl context: make deploy VALUES=values-gpu.yaml
	$(call need,helm,https://helm.sh/docs/intro/install/)
	helm upgrade --install $(RELEASE) chart -n $(NAMESPACE) --create-namespace \
		-f $(VALUES) $(HELM_ARGS) --wait --timeout 10m

clean:
	rm -rf $(DATA) test-artifacts .pytest_cache .mypy_cache .ruff_cache
