"""Thin entry point: `python eval/classification.py --help`; implemented in `llm_distill.evaluation.classification`."""

import sys
from pathlib import Path

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_distill.evaluation.classification import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
