"""Fused, chunked lm_head + divergence: the vocabulary loss without the ``N x V`` student logits.

``autograd.py`` validates the inputs and wraps the pass in a ``torch.autograd.Function``; ``loop.py`` runs the chunks
(buffers, matmuls, combining KD and CE gradients); ``kernels.py`` holds the per-kind closed-form gradients.
"""

from .autograd import auto_chunk_size, fused_distillation_loss

__all__ = ["auto_chunk_size", "fused_distillation_loss"]
