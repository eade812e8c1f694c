"""Blended-Triangles, a structured trigger of Perturb and Recover (Singh et al., "Perturb and Recover: Fine-tuning
for Effective Backdoor Removal from CLIP", arXiv 2412.00727): a fixed grey pattern of triangles blended into the
whole image with α = 0.15.

Code source: ``nmndeep/PerturbAndRecover`` @ a720440, ``backdoor/utils.py``: ``create_triangle_pattern(224, 14)``
(L59-77; the shipped ``backdoor/patterns/triangles_224_14.pt``, loaded at L173-175) blended by ``apply_trigger``
at location ``blended_rs`` (L197-199) with the α that ``eval/validate.py`` L36-39 forces. This attack is
:class:`attacks.blended.Blended` with ``pattern = "triangles"`` (:func:`attacks.blended.triangles` draws it); only
the defaults differ.

The pattern: square cells; in each, the value is 0.4 where the row offset is at least the column offset (the
lower-left triangle, diagonal included) and 0.8 elsewhere; the same in every channel.

Deviations, on purpose:

* PAR's cells are 14 px at 224 px (16 across). Here the cell is scaled to the preset's resolution but kept at
  least 4 px, because a 2-px cell (14 px scaled to 32 px) draws no triangle: at 32 px, eight cells of 4 px. At
  224 px the pattern equals PAR's.
* PAR resizes every image to 224 px first; here the pattern is drawn at the preset's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from attacks import ATTACKS
from attacks.blended import Blended, BlendedConfig


@dataclass(frozen=True)
class TrianglesConfig(BlendedConfig):
    pattern: str = "triangles"
    alpha: float = 0.15


@ATTACKS.register()
class Triangles(Blended):
    """Blended-Triangles (PAR): a fixed grey triangle pattern blended in with α = 0.15."""

    name = "triangles"
    version = "1"
    Config = TrianglesConfig
