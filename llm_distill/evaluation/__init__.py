"""Evaluation verbs: one module each, every one with ``main(argv: list[str] | None) -> int``.

=================  ===========================================  ==========================
verb               module                                       what
=================  ===========================================  ==========================
classification     ``llm_distill.evaluation.classification``    accuracy, F1, MCC
perplexity         ``llm_distill.evaluation.perplexity``        strided PPL, bits per byte
harness            ``llm_distill.evaluation.harness``           lm-evaluation-harness
distill            ``llm_distill.evaluation.agreement``         KL, top-1/5 agreement, ECE
report             ``llm_distill.evaluation.compare``           teacher vs students report
onpolicy           ``llm_distill.evaluation.onpolicy``          teacher-scored samples
=================  ===========================================  ==========================

``eval_main(["perplexity", "--model", ...])`` dispatches on the first argument; modules are imported lazily so
that ``--help`` of one verb does not pay for the imports of another (lm-eval, matplotlib).
"""

from __future__ import annotations

import importlib
import sys

VERBS = {
    "classification": "classification",
    "perplexity": "perplexity",
    "harness": "harness",
    "distill": "agreement",
    "report": "compare",
    "onpolicy": "onpolicy",
}


def verb_main(verb: str):
    """The ``main(argv)`` function of ``verb``."""
    if verb not in VERBS:
        raise ValueError(f"unknown evaluation verb {verb!r}; expected one of {', '.join(VERBS)}")
    return importlib.import_module(f"{__name__}.{VERBS[verb]}").main


def eval_main(argv: list[str] | None = None) -> int:
    """``eval <verb> [options]``: run one evaluation verb."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: eval {{{','.join(VERBS)}}} [options]   (eval <verb> --help for the options of one verb)")
        return 0 if argv else 2
    return verb_main(argv[0])(argv[1:])


__all__ = ["VERBS", "eval_main", "verb_main"]
