"""The logit store: a teacher's sparse targets computed once and read back by sample id.

``format`` (layout and file operations), ``fingerprint`` (what the targets were computed from), ``writer``
(crash-safe, resumable, one writer per process), ``build`` (run a teacher over a dataset: ``cache_logits``),
``reader`` (``LogitStore``: look rows up by sample id).
"""

from .build import cache_logits
from .fingerprint import FingerprintMismatchError, expected_store_fingerprint, make_fingerprint, store_dataset
from .format import CorruptShardError, LogitStoreError, counted_mask
from .reader import LogitStore
from .writer import StoreWriter

__all__ = [
    "CorruptShardError",
    "FingerprintMismatchError",
    "LogitStore",
    "LogitStoreError",
    "StoreWriter",
    "cache_logits",
    "counted_mask",
    "expected_store_fingerprint",
    "make_fingerprint",
    "store_dataset",
]
