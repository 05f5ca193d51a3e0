"""Model compression mechanisms in plain torch: low-rank Linear layers, global magnitude
pruning made permanent, INT8 dynamic quantisation, and the record that rebuilds them.

Every function works on any ``nn.Module`` (a classifier, a fused model); none needs
Lightning. A compressed model is saved as ordinary weights plus a small ``compression``
record (:func:`compression_record`); :func:`apply_compression` turns a freshly built model
into the same structure before those weights are loaded.

Shape legend: o = out features, i = in features, r = rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

QUANTISABLE = (nn.Linear, nn.GRU, nn.LSTM)


class LowRankLinear(nn.Module):
    """``Linear(i, o)`` as ``Linear(i, r, bias=False)`` then ``Linear(r, o)``: ``r * (i + o)``
    weights instead of ``i * o``.

    Args:
        in_features: Input width ``i``.
        out_features: Output width ``o``.
        rank: Inner width ``r``.
        bias: Whether the second layer has a bias.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        if not 0 < rank <= min(in_features, out_features):
            raise ValueError(
                f"rank must be in 1..{min(in_features, out_features)} for a "
                f"{in_features}->{out_features} layer, got {rank}"
            )
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """The best rank-``rank`` approximation of ``linear`` (truncated SVD)."""
        w = linear.weight.detach().double()  # (o, i)
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # (o, k), (k,), (k, i)
        root = s[:rank].sqrt()
        layer = cls(linear.in_features, linear.out_features, rank, linear.bias is not None)
        dtype = linear.weight.dtype
        with torch.no_grad():
            layer.first.weight.copy_((root[:, None] * vh[:rank]).to(dtype))  # (r, i)
            layer.second.weight.copy_((u[:, :rank] * root[None]).to(dtype))  # (o, r)
            if linear.bias is not None:
                layer.second.bias.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    @property
    def weight(self) -> Tensor:
        """The product ``(o, i)``, for code that reads a Linear's weight directly (such code
        gets the right numbers but none of the savings)."""
        return self.second.weight @ self.first.weight

    @property
    def bias(self) -> Tensor | None:
        return self.second.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.rank}->{self.out_features}"


def choose_rank(weight: Tensor, rank: int | None = None, energy: float | None = None) -> int:
    """The rank to keep: ``rank`` as given, or the fewest singular values whose squares hold
    at least ``energy`` (0 < energy <= 1) of the total."""
    full = min(weight.shape)
    if (rank is None) == (energy is None):
        raise ValueError(f"give exactly one of rank and energy, got rank={rank}, energy={energy}")
    if rank is not None:
        return max(1, min(int(rank), full))
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    s2 = torch.linalg.svdvals(weight.detach().double()) ** 2
    share = s2.cumsum(0) / s2.sum().clamp_min(1e-30)
    return min(full, int((share < energy - 1e-12).sum().item()) + 1)


def _plain_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Linear layers that can be swapped (exact type: attention's ``out_proj`` is used by
    weight inside ``nn.MultiheadAttention``, so it stays)."""
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where the submodule ``name`` of ``model`` is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
    _no_fused_kernel(parent)


def _no_fused_kernel(module: nn.Module) -> None:
    """Keep a Transformer layer on its plain path: the fused inference kernel reads
    ``linear1.weight`` and friends as dense tensors, which swapped layers do not have.
    (``activation_relu_or_gelu`` only selects that kernel; ``activation`` stays in use.)"""
    if isinstance(module, nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
        module.activation_relu_or_gelu = 0


def called_modules(model: nn.Module, run: Callable[[], Any]) -> set[str]:
    """Names of the submodules of ``model`` whose ``forward`` runs during ``run()``.

    A layer that is not called, such as a Linear whose weight another module slices and
    uses itself, cannot be swapped for a factorised or quantised module."""
    called: set[str] = set()
    handles = [
        module.register_forward_pre_hook(lambda *_, n=name: called.add(n))
        for name, module in model.named_modules()
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return called


def factorise_linears(
    model: nn.Module,
    *,
    rank: int | None = None,
    energy: float | None = None,
    only_if_smaller: bool = True,
    only: set[str] | None = None,
) -> dict[str, int]:
    """Replace Linear layers of ``model`` in place by :class:`LowRankLinear` (truncated SVD).

    Args:
        rank: Keep this many singular values per layer (capped at the layer's full rank).
        energy: Or keep the fewest singular values holding this share of the squared total.
        only_if_smaller: Leave a layer alone when the factorised form has no fewer weights.
        only: Factorise only layers of these names (e.g. :func:`called_modules`).

    Returns:
        ``{layer name: rank}`` of the layers replaced (see :func:`apply_compression`).
    """
    ranks = {}
    for name, linear in _plain_linears(model):
        if only is not None and name not in only:
            continue
        r = choose_rank(linear.weight, rank, energy)
        if (
            only_if_smaller
            and r * (linear.in_features + linear.out_features) >= linear.weight.numel()
        ):
            continue
        replace_module(model, name, LowRankLinear.from_linear(linear, r))
        ranks[name] = r
    return ranks


def prunable_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, parameter name)`` of the weight matrices and kernels pruning acts on:
    Linear and convolution weights, attention input projections, RNN weights (not biases,
    norms or embeddings)."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            found.append((module, "weight"))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            found.append((module, "in_proj_weight"))
        elif isinstance(module, nn.RNNBase):
            found += [(module, n) for n, _ in module.named_parameters() if n.startswith("weight_")]
    return found


def prune_global_magnitude(model: nn.Module, amount: float, *, permanent: bool = True) -> float:
    """Zero the ``amount`` (0..1) of smallest-magnitude weights across all
    :func:`prunable_parameters` at once (``torch.nn.utils.prune.global_unstructured``).

    With ``permanent`` the masks are folded into the weights (no ``weight_orig`` or
    ``weight_mask`` left); otherwise they stay, so fine-tuning keeps pruned weights at zero
    (call :func:`make_pruning_permanent` afterwards).

    Returns:
        The share of those weights that are zero afterwards.
    """
    if not 0 <= amount < 1:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    if permanent:
        make_pruning_permanent(model)
    return sparsity(model)


def refresh_pruned_weights(model: nn.Module) -> None:
    """Recompute every masked weight (``weight_orig * weight_mask``) now.

    Pruning recomputes it before a module's own ``forward``; a layer whose weight another
    module reads directly (its ``forward`` never runs) needs this before each training step,
    or it keeps a stale weight from the previous step's graph."""
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))


def make_pruning_permanent(model: nn.Module) -> None:
    """Fold every pruning mask of ``model`` into its weight (``prune.remove``)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()  # RNN weights were re-set as plain attributes


def sparsity(model: nn.Module) -> float:
    """Share of zeros among the :func:`prunable_parameters` of ``model``."""
    zeros = total = 0
    for module, name in prunable_parameters(model):
        weight = getattr(module, name)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / max(total, 1)


def quantisable(model: nn.Module, only: set[str] | None = None) -> list[str]:
    """Names of the Linear, GRU and LSTM layers of ``model`` (within ``only`` if given)."""
    return [
        n
        for n, m in model.named_modules()
        if type(m) in QUANTISABLE and (only is None or n in only)
    ]


def quantise_dynamic(model: nn.Module, names: Iterable[str] | None = None) -> nn.Module:
    """An INT8 copy of ``model`` (CPU): the weights of the layers ``names`` (default: every
    :func:`quantisable` one) stored as int8, activations quantised on the fly
    (``torch.ao.quantization.quantize_dynamic``). Deterministic: the same float weights give
    the same quantised model."""
    from torch.ao.quantization import default_dynamic_qconfig

    names = quantisable(model) if names is None else list(names)
    quantised = torch.ao.quantization.quantize_dynamic(
        model.cpu().eval(),
        {n: default_dynamic_qconfig for n in names},
        dtype=torch.qint8,
        inplace=False,
    )
    for module in quantised.modules():
        _no_fused_kernel(module)
    return quantised


def compression_record(
    factorised: dict[str, int] | None = None, quantised: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """What :func:`apply_compression` needs to rebuild a compressed model's structure."""
    record: dict[str, Any] = {"factorised": dict(factorised or {}), "quantised": quantised or []}
    record.update(extra)
    return record


def apply_factorisation(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Give ``model`` the structure of one factorised with ``ranks`` (weights arbitrary)."""
    for name, r in ranks.items():
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"cannot factorise {name!r}: it is a {type(linear).__name__}")
        replace_module(
            model,
            name,
            LowRankLinear(linear.in_features, linear.out_features, int(r), linear.bias is not None),
        )
    return model


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model``; for a quantised model, those of its packed int8 layers too."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if not type(module).__module__.startswith("torch.ao.nn.quantized"):
            continue
        if hasattr(module, "_all_weight_values"):  # a dynamic quantised RNN
            for group in module._weight_bias().values():
                count += sum(t.numel() for t in group.values())
        elif callable(getattr(module, "weight", None)):  # a dynamic quantised Linear
            bias = module.bias()
            count += module.weight().numel() + (0 if bias is None else bias.numel())
    return count


def apply_compression(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Give a freshly built ``model`` the structure a :func:`compression_record` describes,
    ready for the compressed weights (quantisation is applied after they load): layers made
    narrower by structured pruning first, then factorised ones."""
    from mmctx.nn.structured import apply_structured

    apply_structured(model, record.get("structured") or {})
    return apply_factorisation(model, record.get("factorised") or {})


def _is_quantised(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.ao.nn.quantized.dynamic") and hasattr(
        module, "_weight_bias"
    )  # a layer, not one of its packed-parameter holders


def _weights_and_biases(module: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A dynamic quantised Linear's or RNN's int8 weights and float biases, by name."""
    if hasattr(module, "_all_weight_values"):  # an RNN
        found = module._weight_bias()
        return dict(found["weight"]), dict(found["bias"])
    weight, bias = module._weight_bias()
    return {"weight": weight}, ({} if bias is None else {"bias": bias})


def int8_state(model: nn.Module) -> dict[str, Tensor]:
    """Plain tensors (for safetensors) of a :func:`quantise_dynamic` model: each quantised
    layer's weights as ``<layer>.<weight>.int8`` plus ``.scale`` and ``.zero_point``, its
    float biases, and every other parameter and buffer as it is."""
    state: dict[str, Tensor] = {}
    layers = [n for n, m in model.named_modules() if _is_quantised(m)]
    for name in layers:
        weights, biases = _weights_and_biases(model.get_submodule(name))
        for key, q in weights.items():
            state[f"{name}.{key}.int8"] = q.int_repr()
            state[f"{name}.{key}.scale"] = torch.tensor(q.q_scale(), dtype=torch.float64)
            state[f"{name}.{key}.zero_point"] = torch.tensor(q.q_zero_point())
        for key, b in biases.items():
            state[f"{name}.{key}"] = b.detach()
    for key, value in model.state_dict().items():
        inside = any(key.startswith(f"{n}.") for n in layers)
        if isinstance(value, Tensor) and not value.is_quantized and not inside:
            state[key] = value
    return state


def load_int8_state(model: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """Load what :func:`int8_state` wrote into a model quantised the same way (in place)."""
    state = dict(state)
    layers = [n for n, m in model.named_modules() if _is_quantised(m)]
    for name in layers:
        module = model.get_submodule(name)
        weights, biases = _weights_and_biases(module)
        values: dict[str, Tensor] = {}
        for key in weights:
            ints = state.pop(f"{name}.{key}.int8")
            scale = float(state.pop(f"{name}.{key}.scale"))
            zero = int(state.pop(f"{name}.{key}.zero_point"))
            values[key] = torch._make_per_tensor_quantized_tensor(ints, scale, zero)
        for key in biases:
            values[key] = state.pop(f"{name}.{key}")
        if hasattr(module, "_all_weight_values"):
            module.set_weight_bias(values)
        else:
            module.set_weight_bias(values["weight"], values.get("bias"))
    # The quantised layers' own entries (packed weights just set, scale, ...) go back as
    # they are, with the state dict's version metadata their loaders read.
    full = model.state_dict()
    mine = {k for k in full if any(k.startswith(f"{n}.") for n in layers)}
    missing, unexpected = sorted(set(full) - mine - set(state)), sorted(set(state) - set(full))
    if missing or unexpected:
        raise KeyError(
            f"the INT8 weights do not fit the model: missing {missing}, unexpected {unexpected}"
        )
    full.update(state)
    model.load_state_dict(full)
    return model
