"""llm_distill: knowledge distillation for Hugging Face models."""

__version__ = "0.1.0"
