"""Checkpoints and exports that load without running pickled code.

A checkpoint written by ``mmctx fit`` holds the model's full config (``class_path`` and
``init_args`` of every component, recorded by the CLI in the model's hyperparameters) and
the data module's
preprocessing settings (see ``MultimodalDataModule.state_dict``), so a model is rebuilt from
the file alone: :func:`load_module`. Every read uses ``torch.load(weights_only=True)``.

An export (:func:`export_model`) is the same model as a plain ``model.safetensors`` beside a
``config.json``; :func:`load_export` rebuilds it with jsonargparse and safetensors, without
Lightning's checkpoint machinery.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmctx.errors import ConfigError

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
DATA_SETTINGS_KEY = "mmctx_data_settings"


class CheckpointError(ConfigError):
    """A checkpoint or export that cannot be used; the message names the file and the cause
    (a :class:`~mmctx.errors.ConfigError`: the run cannot start, exit status 2)."""


def mismatch_cause(err: BaseException) -> str | None:
    """What a strict ``load_state_dict`` refused (missing, unexpected or differently shaped
    weights) as one short line, or ``None`` when ``err`` is something else."""
    text = str(err)
    if not isinstance(err, RuntimeError) or "Error(s) in loading state_dict" not in text:
        return None
    details = "; ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
    return details if len(details) <= 400 else details[:397] + "..."


def load_weights(model: nn.Module, state_dict: dict[str, Any], source: str | Path) -> None:
    """``model.load_state_dict(state_dict)`` (strict); weights that do not fit the model (a
    checkpoint of another model, or one trained with a different number of classes) raise a
    :class:`CheckpointError` naming ``source`` and the first differences."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        cause = mismatch_cause(err)
        if cause is None:
            raise
        raise CheckpointError(
            f"{source}: its weights do not fit the model the config builds ({cause})"
        ) from None


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the cause."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable checkpoint (not a torch.save zip file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: holds objects that only unpickling code could rebuild; "
            f"refusing to load it ({str(err).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def plain_config(value: Any) -> Any:
    """Config values as plain JSON types (the CLI stores jsonargparse Namespaces)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_config(v) for v in value]
    return value


def _model_config(hparams: dict[str, Any], source: Path) -> dict[str, Any]:
    config = {k: plain_config(v) for k, v in hparams.items() if k != "_instantiator"}
    if "_class_path" not in config:
        raise CheckpointError(
            f"{source}: the checkpoint does not say which class it holds; it was not written "
            "by `mmctx fit` (build the model in Python and load its state_dict instead)"
        )
    return config


# Modules that moved: class paths recorded by older versions -> where the classes live now.
MOVED_MODULES = {
    "mmctx.backbones": "mmctx.nn.backbones",
    "mmctx.fusion": "mmctx.nn.fusion",
    "mmctx.attention": "mmctx.nn.attention",
    "mmctx.positions": "mmctx.nn.positions",
    "mmctx.datamodule": "mmctx.data.datamodule",
}


def _renamed(value: Any) -> Any:
    """A config with the class paths of moved modules pointed at their new modules."""
    if isinstance(value, dict):
        out = {k: _renamed(v) for k, v in value.items()}
        for key in ("class_path", "_class_path"):
            path = out.get(key)
            if isinstance(path, str) and "." in path:
                module, _, name = path.rpartition(".")
                out[key] = f"{MOVED_MODULES.get(module, module)}.{name}"
        return out
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    return value


def _gan_target(config: dict[str, Any]) -> dict[str, Any]:
    """A GAN config of the versions that drew images only (``target: image`` with
    ``image_size``/``image_channels`` beside it), with those as an ``ImageTarget``."""
    if not config.get("_class_path", "").endswith(".MultimodalGAN"):
        return config
    old = {k: config.pop(k) for k in ("image_size", "image_channels") if k in config}
    if old or isinstance(config.get("target"), str):
        if config.pop("target", "image") != "image":
            raise CheckpointError("a MultimodalGAN config names a target other than 'image'")
        config["target"] = {
            "class_path": "mmctx.pipelines.gan_targets.ImageTarget",
            "init_args": {
                "size": old.get("image_size", 32),
                "channels": old.get("image_channels", 1),
            },
        }
    return config


def build_module(config: dict[str, Any], source: Path | str = "config") -> nn.Module:
    """Instantiate a module from its saved config (``_class_path`` plus init arguments)."""
    from jsonargparse import ArgumentParser

    # Class paths are full dotted paths: jsonargparse imports each one's module itself.
    config = _gan_target(_renamed(copy.deepcopy(config)))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "module", fail_untyped=False)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}  # _class_path, ...
    try:
        cfg = parser.parse_object(
            {"module": {"class_path": config["_class_path"], "dict_kwargs": kwargs}}
        )
        return parser.instantiate_classes(cfg).module
    except Exception as err:  # jsonargparse raises several kinds; all mean "cannot rebuild"
        raise CheckpointError(
            f"{source}: cannot rebuild the model from its config ({err})"
        ) from err


def load_module(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the LightningModule a ``mmctx fit`` checkpoint holds, weights loaded, eval mode."""
    ckpt = read_checkpoint(path)
    model = build_module(_model_config(ckpt.get("hyper_parameters", {}), Path(path)), path)
    load_weights(model, ckpt["state_dict"], path)
    return model.to(map_location).eval()


def data_settings(ckpt: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """The preprocessing settings the model was trained with (``{}`` if not recorded).

    Keys (when recorded): ``modalities``, ``preprocess`` (``image_size``, ``image_channels``,
    ``sample_rate``, ``limits``, ...), ``class_names``.
    """
    if not isinstance(ckpt, dict):
        ckpt = read_checkpoint(ckpt)
    for value in ckpt.values():
        if isinstance(value, dict) and DATA_SETTINGS_KEY in value:
            return value[DATA_SETTINGS_KEY]
    return dict(ckpt.get(DATA_SETTINGS_KEY, {}))


def export_model(
    ckpt_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write ``model.safetensors`` and ``config.json`` (model config + data settings)."""
    ckpt = read_checkpoint(ckpt_path)
    config = _model_config(ckpt.get("hyper_parameters", {}), Path(ckpt_path))
    model = build_module(config, ckpt_path)
    model.load_state_dict(ckpt["state_dict"])
    return write_export(model, config, data_settings(ckpt), out_dir)


def write_export(
    model: nn.Module,
    config: dict[str, Any],
    data: dict[str, Any],
    out_dir: str | os.PathLike[str],
    compression: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``model``'s weights and ``config.json``; a compressed model's ``compression``
    record (:func:`mmctx.nn.compress.compression_record`) goes with them, so
    :func:`load_export` rebuilds its structure (factorised layers, INT8 quantisation). A
    quantised model (``record["quantised"]`` names its layers) is saved with int8 weights."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (compression or {}).get("quantised"):  # a quantise_dynamic model: int8 weights
        from mmctx.nn.compress import int8_state

        state = int8_state(model)
    else:
        state = model.state_dict()
    # safetensors refuses tensors that share memory; clone makes each one its own.
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    save_file(state, out / EXPORT_WEIGHTS)
    meta = {"model": config, "data": data, "format": "mmctx-export-1"}
    if compression:
        meta["compression"] = compression
    (out / EXPORT_CONFIG).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return {"weights": out / EXPORT_WEIGHTS, "config": out / EXPORT_CONFIG}


def read_export_config(folder: Path, payload: str, what: str) -> dict[str, Any]:
    """``config.json`` of a folder that must also hold ``payload`` (the weights or graph).

    Raises:
        CheckpointError: A file is missing, or the config is not an mmctx one; the message
            names the file.
    """
    cfg_path = folder / EXPORT_CONFIG
    for p in (cfg_path, folder / payload):
        if not p.is_file():
            raise CheckpointError(f"{p}: missing; {what} holds {EXPORT_CONFIG} and {payload}")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta["model"], dict):
            raise TypeError("no model config")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{cfg_path}: not the config of {what} ({err})") from None
    return meta


def load_export(
    export_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model (eval mode) and return it with its data settings."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(export_dir)
    cfg_path, weights = folder / EXPORT_CONFIG, folder / EXPORT_WEIGHTS
    meta = read_export_config(folder, EXPORT_WEIGHTS, "an export folder")
    model = build_module(meta["model"], cfg_path)
    compression = meta.get("compression") or {}
    if compression:
        from mmctx.nn.compress import apply_compression

        apply_compression(model, compression)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
    if compression.get("quantised"):  # INT8 weights; runs on the CPU only
        from mmctx.nn.compress import load_int8_state, quantise_dynamic

        model = quantise_dynamic(model, compression["quantised"])
        try:
            load_int8_state(model, state)
        except KeyError as err:
            raise CheckpointError(f"{weights}: {err}") from None
        return model.eval(), meta.get("data", {})
    model.load_state_dict(state)
    return model.to(map_location).eval(), meta.get("data", {})
