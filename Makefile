# One command per job. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The prerequisite that builds .venv; `INSTALL=` (with PY=...) runs demo / test-browser in an existing environment.
INSTALL ?= install
# The CPU wheel of torch lies on this kind of machine's disk; an unpinned `torch` could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-slow test-browser lint demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,gguf,eval]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# report.html in a real browser (headless Chromium: apt-get install -y chromium); not part of `make test`.
# REPORT_SCREENSHOT=shot.png keeps the screenshot.
test-browser: $(INSTALL)
	$(PY) -m pytest -q -m browser tests/test_eval_browser.py

lint: install
	$(VENV)/bin/ruff check llm_distill tests eval benchmarks
	$(VENV)/bin/ruff format --check llm_distill tests eval benchmarks

# The main job end to end on a real pretrained teacher (MiniLM from PyPI) and SST-2 from ../shared/data:
# fine-tune the teacher, distil a TinyBERT-style student (both stages), train the same student on the same rows and
# steps without the teacher (2 epochs = the two stages' 1 + 1; `finetune` loads no teacher, the path given to it only
# replaces the recipe's default), and report all three with intervals and paired verdicts.
# Every artefact lands in $(DEMO); re-running resumes from the last checkpoint of the unfinished step.
# In an existing environment: make demo INSTALL= LLM_DISTILL="python -m llm_distill.cli"
DEMO ?= runs/demo
DEMO_ROWS ?= 4000
LLM_DISTILL ?= $(VENV)/bin/llm-distill
STUDENT_SHAPE := '{num_layers: 4, layer_init: [1, 3, 4, 6], init_from: assets/minilm-l6}'
demo: $(INSTALL)
	$(LLM_DISTILL) fetch-teacher minilm --output assets/minilm-l6
	$(LLM_DISTILL) finetune configs/minilm_sst2_teacher.yaml --output_dir $(DEMO)/teacher \
		--dataset.max_samples $(DEMO_ROWS)
	$(LLM_DISTILL) train configs/tinybert_sst2.yaml --output_dir $(DEMO)/student \
		--teacher_model_name_or_path $(DEMO)/teacher --dataset.max_samples $(DEMO_ROWS) \
		--student.from_teacher $(STUDENT_SHAPE)
	$(LLM_DISTILL) finetune configs/bert_sst2_logit_kd.yaml --output_dir $(DEMO)/no-teacher \
		--teacher_model_name_or_path $(DEMO)/teacher --dataset.max_samples $(DEMO_ROWS) --num_train_epochs 2 \
		--student.from_teacher $(STUDENT_SHAPE)
	$(LLM_DISTILL) report --teacher $(DEMO)/teacher \
		--student $(DEMO)/student/stage2-prediction $(DEMO)/no-teacher \
		--names teacher tinybert-4L no-teacher-4L --baseline no-teacher-4L --task-name "SST-2 validation" \
		--dataset ../shared/data/sst2/validation.jsonl --text-column sentence --output-dir $(DEMO)/report

clean:
	rm -rf $(VENV) .pytest_cache
