# Two commands do all set-up (see README):  make test   and   make demo
# Both create .venv, install pinned dependencies and the Debian packages the project needs.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
KVENV ?= .venv-kserve
KSTAMP := $(KVENV)/.installed

.PHONY: deps system-deps test lint demo demo-train reproduce kserve mutation clean help

help:
	@echo "make test   install everything, run ruff and the test suite"
	@echo "make demo   install everything, serve the shipped models live and compare with docs/results"
	@echo "make demo-train  the same demo on demo-sized models trained from scratch (about 7 min)"
	@echo "make reproduce   train what models/torch lacks, export, evaluate: rewrites models/onnx and docs/results"
	@echo "make deps   only install (virtual environment + system packages)"
	@echo "make kserve the KServe predictor's own environment (.venv-kserve; make test makes it too)"
	@echo "make mutation  mutmut over the serving code's rules and limits (slow; writes only mutants/)"
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

# -- mutation testing (docs/results/mutation.md): not part of `make test` or .ci/run -----------------
# mutmut (pinned in requirements-test.txt) copies the files named in setup.cfg's [mutmut] section to
# mutants/ (ignored) and runs each mutant against the fast unit tests listed there. Of
# edge_router/app.py only the limits are run: the functions these patterns name (mutmut writes a
# method as xǁClassǁmethod; ? stands for ǁ).
MUTATION_STAMP := $(VENV)/.installed-mutation
MUTATION_JOBS ?= $(shell nproc)
MUTATION_MUTANTS := 'core.exits.*' 'core.wire.*' 'core.imaging.*' 'handlers.runtime.*' \
  'edge_router.decisions.*' 'edge_router.options.*' 'edge_router.pacing.*' \
  'edge_router.app.x?Router?classify__mutmut_*' 'edge_router.app.x?Router?_read_body__mutmut_*' \
  'edge_router.app.x?Router?_shed__mutmut_*' 'edge_router.app.x?Router?_error__mutmut_*' \
  'edge_router.app.x?ReceiptDeadlineProtocol?*' 'edge_router.app.x_make_server__mutmut_*'

$(MUTATION_STAMP): $(TEST_STAMP) requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check "$$(grep -E '^mutmut==' requirements-test.txt)" 2>&1 \
	  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
	$(VENV)/bin/mutmut --version && touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP)
	rm -rf mutants && mkdir mutants && date +%s > mutants/started
	nice -n 19 $(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTATION_MUTANTS) \
	  > mutants/run.log 2>&1 || { tail -n 40 mutants/run.log; exit 1; }
	$(VENV)/bin/mutmut results --all true > mutants/results.txt
	@echo "mutmut $$($(VENV)/bin/mutmut --version | awk '{print $$NF}'), $$(date -u +%F)," \
	  "wall time $$(( $$(date +%s) - $$(cat mutants/started) )) s" > mutants/summary.txt
	@awk -F': ' '$$2 != "not checked" { f = substr($$1, 1, index($$1, ".x") - 1); sub(/^ +/, "", f); \
	    n[f]++; s[f, $$2]++; N++; S[$$2]++; if (!(f in seen)) { seen[f] = 1; order[++k] = f } } \
	  END { printf "%-24s %7s %7s %8s %7s %7s\n", "module", "mutants", "killed", "survived", "timeout", "other"; \
	    for (i = 1; i <= k; i++) { f = order[i]; o = n[f] - s[f, "killed"] - s[f, "survived"] - s[f, "timeout"]; \
	      printf "%-24s %7d %7d %8d %7d %7d\n", f, n[f], s[f, "killed"], s[f, "survived"], s[f, "timeout"], o } \
	    o = N - S["killed"] - S["survived"] - S["timeout"]; \
	    printf "%-24s %7d %7d %8d %7d %7d\n", "total", N, S["killed"], S["survived"], S["timeout"], o; \
	    p = N ? 100 * S["killed"] / N : 0; printf "killed: %.1f %% (the bar: 90 %%)\n", p; exit p < 90 }' \
	  mutants/results.txt >> mutants/summary.txt; rc=$$?; cat mutants/summary.txt; \
	  grep -E ': (survived|timeout|no tests|suspicious|segfault)$$' mutants/results.txt || true; exit $$rc

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
