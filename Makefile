# Two commands for readers (see README):  make book   and   make test
# Everything else they need (virtualenv, pinned packages, vendored MathJax) is installed on demand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SCALE  ?= ci
PDF    ?= auto
# test processes (pytest-xdist): one per core by default; TEST_JOBS=0 runs the suite in this process
TEST_JOBS ?= auto
MATHJAX := book/_vendor/mathjax/tex-chtml.js

.PHONY: install vendor book pdf test test-fast chapter lab student grade bench bench-peers clean install-cluster replicate

$(STAMP): requirements.txt requirements-runtime.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

node_modules/mathjax/es5/tex-chtml.js: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

$(MATHJAX): node_modules/mathjax/es5/tex-chtml.js
	rm -rf book/_vendor/mathjax
	mkdir -p book/_vendor
	cp -r node_modules/mathjax/es5 book/_vendor/mathjax
	touch $@

install: $(STAMP)            ## virtualenv with the pinned packages
vendor: $(MATHJAX)           ## MathJax 3 for offline math

book: install vendor         ## execute every chapter at SCALE (default ci), render _build/html (+ the PDF if TeX is installed)
	$(PY) -m overparam build --scale $(SCALE) --pdf $(PDF)

pdf: install vendor          ## the book and its PDF (_build/latex/overparameterized.pdf); needs TeX (see README)
	$(PY) -m overparam build --scale $(SCALE) --pdf yes

test: install vendor         ## the whole test suite (chapters at smoke scale, the book in a browser), TEST_JOBS processes
	$(PY) -m pytest -n $(TEST_JOBS)

test-fast: install           ## unit tests only
	$(PY) -m pytest -n $(TEST_JOBS) -m "not slow and not browser"

chapter: install             ## one chapter: make chapter CH=01 SCALE=smoke
	$(PY) -m overparam run $(CH) --scale $(SCALE)

lab: install                 ## JupyterLab on 127.0.0.1: chapters/NN_topic.md open as notebooks; set scale in the parameters cell (LAB_PORT=8890 picks the port)
	$(PY) -m overparam lab $(if $(LAB_PORT),--port $(LAB_PORT),)

clean:
	rm -rf _build book/generated

student: install             ## student edition into student/ (STUDENT_SCALE=smoke to preset a scale)
	$(PY) -m overparam student --out student $(if $(STUDENT_SCALE),--scale $(STUDENT_SCALE),)

grade: install               ## grade a folder of submissions: make grade SUBMISSIONS=path/to/folder
	$(PY) -m overparam grade $(SUBMISSIONS) --json grades.json

bench: install               ## benchmark tables: empirical NTK, Hessian eigenvalues, training throughput, full-scale memory, chapter compile times
	$(PY) benchmarks/ntk_bench.py
	$(PY) benchmarks/hessian_bench.py
	$(PY) benchmarks/training_bench.py
	$(PY) benchmarks/full_memory.py
	$(PY) benchmarks/chapters_bench.py --scale smoke

bench-peers: install         ## side-by-side with neural-tangents in its own throw-away venv (_build/peers-venv)
	$(PY) benchmarks/peers_bench.py

CLUSTER_STAMP := $(VENV)/.installed-cluster
$(CLUSTER_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[cluster]" -c constraints.txt
	touch $@

install-cluster: $(CLUSTER_STAMP)   ## also Ray, for the sweep's --engine ray (optional extra `cluster`)

SEEDS ?= 1
JOBS  ?= 1
replicate: install           ## replication of every chapter at SCALE and SEEDS (default 1), JOBS runs at a time: make replicate SEEDS=1,2 JOBS=2
	$(PY) -m overparam sweep --scale $(SCALE) --seeds $(SEEDS) --jobs $(JOBS)
