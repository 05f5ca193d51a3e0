"""Real audio-visual digits: spoken digits (FSDD) paired with handwritten ones (UCI).

Each FSDD recording is paired with a handwritten image of the same digit. The split is
held out by speaker (``val_speakers``/``test_speakers`` never appear in training) and by
image (each image belongs to exactly one split). A short text, present in half of the
rows, is a weak hint -- the digit's parity -- and never states the label.
The manifests point at the files in place; nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from mmctx.errors import ConfigError

SPLITS = ("train", "val", "test")


def _images_by_digit(root: Path, seed: int) -> dict[str, dict[int, list[str]]]:
    """Handwritten images per split and digit (70/15/15 per digit, seeded)."""
    rows = [
        json.loads(line)
        for line in (root / "digits" / "labels.jsonl").read_text().splitlines()
        if line.strip()
    ]
    by_digit: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        by_digit[int(row["label"])].append(str(root / "digits" / row["file"]))
    rng = random.Random(seed)
    out: dict[str, dict[int, list[str]]] = {s: {} for s in SPLITS}
    for digit, files in sorted(by_digit.items()):
        files = sorted(files)
        rng.shuffle(files)
        a, b = int(0.7 * len(files)), int(0.85 * len(files))
        out["train"][digit], out["val"][digit], out["test"][digit] = (
            files[:a],
            files[a:b],
            files[b:],
        )
    return out


def make_digits_manifests(
    root: str | Path,
    out_dir: str | Path,
    *,
    val_speakers: Sequence[str] = ("nicolas",),
    test_speakers: Sequence[str] = ("theo",),
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``train/val/test.jsonl`` pairing recordings with images of the same digit.

    Args:
        root: The shared data folder holding ``fsdd/`` and ``digits/``.
        out_dir: Where the manifests go.
        val_speakers: FSDD speakers used only for validation.
        test_speakers: FSDD speakers used only for testing.
        seed: Seed of the image split and the pairing.

    Returns:
        Manifest path per split.
    """
    root = Path(root).resolve()
    recordings = sorted((root / "fsdd" / "recordings").glob("*.wav"))
    if not recordings or not (root / "digits" / "labels.jsonl").is_file():
        raise FileNotFoundError(
            f"{root} does not hold fsdd/recordings/*.wav and digits/labels.jsonl"
        )
    overlap = set(val_speakers) & set(test_speakers)
    if overlap:
        raise ValueError(f"speakers {sorted(overlap)} are in both val_speakers and test_speakers")
    images = _images_by_digit(root, seed)
    rng = random.Random(seed + 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {s: [] for s in SPLITS}
    for wav in recordings:
        digit_str, speaker, _take = wav.stem.split("_")
        digit = int(digit_str)
        split = (
            "val" if speaker in val_speakers else "test" if speaker in test_speakers else "train"
        )
        row = {
            "id": wav.stem,
            "audio": str(wav),
            "image": rng.choice(images[split][digit]),
            "label": digit,
        }
        if rng.random() < 0.5:
            row["text"] = f"an {'even' if digit % 2 == 0 else 'odd'} digit"
        rows[split].append(json.dumps(row))
    paths = {}
    for split in SPLITS:
        paths[split] = out / f"{split}.jsonl"
        tmp = paths[split].with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("\n".join(rows[split]) + "\n")
        os.replace(tmp, paths[split])  # atomic: parallel processes never see half a file
    return paths


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mmctx digits-data",
        description="Pair real spoken digits (FSDD) with handwritten digit images (UCI) into "
        "train/val/test manifests, held out by speaker and by image.",
    )
    parser.add_argument(
        "--root",
        default="../shared/data",
        help="folder holding fsdd/ and digits/ (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help="folder for train/val/test.jsonl")
    parser.add_argument(
        "--val-speakers", nargs="+", default=["nicolas"], help="speakers only in validation"
    )
    parser.add_argument(
        "--test-speakers", nargs="+", default=["theo"], help="speakers only in test"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the image split and pairing")
    args = parser.parse_args(argv)
    try:
        paths = make_digits_manifests(
            args.root,
            args.out,
            val_speakers=args.val_speakers,
            test_speakers=args.test_speakers,
            seed=args.seed,
        )
    except ValueError as err:  # e.g. a speaker in both --val-speakers and --test-speakers
        raise ConfigError(str(err)) from None
    for split, path in paths.items():
        count = len(path.read_text().splitlines())
        print(f"{split}: {path} ({count} samples)")
    return 0
