"""Checkpoints written before the fused model and the package moves still load."""

import torch

from mmctx.checkpoints import build_module, load_module
from mmctx.data import Collate, Preprocess

# The layout of a `mmctx fit` checkpoint before this version: flat state-dict keys
# (encoders., fusion., backbone., pool_score., head.) and the backbone's old module path.
OLD_CONFIG = {
    "_class_path": "mmctx.pipelines.classifier.MultimodalClassifier",
    "encoders": {
        "text": {
            "class_path": "mmctx.encoders.TextTransformerEncoder",
            "init_args": {"dim": 16, "depth": 1, "heads": 2, "max_tokens": 16},
        }
    },
    "backbone": {
        "class_path": "mmctx.backbones.TransformerBackbone",
        "init_args": {"dim": 16, "depth": 1, "heads": 2},
    },
    "class_names": ["a", "b", "c"],
    "multilabel": False,
    "pool": "attention",
    "dropout": 0.1,
    "share_frame_cnn": False,
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def _old_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renames = {"fused.pool.score.": "pool_score.", "fused.": ""}
    out = {}
    for key, value in state.items():
        for new, old in renames.items():
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        out[key] = value
    return out


def test_a_checkpoint_in_the_old_format_loads_and_predicts_the_same(tmp_path):
    torch.manual_seed(0)
    new_config = {
        **OLD_CONFIG,
        "backbone": {**OLD_CONFIG["backbone"], "class_path": "mmctx.nn.TransformerBackbone"},
    }
    reference = build_module(new_config).eval()
    old_state = _old_keys(reference.state_dict())
    assert "pool_score.weight" in old_state and "encoders.text.embed.weight" in old_state
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old_state, "hyper_parameters": OLD_CONFIG, "epoch": 3}, path)

    loaded = load_module(path)

    batch = Collate(["text"], Preprocess(), None)(
        [{"id": str(i), "line": i, "inputs": {"text": t}} for i, t in enumerate(["one two", "x"])]
    )
    torch.testing.assert_close(loaded(batch["inputs"]), reference(batch["inputs"]))
    assert type(loaded.fused.backbone).__module__ == "mmctx.nn.backbones"


# A GAN checkpoint of the versions that drew images only: `target: image` with the image's
# size and channels as arguments of the GAN itself.
OLD_GAN_CONFIG = {
    "_class_path": "mmctx.pipelines.gan.MultimodalGAN",
    "encoders": {"text": OLD_CONFIG["encoders"]["text"]},
    "backbone": OLD_CONFIG["backbone"],
    "class_names": ["a", "b", "c"],
    "multilabel": False,
    "target": "image",
    "image_size": 16,
    "image_channels": 1,
    "z_dim": 8,
    "cond_dim": 8,
    "g_width": 4,
    "d_width": 4,
    "ac_weight": 1.0,
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def test_an_image_gan_checkpoint_of_the_old_format_loads_and_draws_the_same(tmp_path):
    from mmctx.pipelines import ImageTarget

    torch.manual_seed(0)
    new_config = {
        k: v for k, v in OLD_GAN_CONFIG.items() if k not in ("image_size", "image_channels")
    }
    new_config["target"] = {"class_path": "mmctx.pipelines.ImageTarget", "init_args": {"size": 16}}
    new_config["backbone"] = {
        **OLD_CONFIG["backbone"],
        "class_path": "mmctx.nn.TransformerBackbone",
    }
    reference = build_module(new_config).eval()
    path = tmp_path / "old_gan.ckpt"
    torch.save({"state_dict": reference.state_dict(), "hyper_parameters": OLD_GAN_CONFIG}, path)

    loaded = load_module(path)

    assert isinstance(loaded.target, ImageTarget)
    assert (loaded.target.size, loaded.target.channels) == (16, 1)
    inputs = Collate(["text"], Preprocess(), None)(
        [{"id": "0", "line": 1, "inputs": {"text": "one two"}}]
    )["inputs"]
    drawn = loaded.sample(inputs, n=2, seed=3)
    assert drawn.shape == (1, 2, 1, 16, 16)
    assert torch.equal(drawn, reference.sample(inputs, n=2, seed=3))
