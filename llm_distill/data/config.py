"""The ``dataset:`` block of a recipe: where the rows come from and how they are tokenized."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..checks import check_choice, reject_unknown_keys
from ..tasks import DATA_TASKS
from .prompts import CHAT_TEMPLATE_CHOICES


@dataclass
class DataConfig:
    """The ``dataset:`` block of a recipe."""

    path: str = field(metadata={"help": "Hub dataset id, or a local .json/.jsonl/.csv/.txt/.parquet file."})
    task: str = field(default="text", metadata={"help": f"One of {', '.join(DATA_TASKS)}."})
    name: str | None = field(default=None, metadata={"help": "Hub dataset config name (e.g. sst2 for glue)."})
    split: str = field(default="train", metadata={"help": "Training split."})
    eval_path: str | None = field(default=None, metadata={"help": "Separate local file / hub id for evaluation."})
    eval_split: str | None = field(default=None, metadata={"help": "Evaluation split (e.g. validation)."})
    eval_size: int = field(default=0, metadata={"help": "Hold out this many training rows when no eval split."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows (after load)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    max_length: int = field(default=512, metadata={"help": "Tokens per row (truncate, or pack to this length)."})
    packing: bool = field(default=True, metadata={"help": "text task: concatenate documents and cut into blocks."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text (text/classification)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second sentence for pair tasks."})
    label_column: str = field(default="label", metadata={"help": "Class label column (classification)."})
    prompt_column: str = field(default="prompt", metadata={"help": "instruction: prompt column (masked out)."})
    response_column: str | None = field(
        default="response",
        metadata={"help": "instruction / prompt_completion: response column (null: prompts only)."},
    )
    messages_column: str | None = field(
        default=None, metadata={"help": "instruction: chat messages column; the last assistant turn is the target."}
    )
    chat_template: str | bool = field(
        default="auto",
        metadata={"help": "prompt_completion: render prompts with the tokenizer's chat template (auto: if any)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for the held-out split."})

    def __post_init__(self):
        check_choice("dataset.task", self.task, DATA_TASKS)
        check_choice("dataset.chat_template", self.chat_template, CHAT_TEMPLATE_CHOICES)
        if self.max_length < 2:
            raise ValueError(f"dataset.max_length={self.max_length} is too small; use at least 2 tokens")

    @classmethod
    def from_dict(cls, values: dict) -> DataConfig:
        reject_unknown_keys(values, [f.name for f in fields(cls)], where="dataset")
        return cls(**values)
