"""Reuse lm-eval's own WikiText detokeniser and word/byte counting so the local task scores like `wikitext`."""

from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer


def detokenize(doc: dict) -> str:
    return wikitext_detokenizer(doc)


__all__ = ["detokenize", "process_results"]
