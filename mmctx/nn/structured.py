"""Structured pruning: whole hidden units, attention heads, convolution channels and RNN
hidden units removed, and the layers around them rebuilt smaller.

Masks leave a model's shapes (and its time) as they were; here the pruned model is a
physically smaller ordinary model. Each *group* is a set of interchangeable units between
the layers that produce them and the layers that read them:

- ``mlp``: the hidden units of a Transformer MLP (a block's ``mlp`` of Linear, activation,
  dropout, Linear; ``linear1``/``linear2`` of ``nn.TransformerEncoderLayer``);
- ``heads``: the heads of an attention with a ``qkv`` and an ``out`` projection (the
  fusion backbone's);
- ``channels``: the output channels of each convolution in a plain conv/BN/ReLU/pool trunk
  (the image CNN's), read by the next convolution or by the encoder's ``proj``;
- ``rnn``: the hidden units of an encoder's GRU/LSTM (every layer and direction), read by
  the next layer and by the fusion's projection of that modality.

Units are ranked by the product of the norms of the weights that feed them and of those
that read them, and the ``amount`` share of the weakest of each group is removed. The
result is described by a record ``{module name: {size argument: value}}``
(:func:`prune_structured`); :func:`apply_structured` gives a freshly built model those
sizes, so saved weights load into it.

Shape legend: o = output units, i = input units, g = gates of an RNN, h = hidden units.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from mmctx.nn.compress import replace_module

KINDS = ("mlp", "heads", "channels", "rnn")
_ELEMENTWISE = (nn.GELU, nn.ReLU, nn.SiLU, nn.Dropout, nn.Identity)
_TRUNK_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Sequential)

Record = dict[str, dict[str, int]]


def _keep(scores: Tensor, amount: float) -> Tensor:
    """Indices (ascending) of the ``1 - amount`` share of highest ``scores`` (at least one)."""
    count = max(1, round(len(scores) * (1 - amount)))
    return scores.topk(count).indices.sort().values


def _rows_norm(weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Norm of each output unit's incoming weights (and bias): ``(o,)``."""
    w = weight.detach().flatten(1)
    if bias is not None:
        w = torch.cat([w, bias.detach()[:, None]], dim=1)
    return w.norm(dim=1)


def _resized(module: nn.Module, sizes: dict[str, int]) -> nn.Module:
    """A new ``module`` of the same kind with the given sizes (weights uninitialised), or
    ``module`` itself with its integer attributes set (an attention's ``heads``, ...)."""
    kind = type(module)
    if kind is nn.Linear:
        return nn.Linear(
            sizes.get("in_features", module.in_features),
            sizes.get("out_features", module.out_features),
            bias=module.bias is not None,
        )
    if kind is nn.Conv2d:
        if module.groups != 1:
            raise ValueError(f"cannot resize a grouped convolution ({module})")
        return nn.Conv2d(
            sizes.get("in_channels", module.in_channels),
            sizes.get("out_channels", module.out_channels),
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if kind is nn.BatchNorm2d:
        return nn.BatchNorm2d(
            sizes["num_features"],
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
    if kind in (nn.GRU, nn.LSTM):
        return kind(
            module.input_size,
            sizes["hidden_size"],
            module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=module.dropout,
            bidirectional=module.bidirectional,
        )
    for key, value in sizes.items():
        if not isinstance(getattr(module, key, None), int):
            raise ValueError(f"cannot resize a {kind.__name__} by {key}={value}")
        setattr(module, key, int(value))
    return module


def apply_structured(model: nn.Module, record: Record) -> nn.Module:
    """Give a freshly built ``model`` the sizes of a structurally pruned one (``record`` from
    :func:`prune_structured`; weights arbitrary until the pruned ones are loaded)."""
    for name, sizes in record.items():
        old = model.get_submodule(name)
        new = _resized(old, sizes)
        if new is not old:
            replace_module(model, name, new.train(old.training))
    return model


class _Pruner:
    """Replaces layers of ``model`` by narrower copies and records their new sizes."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.record: Record = {}

    def get(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def put(self, name: str, sizes: dict[str, int], tensors: dict[str, Tensor]) -> None:
        """Rebuild layer ``name`` with ``sizes`` and load ``tensors`` (its whole state)."""
        old = self.get(name)
        new = _resized(old, sizes).to(next(iter(tensors.values())).device)
        new.load_state_dict({k: v.detach().clone() for k, v in tensors.items()})
        new.train(old.training)
        replace_module(self.model, name, new)
        if isinstance(new, nn.RNNBase):
            new.flatten_parameters()
        self.record.setdefault(name, {}).update(sizes)

    def set_sizes(self, name: str, **sizes: int) -> None:
        _resized(self.get(name), sizes)
        self.record.setdefault(name, {}).update(sizes)

    def linear(self, name: str, rows: Tensor | None = None, cols: Tensor | None = None) -> None:
        """Keep output units ``rows`` and/or input units ``cols`` of Linear ``name``."""
        self._narrow(name, rows, cols, ("out_features", "in_features"))

    def conv(self, name: str, rows: Tensor | None = None, cols: Tensor | None = None) -> None:
        """Keep output channels ``rows`` and/or input channels ``cols`` of Conv2d ``name``."""
        self._narrow(name, rows, cols, ("out_channels", "in_channels"))

    def _narrow(self, name: str, rows: Tensor | None, cols: Tensor | None, sizes: tuple) -> None:
        """Keep rows (dim 0, and the bias) and/or columns (dim 1) of layer ``name``'s weight."""
        layer = self.get(name)
        weight, bias = layer.weight, layer.bias  # (o, i, ...), (o,)
        if rows is not None:
            weight = weight[rows]
            bias = None if bias is None else bias[rows]
        if cols is not None:
            weight = weight[:, cols]
        tensors = {"weight": weight} | ({} if bias is None else {"bias": bias})
        self.put(name, {sizes[0]: weight.shape[0], sizes[1]: weight.shape[1]}, tensors)

    def batch_norm(self, name: str, keep: Tensor) -> None:
        state = self.get(name).state_dict()
        tensors = {k: (v if v.dim() == 0 else v[keep]) for k, v in state.items()}
        self.put(name, {"num_features": len(keep)}, tensors)


def _mlp_pairs(model: nn.Module) -> Iterator[tuple[str, str]]:
    """``(producer, consumer)`` Linear names around the hidden units of each MLP."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.TransformerEncoderLayer):
            yield f"{prefix}linear1", f"{prefix}linear2"
        mlp = getattr(module, "mlp", None)
        if (
            isinstance(mlp, nn.Sequential)
            and len(mlp) >= 2
            and type(mlp[0]) is nn.Linear
            and type(mlp[-1]) is nn.Linear
            and all(isinstance(m, _ELEMENTWISE) for m in list(mlp)[1:-1])
        ):
            yield f"{prefix}mlp.0", f"{prefix}mlp.{len(mlp) - 1}"


def _prune_mlp(pruner: _Pruner, amount: float) -> None:
    for first, second in list(_mlp_pairs(pruner.model)):
        producer, consumer = pruner.get(first), pruner.get(second)
        scores = _rows_norm(producer.weight, producer.bias) * _rows_norm(consumer.weight.T)
        keep = _keep(scores, amount)
        pruner.linear(first, rows=keep)
        pruner.linear(second, cols=keep)


def _prune_heads(pruner: _Pruner, amount: float) -> None:
    for name, attn in list(pruner.model.named_modules()):
        qkv, out, heads = (getattr(attn, k, None) for k in ("qkv", "out", "heads"))
        if not (type(qkv) is nn.Linear and type(out) is nn.Linear and isinstance(heads, int)):
            continue
        width = out.in_features // heads  # e: one head's width
        value = qkv.weight[2 * out.in_features :].view(heads, width, -1)  # (h, e, d) of v
        reads = out.weight.T.reshape(heads, width, -1)  # (h, e, d) of the output projection
        keep = _keep(value.flatten(1).norm(dim=1) * reads.flatten(1).norm(dim=1), amount)
        units = (keep[:, None] * width + torch.arange(width)).flatten()  # kept head columns
        inner = out.in_features
        pruner.linear(f"{name}.qkv", rows=torch.cat([units, units + inner, units + 2 * inner]))
        pruner.linear(f"{name}.out", cols=units)
        pruner.set_sizes(name, heads=len(keep))


def _trunk_convs(encoder: nn.Module) -> list[tuple[str, str | None]]:
    """``(conv, its batch norm or None)`` names of a plain conv trunk, in order; ``[]`` when
    the trunk holds anything else (residual blocks keep their channels)."""
    trunk = getattr(encoder, "trunk", None)
    if trunk is None or type(getattr(encoder, "proj", None)) is not nn.Linear:
        return []
    layers = [(n, m) for n, m in trunk.named_modules() if n]
    if not all(type(m) in _TRUNK_LAYERS for _, m in layers):
        return []
    leaves = [(n, m) for n, m in layers if not isinstance(m, nn.Sequential)]
    found: list[tuple[str, str | None]] = []
    for i, (n, m) in enumerate(leaves):
        if isinstance(m, nn.Conv2d):
            follower = leaves[i + 1] if i + 1 < len(leaves) else None
            norm = follower[0] if follower and isinstance(follower[1], nn.BatchNorm2d) else None
            found.append((f"trunk.{n}", None if norm is None else f"trunk.{norm}"))
    return found


def _prune_channels(pruner: _Pruner, amount: float) -> None:
    trunks = [
        id(m.trunk)
        for _, m in pruner.model.named_modules(remove_duplicate=False)
        if isinstance(getattr(m, "trunk", None), nn.Module)
    ]
    for name, encoder in list(pruner.model.named_modules()):
        if trunks.count(id(getattr(encoder, "trunk", None))) > 1:
            continue  # a CNN shared by two encoders (image and video frames) stays whole
        convs = _trunk_convs(encoder)
        prefix = f"{name}." if name else ""
        for i, (conv, norm) in enumerate(convs):
            consumer = convs[i + 1][0] if i + 1 < len(convs) else "proj"
            reads = pruner.get(prefix + consumer).weight  # (o', c, ...) or (o', c)
            reads = reads.transpose(0, 1).flatten(1).norm(dim=1)  # (c,)
            if norm is None:
                layer = pruner.get(prefix + conv)
                strength = _rows_norm(layer.weight, layer.bias)
            else:
                bn = pruner.get(prefix + norm)
                strength = torch.stack([bn.weight.detach(), bn.bias.detach()]).norm(dim=0)
            keep = _keep(strength * reads, amount)
            pruner.conv(prefix + conv, rows=keep)
            if norm is not None:
                pruner.batch_norm(prefix + norm, keep)
            if consumer == "proj":
                pruner.linear(prefix + consumer, cols=keep)
            else:
                pruner.conv(prefix + consumer, cols=keep)


def _rnn_consumers(model: nn.Module) -> Iterator[tuple[str, str]]:
    """``(encoder, Linear reading its output)`` for each RNN encoder of a fused model."""
    for name, module in model.named_modules():
        encoders, fusion = getattr(module, "encoders", None), getattr(module, "fusion", None)
        if not isinstance(encoders, nn.ModuleDict) or fusion is None:
            continue
        prefix = f"{name}." if name else ""
        for modality, enc in encoders.items():
            rnn = getattr(enc, "rnn", None)
            if not isinstance(rnn, nn.GRU | nn.LSTM) or getattr(rnn, "proj_size", 0):
                continue
            reader = f"{prefix}fusion.proj.{modality}.0"
            if type(module.get_submodule(reader.removeprefix(prefix))) is nn.Linear:
                yield f"{prefix}encoders.{modality}", reader


def _rnn_keep(rnn: nn.RNNBase, reader: nn.Linear, amount: float) -> list[list[Tensor]]:
    """Hidden units kept per layer and direction, by incoming x outgoing weight norms."""
    h, dirs = rnn.hidden_size, 2 if rnn.bidirectional else 1
    suffixes = ["", "_reverse"][:dirs]
    keep: list[list[Tensor]] = []
    for layer in range(rnn.num_layers):
        if layer + 1 < rnn.num_layers:
            after = [getattr(rnn, f"weight_ih_l{layer + 1}{s}") for s in suffixes]
            outgoing = torch.cat(after).T  # (dirs * h, ...) rows: this layer's outputs
        else:
            outgoing = reader.weight.T  # (dirs * h, o)
        kept = []
        for d, s in enumerate(suffixes):
            w_ih, w_hh = (
                getattr(rnn, f"weight_ih_l{layer}{s}"),
                getattr(rnn, f"weight_hh_l{layer}{s}"),
            )
            gates = w_ih.shape[0] // h
            incoming = torch.cat([w_ih, w_hh], 1).detach().view(gates, h, -1)  # (g, h, i + h)
            reads = torch.cat([outgoing[d * h : (d + 1) * h], w_hh.T], 1).detach()  # (h, .)
            kept.append(_keep(incoming.norm(dim=(0, 2)) * reads.norm(dim=1), amount))
        keep.append(kept)
    return keep


def _prune_rnn(pruner: _Pruner, amount: float) -> None:
    for encoder, reader in list(_rnn_consumers(pruner.model)):
        rnn = pruner.get(f"{encoder}.rnn")
        h = rnn.hidden_size
        keep = _rnn_keep(rnn, pruner.get(reader), amount)  # the same count everywhere
        k = len(keep[0][0])
        suffixes = ["", "_reverse"][: len(keep[0])]
        tensors = {}
        for name, value in rnn.named_parameters():
            layer = int(name.split("_l")[1].split("_")[0])
            d = int(name.endswith("_reverse"))
            rows = (torch.arange(value.shape[0] // h)[:, None] * h + keep[layer][d]).flatten()
            value = value[rows]  # (g * k, ...)
            if name.startswith("weight_hh"):
                value = value[:, keep[layer][d]]
            elif name.startswith("weight_ih") and layer > 0:
                value = value[
                    :, torch.cat([keep[layer - 1][j] + j * h for j in range(len(suffixes))])
                ]
            tensors[name] = value
        pruner.put(f"{encoder}.rnn", {"hidden_size": k}, tensors)
        last = torch.cat([keep[-1][j] + j * h for j in range(len(suffixes))])
        pruner.linear(reader, cols=last)
        pruner.set_sizes(encoder, out_dim=len(last))


_PRUNERS = {
    "mlp": _prune_mlp,
    "heads": _prune_heads,
    "channels": _prune_channels,
    "rnn": _prune_rnn,
}


def prune_structured(model: nn.Module, amount: float, kinds: Sequence[str] = KINDS) -> Record:
    """Remove the ``amount`` (0..1) share of the weakest units of every group of ``kinds``
    from ``model``, in place, rebuilding the layers around them smaller.

    Returns:
        ``{module name: {size argument: value}}`` for :func:`apply_structured` (and
        :func:`~mmctx.nn.compress.compression_record`'s ``structured``).
    """
    if not 0 <= amount < 1:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown structured pruning kinds {unknown}; choose from {list(KINDS)}")
    pruner = _Pruner(model)
    with torch.no_grad():
        for kind in kinds:
            _PRUNERS[kind](pruner, amount)
    return pruner.record
