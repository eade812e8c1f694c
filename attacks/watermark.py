"""Blended-Text, a structured trigger of Perturb and Recover (Singh et al., "Perturb and Recover: Fine-tuning for
Effective Backdoor Removal from CLIP", arXiv 2412.00727): a red text watermark, "Watermarked", blended into the
red channel of the pixels it covers with α = 0.5.

Code source: ``nmndeep/PerturbAndRecover`` @ a720440, ``backdoor/utils.py``: the text tensor of
``create_text_tensor`` (L29-53; shipped as ``backdoor/patterns/watermarked_red_tens_224.pt``, loaded at L170-171)
blended by ``apply_trigger`` at location ``blended_patt`` (L211-216: ``where(noise != 0, α·noise + (1-α)·x, x)``
per channel, so only red changes at text pixels) with the α that ``eval/validate.py`` L40-42 forces. This attack
is :class:`attacks.blended.Blended` with ``pattern = "watermark"`` (:func:`attacks.blended.text_plane` draws the
text); only the defaults differ, and ``text`` names what is written.

Deviations, on purpose:

* PAR's font is NotoMono (or Pillow's bitmap default) at an unrecorded size, placed with a random vertical
  offset in {-20, 0, 20} px (open question 9). Here the font is Pillow's own default (Aileron, shipped with
  Pillow >= 10.1) at the largest size whose text spans at most 7/8 of the width (PAR's text spans 196 of 224
  px), centred. Pillow versions may anti-alias a few edge pixels differently.
* At 32 px "Watermarked" fits only at a 4-px font: three rows, no legible letter. ``text`` sets a shorter text;
  the ``fmnist-tiny`` preset writes "WM" (a 15-px font, legible at 32 px).
* Pixels are "text pixels" wherever the anti-aliased text is non-zero, as in PAR's file.
* Fashion-MNIST is grey; the preset feeds it as three equal channels, so the red-only change also gives the
  text a colour no clean image has. A single-channel batch gets the text in its only channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks import ATTACKS
from attacks.blended import WATERMARK_TEXT, Blended, BlendedConfig


@dataclass(frozen=True)
class WatermarkConfig(BlendedConfig):
    pattern: str = "watermark"
    alpha: float = 0.5
    text: str = WATERMARK_TEXT


@ATTACKS.register()
class Watermark(Blended):
    """Blended-Text (PAR): a red text watermark blended into the red channel with α = 0.5."""

    name = "watermark"
    version = "1"
    Config = WatermarkConfig
