"""``python -m llm_distill.evaluation <verb> [options]``."""

import sys

from . import eval_main

sys.exit(eval_main())
