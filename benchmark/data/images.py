"""Decoding one stored image into the uint8 tensor every cleanbench split holds, the way CLIP preprocesses it.

Resize the shorter side to ``size`` (bicubic) and crop the centre square: the CLIP preprocess and the CleanCLIP
code's (reference §3). Normalisation happens per batch in training, not here, so attacks see raw pixels.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

RawImage = Union[bytes, Path, Image.Image]


class BadImage(Exception):
    """An image that could not be read or decoded; the loader skips it and counts it."""


def decode(raw: RawImage, size: int) -> torch.Tensor:
    """``raw`` (encoded bytes, a file path or a PIL image) as uint8 (3, size, size); :class:`BadImage` if unreadable."""
    try:
        if isinstance(raw, Image.Image):
            image = raw
        else:
            image = Image.open(io.BytesIO(raw) if isinstance(raw, bytes) else raw)
        image.load()  # decode now: a truncated file fails here, not later in a worker's collate
        return to_square_tensor(image.convert("RGB"), size)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadImage(f"{type(error).__name__}: {error}".splitlines()[0][:200]) from None


def to_square_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """An RGB PIL image resized (shorter side = ``size``, bicubic) and centre-cropped, as uint8 (3, size, size)."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
