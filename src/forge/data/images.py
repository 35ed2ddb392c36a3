"""`forge data images`: a folder of captioned images, or scikit-learn's digits → array shards + manifest.

    read (digits | folder/captions.jsonl) → decode with pillow → channels → fit to size × size
        → split train/val (seeded permutation) → OUT/{train,val}-NNNNN.npy + {train,val}.jsonl + manifest.json

Design choices:
- pixels are stored as uint8 (0 .. `value_max`, 16 for the digits, 255 for pictures), losslessly, and
  mapped to float32 in [-1, 1] on load: `x / (value_max / 2) - 1`;
- `{split}.jsonl` holds one `{"file", "caption", "label"}` per image in shard order; `label` is -1
  when unknown (folders may give an integer `label` next to the caption);
- the digits get captions in varied wording using number WORDS only ("a handwritten seven");
  `HELDOUT_TEMPLATES` (numerals like "7", other phrasings) never appear in training captions and serve
  evaluation alone, so conditioning accuracy measures generalisation of the text encoder, not recall;
- a bad `captions.jsonl` line, a missing file or an image pillow cannot decode is skipped and reported
  in the manifest (`skipped`: line, file, reason); a folder with no usable image is a DataError;
- the output directory is written whole (temporary directory + rename).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forge.config import to_dict
from forge.errors import ConfigError, DataError
from forge.io import atomic_dir, write_json

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a handwritten {word}",
    "the digit {word}",
    "number {word}, drawn by hand",
    "a drawing of the number {word}",
    "{word}",
    "an image of a {word}",
    "the handwritten digit {word}",
    "a scribbled {word}",
    "digit {word} written with a pen",
    "a small picture of {word}",
)
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a picture of the number {numeral}",
    "digit {numeral}",
    "{numeral}",
    "the number {numeral}",
    "handwritten {numeral}",
    "a {word} written by hand",
    "a sketch of the digit {word}",
    "the figure {numeral}",
)
FITS = ("resize", "crop", "pad")
SHARD_IMAGES = 50_000
MANIFEST_VERSION = 1


def digit_caption(label: int, rng: np.random.Generator, *, held_out: bool = False) -> str:
    """A caption for digit `label` in a wording drawn by `rng`: a training template, or a held-out one."""
    templates = HELDOUT_TEMPLATES if held_out else TRAIN_TEMPLATES
    template = templates[int(rng.integers(len(templates)))]
    return template.format(word=DIGIT_WORDS[label], numeral=str(label))


@dataclass(frozen=True, kw_only=True)
class ImageDataConfig:
    """Options of `forge data images`."""

    source: str = "digits"
    """'digits' (scikit-learn's 8×8 handwritten digits, captioned) or a folder holding images and
    captions.jsonl (one {"file": ..., "caption": ...} per line)"""
    out: str = "data/images"
    """output directory for the array shards and manifest"""
    size: int = 8
    """image side in pixels (the digits are 8×8 natively)"""
    channels: int = 1
    """1 (grey) or 3 (RGB)"""
    fit: str = "resize"
    """how images reach size × size: resize (stretch), crop (scale the short side, centre-crop) or pad
    (scale the long side, pad with black)"""
    val_fraction: float = 0.1
    """fraction of images held out for validation"""
    seed: int = 0
    """seed for the train/val split and the generated captions"""

    def __post_init__(self) -> None:
        if not 4 <= self.size <= 1024:
            raise ConfigError(f"--size must be between 4 and 1024 pixels, got {self.size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"--channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.fit not in FITS:
            raise ConfigError(f"--fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class ImageSet:
    """One split of a prepared image set."""

    images: torch.Tensor
    """(N, C, H, W) float32 in [-1, 1]"""
    captions: list[str]
    labels: torch.Tensor
    """(N,) int64; -1 where unknown"""

    def __len__(self) -> int:
        return len(self.captions)


# ---- reading ------------------------------------------------------------------------------------------


def _fit(image: Any, config: ImageDataConfig) -> np.ndarray:
    """A pillow image → (C, size, size) uint8 in the configured channels and fit."""
    from PIL import Image, ImageOps

    image = image.convert("L" if config.channels == 1 else "RGB")
    box = (config.size, config.size)
    if config.fit == "resize":
        image = image.resize(box, Image.Resampling.BICUBIC)
    elif config.fit == "crop":
        image = ImageOps.fit(image, box, Image.Resampling.BICUBIC)
    else:
        image = ImageOps.pad(image, box, Image.Resampling.BICUBIC, color=0)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)


def _read_digits(config: ImageDataConfig) -> tuple[np.ndarray, list[dict[str, Any]], int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.images.astype(np.uint8)  # (N, 8, 8), values 0..16
    labels = digits.target.astype(int)
    if config.size == 8 and config.channels == 1:
        images, value_max = pixels[:, None], 16
    else:  # through pillow at 0..255 so the same fit applies as for folders
        from PIL import Image

        scaled = (pixels.astype(np.float32) * 255 / 16).round().astype(np.uint8)
        images = np.stack([_fit(Image.fromarray(p, mode="L"), config) for p in scaled])
        value_max = 255
    rng = np.random.default_rng(config.seed)
    records = [
        {"file": f"digits[{i}]", "caption": digit_caption(int(y), rng), "label": int(y)}
        for i, y in enumerate(labels)
    ]
    return images, records, value_max


def _parse_line(line: str) -> tuple[str, str, int]:
    """(file, caption, label) of one captions.jsonl line; ValueError says what is wrong."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    file, caption, label = row.get("file"), row.get("caption", ""), row.get("label", -1)
    if not isinstance(file, str) or not file:
        raise ValueError('no "file" string')
    if not isinstance(caption, str):
        raise ValueError('"caption" is not a string')
    if not isinstance(label, int) or isinstance(label, bool):
        raise ValueError('"label" is not an integer')
    return file, caption, label


def _read_folder(
    folder: Path, config: ImageDataConfig, skipped: list[dict[str, Any]]
) -> tuple[np.ndarray, list[dict[str, Any]], int]:
    from PIL import Image

    index = folder / "captions.jsonl"
    if not index.is_file():
        raise DataError(
            f'{index} not found: an image folder needs captions.jsonl with one {{"file", "caption"}} '
            "object per line (use --source digits for the built-in set)"
        )
    images, records = [], []
    for number, line in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{index.name}:{number}"
        try:
            file, caption, label = _parse_line(line)
        except ValueError as e:
            skipped.append({"line": where, "reason": str(e)})
            continue
        path = folder / file
        try:
            with Image.open(path) as image:
                image.load()
                images.append(_fit(image, config))
        except FileNotFoundError:
            skipped.append({"line": where, "file": file, "reason": "file not found"})
            continue
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append({"line": where, "file": file, "reason": f"unreadable image ({e})"})
            continue
        records.append({"file": file, "caption": caption, "label": label})
    if not images:
        raise DataError(
            f"{folder}: no usable image ({len(skipped)} line(s) skipped"
            + (f", first: {skipped[0]['line']}: {skipped[0]['reason']}" if skipped else "")
            + "); check captions.jsonl and the image files"
        )
    return np.stack(images), records, 255


# ---- writing and loading ------------------------------------------------------------------------------


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices of `n` items: a seeded permutation, the first part validation."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(int(round(n * val_fraction)), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def prepare_images(config: ImageDataConfig) -> dict[str, Any]:
    """Read, convert, split and write the image set; returns the manifest (also OUT/manifest.json)."""
    skipped: list[dict[str, Any]] = []
    if config.source == "digits":
        images, records, value_max = _read_digits(config)
    else:
        folder = Path(config.source)
        if not folder.is_dir():
            raise DataError(f"--source {config.source}: not a folder (give a folder or 'digits')")
        images, records, value_max = _read_folder(folder, config, skipped)
    train_idx, val_idx = split_indices(len(records), config.val_fraction, config.seed)
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "source": config.source,
        "config": to_dict(config),
        "shape": list(images.shape[1:]),
        "value_max": value_max,
        "labelled": any(r["label"] >= 0 for r in records),
        "counts": {"train": len(train_idx), "val": len(val_idx), "skipped": len(skipped)},
        "shards": {},
        "skipped": skipped,
    }
    with atomic_dir(config.out) as tmp:
        for split, idx in (("train", train_idx), ("val", val_idx)):
            names = []
            for shard, start in enumerate(range(0, max(len(idx), 1), SHARD_IMAGES)):
                name = f"{split}-{shard:05d}.npy"
                np.save(tmp / name, np.ascontiguousarray(images[idx[start : start + SHARD_IMAGES]]))
                names.append(name)
            manifest["shards"][split] = names
            lines = "".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in idx)
            (tmp / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        write_json(tmp / "manifest.json", manifest)
    return manifest


def load_images(path: str | Path, split: str = "train") -> ImageSet:
    """Load one split ('train' or 'val') of a directory written by `prepare_images`."""
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path} not found: prepare the images first with `forge data images`")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if split not in manifest["shards"]:
        raise ConfigError(f"split must be one of {', '.join(manifest['shards'])}, got {split!r}")
    arrays = [np.load(root / name, allow_pickle=False) for name in manifest["shards"][split]]
    pixels = torch.from_numpy(np.concatenate(arrays)).float()  # (N, C, H, W) in 0..value_max
    rows = [json.loads(line) for line in (root / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    if len(rows) != len(pixels):
        raise DataError(f"{root}: {split}.jsonl has {len(rows)} rows for {len(pixels)} images; prepare again")
    return ImageSet(
        images=pixels / (manifest["value_max"] / 2) - 1,
        captions=[r["caption"] for r in rows],
        labels=torch.tensor([r["label"] for r in rows], dtype=torch.int64),
    )
