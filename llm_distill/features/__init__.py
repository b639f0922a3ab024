"""Feature distillation: which student layer learns from which teacher layer (``layer_map``: maps and the
projections between widths) and the hidden-state / attention terms computed through them (``distiller``)."""

from .distiller import FeatureDistiller, StudentWithFeatures, feature_distiller_for, prepare_for_feature_distillation
from .layer_map import Projections, resolve_layer_map, uniform_teacher_layer

__all__ = [
    "FeatureDistiller",
    "Projections",
    "StudentWithFeatures",
    "feature_distiller_for",
    "prepare_for_feature_distillation",
    "resolve_layer_map",
    "uniform_teacher_layer",
]
