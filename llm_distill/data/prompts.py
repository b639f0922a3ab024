"""Prompt / completion records for generation: on-policy distillation, sequence-level KD and their evaluation.

A row is a prompt and, optionally, a completion. The prompt is rendered exactly as generation will see it (with the
tokenizer's chat template and its generation prompt when there is one), and the completion is the tokens that
follow it up to and including EOS, which is what a model that stops at EOS produces. So a dataset completion, a
teacher's completion and the student's own sample are laid out the same way, and only completion tokens count:

    input_ids    = prompt ids + completion ids (+ EOS)
    labels       = -100 on the prompt, the completion ids after it (``tasks.targets`` shifts them: logits at the
                   last prompt token predict the first completion token, ..., and the last counted one predicts EOS)
    prompt_length = number of prompt ids (what generation starts from)

Accepted records: ``{prompt_column, response_column}`` text; ``{messages_column}`` chat messages (a final assistant
message is the completion); ``{prompt_ids, completion_ids}`` token ids as ``llm-distill generate`` writes them
(used as they are, never re-tokenized). ``response_column: null`` reads prompts only.
"""

from __future__ import annotations

from datasets import Dataset

from .rows import token_ids

TOKEN_COLUMNS = ("prompt_ids", "completion_ids")
CHAT_TEMPLATE_CHOICES = ("auto", True, False)


def uses_chat_template(tokenizer, chat_template: str | bool = "auto") -> bool:
    """Whether prompts are rendered with the tokenizer's chat template (``auto``: when it has one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template is True and not has_template:
        raise ValueError("dataset.chat_template=true but the tokenizer has no chat template; use auto or false")
    return has_template if chat_template == "auto" else bool(chat_template)


def render_prompt(tokenizer, prompt: str | list[dict], chat_template: str | bool = "auto") -> list[int]:
    """Token ids of a prompt as generation starts from them.

    ``prompt`` is text (a single user turn when the chat template is used) or a list of chat messages (which needs
    the chat template). With the template, the generation prompt (e.g. ``<|im_start|>assistant\\n``) is appended.
    """
    chat = uses_chat_template(tokenizer, chat_template)
    if isinstance(prompt, str):
        if not chat:
            return token_ids(tokenizer(prompt))
        prompt = [{"role": "user", "content": prompt}]
    elif not chat:
        raise ValueError("chat messages need a chat template; the tokenizer has none or dataset.chat_template=false")
    return token_ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))


def completion_ids(tokenizer, completion: str) -> list[int]:
    """Completion text -> its ids followed by EOS (where a model that stops at EOS would end)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return token_ids(tokenizer(completion, add_special_tokens=False)) + eos


def prompt_completion_row(prompt: list[int], completion: list[int], max_length: int) -> dict:
    """The training row of one prompt and completion (see the module docstring); the completion is cut to fit."""
    if len(prompt) >= max_length:
        raise ValueError(
            f"a prompt has {len(prompt)} tokens, which leaves no room for a completion within dataset.max_length="
            f"{max_length}; raise dataset.max_length or shorten the prompts"
        )
    completion = list(completion)[: max_length - len(prompt)]
    return {
        "input_ids": list(prompt) + completion,
        "attention_mask": [1] * (len(prompt) + len(completion)),
        "labels": [-100] * len(prompt) + completion,
        "prompt_length": len(prompt),
    }


def split_messages(messages: list[dict]) -> tuple[list[dict], str | None]:
    """(prompt messages, completion text or None): a final assistant message is the completion."""
    if not messages:
        raise ValueError("a messages record is empty; it needs at least one user message")
    if messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


def tokenize_prompt_completion(ds: Dataset, tokenizer, cfg) -> Dataset:
    """Prompt / completion records -> rows with ``input_ids``, ``attention_mask``, ``labels``, ``prompt_length``."""
    pretokenized = all(c in ds.column_names for c in TOKEN_COLUMNS)  # (columns were checked when loaded)

    def encode(row):
        if pretokenized:
            return prompt_completion_row(row["prompt_ids"], row["completion_ids"], cfg.max_length)
        if cfg.messages_column:
            prompt, completion = split_messages(row[cfg.messages_column])
        else:
            prompt = row[cfg.prompt_column]
            completion = row[cfg.response_column] if cfg.response_column else None
        ids = render_prompt(tokenizer, prompt, cfg.chat_template)
        return prompt_completion_row(
            ids, completion_ids(tokenizer, completion) if completion is not None else [], cfg.max_length
        )

    return ds.map(encode, remove_columns=ds.column_names, desc="tokenize")
