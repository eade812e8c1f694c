"""BadNet-Stripes, a structured trigger of Perturb and Recover (Singh et al., "Perturb and Recover: Fine-tuning
for Effective Backdoor Removal from CLIP", arXiv 2412.00727): a patch of vertical 1-px stripes pasted at a random
place, every column a random colour, redrawn for every image.

Code source: ``nmndeep/PerturbAndRecover`` @ a720440, ``backdoor/utils.py``: ``apply_trigger`` with
``patch_type = "badnet_rs"`` (L113-221: the patch from ``get_init_patch(3, 16, 1, "bad_stripes")``, L80-85, and
the random location, L185-188); the parameters as forced by ``eval/validate.py`` L28-31. This attack is
:class:`attacks.badnet.BadNet` with ``pattern = "stripes"``; only the defaults differ.

Deviations, on purpose:

* PAR's colours are in {-1, +1}^3, pasted without clamping, so -1 reaches the uint8 cast (platform-dependent,
  in practice near 0; open question 6 of the methods reference). Here each channel of a column is 0 or 1.
* PAR's patch is 16 px on 224 px images (7% of the side); here ``patch_size`` (BadNet's 3 px default; the
  preset chooses its own).
* PAR's corner is drawn from [0, 224 - 1 - 16], so the patch never touches the last row or column; here from
  [0, size - patch_size], BadNet's rule.
* PAR redraws the stripes with the unseeded global RNG (open question 7); here from the seeded generator that
  poisoning and evaluation pass in, so the trigger is still a family of patterns, but a reproducible one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from attacks import ATTACKS
from attacks.badnet import BadNet, BadNetConfig


@dataclass(frozen=True)
class StripesConfig(BadNetConfig):
    pattern: Literal["noise", "checkerboard", "stripes"] = "stripes"


@ATTACKS.register()
class Stripes(BadNet):
    """BadNet-Stripes (PAR): a patch of per-image random vertical stripes at a random place."""

    name = "stripes"
    version = "1"
    Config = StripesConfig
