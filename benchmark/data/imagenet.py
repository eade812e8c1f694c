"""ImageNet-1K validation as zero-shot evaluation set, with open_clip's class names and OpenAI's 80 templates.

The layout is the usual prepared one: 1,000 WordNet-id folders (``n01440764/…``) holding the 50,000 images.
open_clip's ``zero_shot_metadata`` ships the curated names in the standard class-index order but no WordNet ids;
that order is the sorted order of the ids, so the i-th sorted folder is class i (``banana`` = index 954).
CleanCLIP's own copy of the names and templates (``data/ImageNet1K/validation/classes.py``) is the same list.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmark.data.image_folder import ImageFolder, class_folders
from benchmark.errors import UserError

WNID = re.compile(r"n\d{8}")


def imagenet_classnames() -> tuple[str, ...]:
    """open_clip's 1,000 ImageNet class names, in class-index order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


def openai_templates() -> tuple[str, ...]:
    """OpenAI's 80 ImageNet prompt templates as format strings (``"a bad photo of a {}."``)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


class ImageNetFolder(ImageFolder):
    """ImageNet-1K validation in WordNet-id folders, labelled by sorted id and named as open_clip names them."""

    def __init__(self, path: str) -> None:
        folders = class_folders(Path(path).expanduser())
        names = [folder.name for folder in folders]
        strays = [name for name in names if not WNID.fullmatch(name)]
        if len(names) != 1000 or strays:
            detail = f"; not WordNet ids: {', '.join(strays[:5])}" if strays else ""
            raise UserError(f"{path} is not ImageNet-1K in WordNet-id folders: found {len(names)} class folders, "
                            f"expected 1000 named like n01440764{detail} (use format = \"imagefolder\" for other sets)")
        super().__init__(path, imagenet_classnames())
        self.templates = openai_templates()
