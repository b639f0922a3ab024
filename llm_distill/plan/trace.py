"""Memory of the real model and loss code, run on fake tensors: shapes and dtypes only, no weights, no arithmetic.

Two meters, both keyed by tensor *storage* so that views and a tensor saved by several ops count once:

- ``SavedBytes``: what autograd keeps for backward (``saved_tensors_hooks``), attributed to the module that was
  running (e.g. each transformer block). Parameters are never counted (they are the weights item), and neither are
  casts of parameters made by autocast: those are reported apart (``weight_copies``).
- ``LiveBytes``: every storage an operator allocates, alive until its last reference dies; ``peak`` is the most
  that was alive at once since the meter started (a dispatch mode, so backward passes are seen too).

Fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``) carry a device, so operators pick the kernels they
would pick on it: e.g. CPU's fused scaled-dot-product attention saves a log-sum-exp, not the S x S probabilities.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary


def fake_mode() -> FakeTensorMode:
    return FakeTensorMode(allow_non_fake_inputs=False)


def to_fake(model: nn.Module) -> nn.Module:
    """Give a meta-device model fake CPU parameters and buffers of the same shapes and dtypes, ties kept.

    Call inside the fake mode. (Building under the fake mode directly works too, but fake parameters cannot be
    moved or cast afterwards, which e.g. peft does when it adds adapters.)
    """
    memo: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
                module._parameters[name] = memo[id(p)]
        for name, b in list(module._buffers.items()):
            if b is not None:
                memo.setdefault(id(b), torch.empty(b.shape, dtype=b.dtype))
                module._buffers[name] = memo[id(b)]
    return model


def storage_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


class LiveBytes(TorchDispatchMode):
    """Bytes of storages allocated under this mode that are still referenced; ``peak`` is their maximum."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _free(self, n: int) -> None:
        self.live -= n

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        if st in self._seen:
            return
        n = st.nbytes()
        self._seen[st] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, n)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views and in-place/out= results share an input's storage: only fresh outputs are allocations.
        if not any(r.alias_info is not None for r in func._schema.returns):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.track(t)
        return out


class _WeightCasts(TorchDispatchMode):
    """Remembers the storages of casts of parameters (autocast's weight copies)."""

    def __init__(self, params: WeakIdKeyDictionary):
        super().__init__()
        self.params = params
        self.casts = WeakIdKeyDictionary()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and args[0].untyped_storage() in self.params:
            self.casts[out.untyped_storage()] = True
        return out


class SavedBytes:
    """Bytes saved for backward while the context is open, per attributing module (``"rest"`` outside them).

    Args:
        params: the model's parameters (never counted).
        modules: ``{label: module}``; a tensor first saved while one of them runs is attributed to its label.
    """

    def __init__(self, params: Iterable[torch.Tensor], modules: dict[str, nn.Module] | None = None):
        self._params = WeakIdKeyDictionary()
        for p in params:
            self._params[p.untyped_storage()] = True
        self._casts = _WeightCasts(self._params)
        self._seen = WeakIdKeyDictionary()
        self._stack: list[str] = []
        self.by_label: dict[str, int] = defaultdict(int)
        self.weight_copies = 0
        self._handles = []
        for label, module in (modules or {}).items():
            self._handles.append(module.register_forward_pre_hook(lambda m, a, label=label: self._enter(label)))
            self._handles.append(module.register_forward_hook(lambda m, a, o: self._leave()))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _enter(self, label: str) -> None:
        self._stack.append(label)

    def _leave(self) -> None:  # a forward hook that returned a value would replace the module's output
        self._stack.pop()

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st in self._params or st in self._seen:
            return t
        self._seen[st] = True
        n = st.nbytes()
        if st in self._casts.casts:
            self.weight_copies += n  # autocast's cast of a weight, saved by the matmul
        else:
            self.by_label[self._stack[-1] if self._stack else "rest"] += n
        return t

    def add_outputs(self, tensors: Iterable) -> None:
        """Count tensors the caller keeps alive after the forward (e.g. returned hidden states) as ``rest``."""
        for t in tree_leaves(list(tensors)):
            if isinstance(t, torch.Tensor) and t.untyped_storage() not in self._seen:
                if t.untyped_storage() in self._params:
                    continue
                self._seen[t.untyped_storage()] = True
                self.by_label["rest"] += storage_bytes(t)

    def __enter__(self) -> SavedBytes:
        self._casts.__enter__()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._casts.__exit__(*exc)
        for h in self._handles:
            h.remove()

    @property
    def total(self) -> int:
        return sum(self.by_label.values())
