import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forge.data.images import (
    DIGIT_WORDS,
    HELDOUT_TEMPLATES,
    TRAIN_TEMPLATES,
    ImageDataConfig,
    digit_caption,
    load_images,
    prepare_images,
)
from forge.errors import ConfigError, DataError


def test_digits_round_trip(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    manifest = prepare_images(ImageDataConfig(out=str(tmp_path / "d"), val_fraction=0.2, seed=3))
    train, val = load_images(tmp_path / "d", "train"), load_images(tmp_path / "d", "val")
    assert manifest["counts"] == {"train": len(train), "val": len(val), "skipped": 0}
    assert len(train) + len(val) == 1797 and abs(len(val) - 359) <= 1
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.float32
    assert train.images.min() == -1 and train.images.max() == 1
    # the pixels are the digits' own, mapped 0..16 → -1..1, and labels follow them
    real = load_digits()
    pixels = torch.from_numpy(real.images).float() / 8 - 1  # (N, 8, 8)
    match = (pixels[:, None] == val.images[0, 0]).flatten(1).all(1).nonzero()
    assert int(real.target[match[0, 0]]) == int(val.labels[0])
    for caption, label in zip(train.captions[:50], train.labels[:50], strict=True):
        assert DIGIT_WORDS[int(label)] in caption


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    a = prepare_images(ImageDataConfig(out=str(tmp_path / "a"), seed=1))
    b = prepare_images(ImageDataConfig(out=str(tmp_path / "b"), seed=1))
    c = prepare_images(ImageDataConfig(out=str(tmp_path / "c"), seed=2))
    assert a["counts"] == b["counts"]
    va, vb, vc = (load_images(tmp_path / n, "val") for n in "abc")
    assert torch.equal(va.images, vb.images) and va.captions == vb.captions
    assert not torch.equal(va.images, vc.images)
    assert c["counts"]["val"] == a["counts"]["val"]


def test_held_out_wordings_never_appear_in_training_captions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    held_out = {digit_caption(d, rng, held_out=True) for d in range(10) for _ in range(200)}
    possible_train = {
        t.format(word=w, numeral=str(d)) for t in TRAIN_TEMPLATES for d, w in enumerate(DIGIT_WORDS)
    }
    assert len(held_out) == 10 * len(HELDOUT_TEMPLATES)
    assert not held_out & possible_train
    assert any(str(d) in c for c in held_out for d in range(10))  # numerals are among the held-out
    assert not any(ch.isdigit() for c in possible_train for ch in c)  # training uses words only
    prepare_images(ImageDataConfig(out=str(tmp_path / "d")))
    stored = set(load_images(tmp_path / "d", "train").captions) | set(
        load_images(tmp_path / "d", "val").captions
    )
    assert stored <= possible_train and not stored & held_out
    assert len(stored) > 50  # varied wording


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(folder / "wide.png")
    Image.new("L", (6, 12), 128).save(folder / "tall.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    lines = [
        {"file": "wide.png", "caption": "a red box", "label": 2},
        {"file": "tall.jpg", "caption": "a grey bar"},
        {"file": "broken.png", "caption": "corrupt"},
        {"file": "missing.png", "caption": "gone"},
    ]
    text = (
        "\n".join(json.dumps(x) for x in lines[:2])
        + "\n{not json\n"
        + "\n".join(json.dumps(x) for x in lines[2:])
    )
    (folder / "captions.jsonl").write_text(text + '\n{"caption": "no file"}\n')
    return folder


def test_folder_skips_and_reports_bad_entries(tmp_path: Path) -> None:
    config = ImageDataConfig(source=str(_folder(tmp_path)), out=str(tmp_path / "o"), size=8, channels=3,
                             fit="pad", val_fraction=0.0)  # fmt: skip
    manifest = prepare_images(config)
    reasons = {s["line"]: s for s in manifest["skipped"]}
    assert set(reasons) == {"captions.jsonl:3", "captions.jsonl:4", "captions.jsonl:5", "captions.jsonl:6"}
    assert "not valid JSON" in reasons["captions.jsonl:3"]["reason"]
    assert (
        reasons["captions.jsonl:4"]["file"] == "broken.png"
        and "unreadable" in reasons["captions.jsonl:4"]["reason"]
    )
    assert reasons["captions.jsonl:5"]["reason"] == "file not found"
    assert "file" in reasons["captions.jsonl:6"]["reason"]
    data = load_images(tmp_path / "o")
    assert data.images.shape == (2, 3, 8, 8) and data.captions == ["a red box", "a grey bar"]
    assert data.labels.tolist() == [2, -1]
    red = data.images[0]  # padded top and bottom with black, red in the middle rows
    assert red[0, 4, 4] == 1 and red[1, 4, 4] == -1 and red[0, 0, 4] == -1


@pytest.mark.parametrize("fit", ["resize", "crop", "pad"])
def test_folder_fits_grey(tmp_path: Path, fit: str) -> None:
    config = ImageDataConfig(source=str(_folder(tmp_path)), out=str(tmp_path / "o"), size=6, fit=fit)
    prepare_images(config)
    train, val = load_images(tmp_path / "o", "train"), load_images(tmp_path / "o", "val")
    assert train.images.shape[1:] == (1, 6, 6) and len(train) + len(val) == 2


def test_folder_without_usable_images_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "captions.jsonl").write_text('{"file": "nope.png", "caption": "x"}\n')
    with pytest.raises(DataError, match="no usable image.*captions.jsonl:1"):
        prepare_images(ImageDataConfig(source=str(folder), out=str(tmp_path / "o")))
    (folder / "captions.jsonl").unlink()
    with pytest.raises(DataError, match="captions.jsonl"):
        prepare_images(ImageDataConfig(source=str(folder), out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("size", 2, "--size"),
        ("channels", 2, "--channels"),
        ("fit", "zoom", "--fit"),
        ("val_fraction", 1.0, "--val-fraction"),
    ],
)
def test_bad_config_names_the_flag(field: str, value: object, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        ImageDataConfig(**{field: value})  # type: ignore[arg-type]


def test_missing_manifest_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="forge data images"):
        load_images(tmp_path)
