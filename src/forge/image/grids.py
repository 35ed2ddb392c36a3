"""Sample grids as PNG: images in [-1, 1] tiled in rows, upscaled with nearest-neighbour pixels so
8×8 digits stay crisp, with an optional label to the left of each row."""

from pathlib import Path

import numpy as np
import torch

from forge.io import write_with

PAD = 2  # pixels between cells


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] → (B, H, W, C) uint8."""
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def save_grid(
    images: torch.Tensor, path: str | Path, *, nrow: int, labels: list[str] | None = None, scale: int = 4
) -> None:
    """Write `images` (B, C, H, W) in [-1, 1] as a PNG grid of `nrow` images per row, atomically.

    `labels`, if given, holds one text per row, drawn to the left of it; `scale` enlarges each pixel.
    """
    from PIL import Image, ImageDraw

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1|3, H, W), got {tuple(images.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    batch, channels, height, width = images.shape
    rows = -(-batch // nrow)
    if labels is not None and len(labels) != rows:
        raise ValueError(f"labels must hold one text per row ({rows}), got {len(labels)}")
    pixels = to_uint8(images)  # (B, H, W, C)
    cell_h, cell_w = height * scale, width * scale
    label_w = 0 if not labels else 7 * max(len(t) for t in labels) + 2 * PAD
    canvas = Image.new(
        "RGB", (label_w + nrow * (cell_w + PAD) + PAD, rows * (cell_h + PAD) + PAD), (255, 255, 255)
    )
    for i in range(batch):
        tile = pixels[i] if channels == 3 else np.repeat(pixels[i], 3, axis=2)
        cell = Image.fromarray(tile, mode="RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
        row, col = divmod(i, nrow)
        canvas.paste(cell, (label_w + PAD + col * (cell_w + PAD), PAD + row * (cell_h + PAD)))
    if labels:
        draw = ImageDraw.Draw(canvas)
        for row, text in enumerate(labels):
            draw.text((PAD, PAD + row * (cell_h + PAD) + max(0, cell_h // 2 - 6)), text, fill=(0, 0, 0))
    write_with(path, lambda tmp: canvas.save(tmp, format="PNG"))
