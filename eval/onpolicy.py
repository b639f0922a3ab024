"""Thin entry point: `python eval/onpolicy.py --help`. The implementation is `llm_distill.evaluation.onpolicy`."""

import sys
from pathlib import Path

# Runnable from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_distill.evaluation.onpolicy import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
