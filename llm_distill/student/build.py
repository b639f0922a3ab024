"""Build a student from its teacher: shrink the config and copy chosen teacher layers.

Layer numbering follows ``layer_map``: teacher layer k (1..N) is the k-th transformer block, so ``layer_init=[2, 4]``
copies the blocks whose outputs are ``hidden_states[2]`` and ``hidden_states[4]``. The default ``"uniform"``
selection copies into student block i the teacher block i·N/M (rounded down), i.e. the teacher layer that the
uniform layer map makes student layer i imitate. For 12 -> 6 that is teacher blocks 2, 4, ..., 12 (every other
block, as DistilBERT initialised its student; Sanh et al. 2019); ``"first"`` copies blocks 1..M.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..features.layer_map import uniform_teacher_layer

logger = logging.getLogger(__name__)

LAYER_INIT_SPECS = ("uniform", "first")
# Config entries holding one value per layer (e.g. Qwen2 "full_attention"/"sliding_attention", SmolLM3 no-RoPE
# flags): they must follow the copied layers, and transformers refuses a config whose lists do not have M entries.
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")


def select_teacher_layers(layer_init: str | Sequence[int], num_layers: int, num_teacher_layers: int) -> list[int]:
    """1-based teacher blocks to copy into student blocks 1..M (see the module docstring)."""
    m, n = num_layers, num_teacher_layers
    if isinstance(layer_init, str):
        if layer_init not in LAYER_INIT_SPECS:
            raise ValueError(
                f"layer_init={layer_init!r} is not known; expected 'uniform', 'first', a list of {m} teacher layers "
                "(1-based) or None for random init"
            )
        if m > n:
            raise ValueError(
                f"layer_init={layer_init!r}: the student has more layers ({m}) than the teacher ({n}); pass an "
                "explicit list of teacher layers (repeats allowed) or None"
            )
        if layer_init == "first":
            return list(range(1, m + 1))
        return [uniform_teacher_layer(i, m, n) for i in range(1, m + 1)]
    layers = list(layer_init)
    if len(layers) != m or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= n for v in layers):
        raise ValueError(
            f"layer_init={layers!r} must list {m} teacher layers (one per student layer), each an int in 1..{n}"
        )
    return layers


def _resolve(config, name: str):
    """Real attribute name of ``name`` in ``config`` (DistilBERT-style configs alias e.g. hidden_size -> dim)."""
    return getattr(config, "attribute_map", {}).get(name, name)


def shrink_config(
    teacher_config,
    *,
    num_layers: int,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
    teacher_layers: Sequence[int] | None = None,
):
    """A copy of ``teacher_config`` with a smaller student's sizes; what is not given stays as the teacher's.

    Works for BERT-family configs (``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``,
    ``intermediate_size``) and Llama-family ones (Llama, Qwen2, Mistral, ...: also ``num_key_value_heads`` and
    ``head_dim``). ``head_dim`` follows the new ``hidden_size / num_attention_heads`` when the teacher's was
    derived that way, and is kept when it was set independently (Qwen3-style) unless given.

    Args:
        teacher_layers: 1-based teacher blocks the student blocks come from, used to pick per-layer entries such as
            ``layer_types``; default: the uniform selection.
    Returns:
        a new config of the teacher config's class, validated by that class.
    Raises:
        ValueError: naming the field, the value and what is accepted (non-positive sizes, hidden not divisible by
        heads, heads not divisible by key/value heads, an option this config family does not have).
    """
    cfg_cls = type(teacher_config)
    n = int(teacher_config.num_hidden_layers)
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers={num_layers!r} must be a positive int")
    given = {
        "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads,
        "intermediate_size": intermediate_size,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": head_dim,
    }
    for name, value in given.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
        if not hasattr(teacher_config, _resolve(teacher_config, name)):
            raise ValueError(
                f"{name}={value} was given but {cfg_cls.__name__} has no {name} (BERT-family configs have no "
                "num_key_value_heads/head_dim; Llama-family configs have all five sizes)"
            )

    hidden = hidden_size or int(teacher_config.hidden_size)
    heads = num_attention_heads or int(teacher_config.num_attention_heads)
    updates: dict = {"num_hidden_layers": num_layers, "hidden_size": hidden, "num_attention_heads": heads}
    if intermediate_size is not None:
        updates["intermediate_size"] = intermediate_size

    teacher_head_dim = getattr(teacher_config, "head_dim", None)
    teacher_derived = teacher_config.hidden_size // teacher_config.num_attention_heads
    # An explicit head_dim (given, or set independently in the teacher) frees hidden_size from the head split.
    explicit = head_dim is not None or (teacher_head_dim is not None and teacher_head_dim != teacher_derived)
    if not explicit:
        # BERT always splits the hidden size over the heads; so does Llama when head_dim is derived.
        if hidden % heads != 0:
            raise ValueError(
                f"hidden_size={hidden} is not divisible by num_attention_heads={heads}; choose heads that divide the "
                "hidden size (e.g. TinyBERT-4 uses hidden_size=312 with 12 heads of 26)"
            )
        if teacher_head_dim is not None:
            head_dim = hidden // heads
    elif head_dim is None:
        head_dim = int(teacher_head_dim)
    if head_dim is not None:
        updates["head_dim"] = head_dim

    if hasattr(teacher_config, "num_key_value_heads"):
        teacher_kv = teacher_config.num_key_value_heads or teacher_config.num_attention_heads
        # A multi-head teacher (kv == heads) gives a multi-head student; a GQA teacher keeps its kv count.
        kv = num_key_value_heads or (heads if teacher_kv == teacher_config.num_attention_heads else teacher_kv)
        if kv > heads or heads % kv != 0:
            raise ValueError(
                f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}; grouped-query attention "
                "needs each key/value head to serve the same number of query heads (pass num_key_value_heads)"
            )
        updates["num_key_value_heads"] = kv

    selection = list(teacher_layers) if teacher_layers is not None else None
    if selection is None:
        selection = [uniform_teacher_layer(i, num_layers, n) or 1 for i in range(1, num_layers + 1)]
    data = teacher_config.to_dict()
    for key in PER_LAYER_KEYS:
        values = data.get(key)
        if isinstance(values, list) and len(values) == n:
            updates[key] = [values[t - 1] for t in selection]
    for name, value in updates.items():
        data[_resolve(teacher_config, name)] = value
    data["_name_or_path"] = ""
    return cfg_cls.from_dict(data)


def _layer_list_name(model: nn.Module, num_layers: int) -> str:
    """Dotted name of the ModuleList that holds the transformer blocks (``bert.encoder.layer``, ``model.layers``)."""
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == num_layers
            and name.split(".")[-1]
            in (
                "layer",
                "layers",
                "h",
                "block",
            )
        ):
            return name
    raise ValueError(f"{type(model).__name__} has no ModuleList of {num_layers} blocks named layer/layers/h/block")


def _strip_base(key: str, model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "") + "."
    return key[len(prefix) :] if prefix != "." and key.startswith(prefix) else key


def _copy_weights(student: nn.Module, teacher: nn.Module, selection: list[int]) -> list[str]:
    """Copy every student tensor whose teacher counterpart has the same shape; returns the keys left as initialised.

    Keys are compared without the base-model prefix, so a ``BertForSequenceClassification`` student can start from
    a ``BertModel`` or ``BertForMaskedLM`` teacher. Copying in place keeps tied parameters tied.
    """
    s_list = _strip_base(_layer_list_name(student, len(selection)), student) + "."
    t_list = _strip_base(_layer_list_name(teacher, teacher.config.num_hidden_layers), teacher) + "."
    teacher_sd = {_strip_base(k, teacher): v for k, v in teacher.state_dict().items()}
    skipped = []
    with torch.no_grad():
        for key, tensor in student.state_dict().items():
            bare = _strip_base(key, student)
            if bare.startswith(s_list):
                index, rest = bare[len(s_list) :].split(".", 1)
                bare = f"{t_list}{selection[int(index)] - 1}.{rest}"
            source = teacher_sd.get(bare)
            if source is None or source.shape != tensor.shape:
                skipped.append(key)
                continue
            tensor.copy_(source.to(tensor.dtype))
    return skipped


def apply_config_overrides(config, overrides: dict | None, *, field: str = "student.config_overrides"):
    """Set ``overrides`` on ``config``; a key the config class does not have is refused, not silently added."""
    for key, value in (overrides or {}).items():
        if not hasattr(config, key):
            raise ValueError(
                f"{field}.{key}={value!r} is not accepted; {type(config).__name__} has no setting {key!r}"
            )
        setattr(config, key, value)
    return config


def student_config(
    teacher_config,
    *,
    num_layers: int,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
    layer_init: str | Sequence[int] | None = "uniform",
    config_overrides: dict | None = None,
):
    """The student's config and the teacher blocks it copies: ``(config, selection)``, from configs alone (no
    weights), so that a run can be checked before any model is loaded."""
    n = int(teacher_config.num_hidden_layers)
    selection = select_teacher_layers(layer_init if layer_init is not None else "uniform", num_layers, n)
    config = shrink_config(
        teacher_config,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        teacher_layers=selection,
    )
    return apply_config_overrides(config, config_overrides), selection


def student_from_teacher(
    teacher_model,
    *,
    num_layers: int,
    hidden_size: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
    num_key_value_heads: int | None = None,
    head_dim: int | None = None,
    layer_init: str | Sequence[int] | None = "uniform",
    config_overrides: dict | None = None,
    model_class: type | None = None,
    attn_implementation: str | None = None,
):
    """A smaller model of the teacher's class (or ``model_class``), initialised from chosen teacher layers.

    When every width matches the teacher's (hidden, FFN, heads, key/value heads, head_dim), the student gets the
    teacher's embeddings, the blocks chosen by ``layer_init``, the final norm and the heads (lm_head, classifier,
    pooler, MLM head): every tensor whose teacher counterpart has the same shape. When a width differs no teacher
    matrix fits, so the student keeps its random init (copying slices of wider matrices is possible but not done;
    the feature losses and projections are what transfer knowledge then). ``layer_init=None`` always means random.

    The copied teacher layers are logged and stored on ``student.copied_teacher_layers`` (1-based, ``[]`` when
    nothing was copied); the trainer can write them into the distillation metadata. Tied input/output embeddings
    stay tied (the tensors are copied in place). The student is fp32, whatever the teacher's dtype.
    ``config_overrides`` sets further config entries (e.g. dropout) on the shrunk config.
    """
    teacher_config = teacher_model.config
    config, selection = student_config(
        teacher_config,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        layer_init=layer_init,
        config_overrides=config_overrides,
    )
    impl = attn_implementation or getattr(teacher_config, "_attn_implementation", None)
    if impl is not None:
        config._attn_implementation = impl
    model_class = model_class or type(teacher_model)
    config.architectures = [model_class.__name__]
    student = model_class(config)
    student.float()

    size_keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
    differ = {
        k: (getattr(config, k, None), getattr(teacher_config, k, None))
        for k in size_keys
        if getattr(config, k, None) != getattr(teacher_config, k, None)
    }
    student.copied_teacher_layers = []
    if layer_init is None:
        logger.info("student initialised randomly (layer_init=None)")
    elif differ:
        logger.warning(
            "student widths differ from the teacher's (%s): nothing copied, the student keeps its random init",
            ", ".join(f"{k} {s} vs {t}" for k, (s, t) in differ.items()),
        )
    else:
        skipped = _copy_weights(student, teacher_model, selection)
        student.copied_teacher_layers = selection
        logger.info("student layers 1..%d initialised from teacher layers %s", num_layers, selection)
        if skipped:
            logger.info("left as initialised (no teacher tensor of that name and shape): %s", ", ".join(skipped))
    return student
