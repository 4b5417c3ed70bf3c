# Two commands do all set-up (see README):  make test   and   make demo
# Both create .venv, install pinned dependencies and the Debian packages the project needs.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
KVENV ?= .venv-kserve
KSTAMP := $(KVENV)/.installed

.PHONY: deps system-deps test lint demo demo-train reproduce kserve clean help

help:
	@echo "make test   install everything, run ruff and the test suite"
	@echo "make demo   install everything, serve the shipped models live and compare with docs/results"
	@echo "make demo-train  the same demo on demo-sized models trained from scratch (about 7 min)"
	@echo "make reproduce   train what models/torch lacks, export, evaluate: rewrites models/onnx and docs/results"
	@echo "make deps   only install (virtual environment + system packages)"
	@echo "make kserve the KServe predictor's own environment (.venv-kserve; make test makes it too)"
	@echo "make clean  remove generated files (keeps .venv)"

system-deps:
	@bash scripts/system_deps.sh

$(STAMP): requirements.txt scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV)

deps: system-deps $(STAMP)

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt 2>&1 \
	  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
	$(PY) -c "import tritonclient.http" && touch $(TEST_STAMP)

$(KSTAMP): requirements-kserve.txt scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(KVENV) requirements-kserve.txt "kserve, onnxruntime, cv2"

kserve: $(KSTAMP)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint $(TEST_STAMP) $(KSTAMP)
	$(PY) -m pytest

demo: deps
	PYTHON=$(PY) bash scripts/demo.sh

demo-train: deps
	PYTHON=$(PY) DEMO_TRAIN=1 bash scripts/demo.sh

reproduce: deps
	PYTHON=$(PY) bash scripts/reproduce_accuracy.sh all

clean:
	rm -rf model_store/*.mar demo_runs .pytest_cache
