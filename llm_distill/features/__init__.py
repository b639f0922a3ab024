"""Feature distillation: which student layer learns from which teacher layer (``layer_map``: maps and the
projections between widths), the hidden-state / attention terms computed through them (``distiller``), what is
captured from inside the models' attention (``capture``) and the relation-based terms (``relational``)."""

from .capture import AttentionCapture, AttentionShape
from .distiller import (
    FEATURE_TERMS,
    FeatureDistiller,
    StudentWithFeatures,
    feature_distiller_for,
    prepare_for_feature_distillation,
)
from .layer_map import Projections, resolve_layer_map, uniform_teacher_layer

__all__ = [
    "FEATURE_TERMS",
    "AttentionCapture",
    "AttentionShape",
    "FeatureDistiller",
    "Projections",
    "StudentWithFeatures",
    "feature_distiller_for",
    "prepare_for_feature_distillation",
    "resolve_layer_map",
    "uniform_teacher_layer",
]
