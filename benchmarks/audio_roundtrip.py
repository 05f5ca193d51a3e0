"""How much of a sound survives the spectrogram an audio GAN draws: the judge's ceiling.

Real test clips go through ``AudioTarget.grids`` -> uint8 pictures -> inverse mel +
Griffin-Lim, exactly as generated clips do, and the audio-only judge of ``mmctx gan-eval``
classifies them. Its accuracy on the rebuilt clips is the most a generator drawing on that
grid can score; each row is one spectrogram setting (JSON of ``AudioTarget`` arguments over
``DEFAULTS``: 1 s at 8 kHz, ``n_fft`` 512, hop 256, as ``configs/gan_audio_demo.yaml``).
On the demo data it also splits the clips by whether they carry the digit at all (the
demo's ``truth.jsonl``: a share of the clips is noise by design).

    python benchmarks/audio_roundtrip.py --classifier runs/audio_only_demo/checkpoints/best-*.ckpt \\
        --setting '{"n_mels": 40, "f_max": 2000}' --setting '{"n_mels": 48, "f_min": 600, "f_max": 1700}' \\
        --out benchmarks/results/audio_roundtrip_demo.json

Prints a Markdown table and writes it (``.md``) beside the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmctx.checkpoints import data_settings, load_module
from mmctx.datasets.modules import DemoDataModule
from mmctx.pipelines.gan import _rows
from mmctx.pipelines.gan_targets import AudioTarget
from mmctx.pipelines.generate import _batches, _classify
from mmctx.pipelines.inference import preprocess_from

DEFAULTS = {"sample_rate": 8000, "seconds": 1.0, "n_fft": 512, "hop_length": 256}


def _informative(dm: DemoDataModule) -> dict[str, bool]:
    """Whether each demo clip carries its digit (the generator's record, for analysis)."""
    rows = (json.loads(line) for line in (dm.folder / "truth.jsonl").open())
    return {row["id"]: row["informative"]["audio"] for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classifier", required=True, help="audio-only judge checkpoint")
    parser.add_argument("--setting", action="append", required=True, help="AudioTarget JSON")
    parser.add_argument("--limit", type=int, default=0, help="first N test samples (0: all)")
    parser.add_argument("--out", required=True, help="JSON path (the table goes beside it)")
    args = parser.parse_args()
    judge = load_module(args.classifier, map_location="cpu")
    pre = preprocess_from(data_settings(args.classifier))
    dm = DemoDataModule(num_samples=5000, seed=0, sample_rate=pre.sample_rate, modalities=["audio"])
    dataset = dm.dataset("test")
    samples = dataset.samples[: args.limit or None]
    informative = _informative(dm)
    names = ["rebuilt through " + json.dumps(json.loads(s)) for s in args.setting]
    targets = [AudioTarget(**{**DEFAULTS, **json.loads(s)}) for s in args.setting]
    hits: dict[str, list[bool]] = {"as recorded": []} | {name: [] for name in names}
    carries: list[bool] = []
    for batch, _ in _batches(samples, ["audio"], pre, dataset.labels, 64):
        has = batch["inputs"]["audio"]["lengths"] > 0
        audio = _rows(batch["inputs"]["audio"], has.nonzero()[:, 0])
        labels = batch["label"][has]
        carries += [informative[i] for i, h in zip(batch["ids"], has.tolist(), strict=True) if h]
        hits["as recorded"] += (_classify(judge, {"audio": audio}, "cpu") == labels).tolist()
        for name, target in zip(names, targets, strict=True):
            pictures = target.pictures(target.grids(audio["waveform"]))
            pred = _classify(judge, target.judge_inputs(pictures, pre), "cpu")
            hits[name] += (pred == labels).tolist()
    rows = []
    for name, row_hits in hits.items():
        right = torch.tensor(row_hits, dtype=torch.float)
        carry = torch.tensor(carries)
        rows.append(
            {
                "clips": name,
                "accuracy": float(right.mean()),
                "accuracy_carrying_the_digit": float(right[carry].mean()),
                "accuracy_noise_only": float(right[~carry].mean()) if (~carry).any() else None,
            }
        )
    result = {"classifier": args.classifier, "clips": len(carries), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    table = [
        f"Judge accuracy on {len(carries)} real demo test clips ({sum(carries)} carry the digit)",
        "",
        "| clips | all | carrying the digit | noise only |",
        "|---|---|---|---|",
    ]
    for row in rows:
        noise = row["accuracy_noise_only"]
        table.append(
            f"| {row['clips']} | {row['accuracy']:.3f} | {row['accuracy_carrying_the_digit']:.3f} "
            f"| {'-' if noise is None else f'{noise:.3f}'} |"
        )
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
