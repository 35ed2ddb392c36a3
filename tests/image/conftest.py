"""Shared fixtures of the image tests: the digits prepared once per session."""

from pathlib import Path

import pytest

from forge.data.images import ImageDataConfig, prepare_images


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's digits prepared by `prepare_images` (8×8, grey, 10% validation)."""
    out = tmp_path_factory.mktemp("digits") / "data"
    prepare_images(ImageDataConfig(out=str(out)))
    return out
