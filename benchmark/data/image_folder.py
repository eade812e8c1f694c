"""Labelled evaluation images in class folders (torchvision's ImageFolder layout): ``root/<class>/<image>``.

Classes are the sub-folders in sorted order, so label indices match torchvision's ``ImageFolder``; a class
name is its folder name with underscores read as spaces (``ankle_boot`` → ``ankle boot``). Empty class folders
still count as classes: the zero-shot classifier keeps them as choices.
"""

from __future__ import annotations

from pathlib import Path

from benchmark.data.sources import Item, Source
from benchmark.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root`` in sorted order (hidden folders ignored)."""
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"image folder {root} has no class sub-folders (expected root/<class>/<image>)")
    return folders


class ImageFolder(Source):
    """Every image file under each class folder (searched recursively), labelled with the folder's index."""

    def __init__(self, path: str, classnames: tuple[str, ...] | None = None) -> None:
        self.root = Path(path).expanduser()
        folders = class_folders(self.root)
        self.folder_names = tuple(folder.name for folder in folders)
        self.classnames = classnames or tuple(name.replace("_", " ") for name in self.folder_names)
        self.files: list[Path] = []
        self.labels: list[int] = []
        for label, folder in enumerate(folders):
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            self.files += files
            self.labels += [label] * len(files)
        if not self.files:
            raise UserError(f"image folder {self.root} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> Item:
        return Item(self.files[index], label=self.labels[index])

    def describe(self, index: int) -> str:
        return str(self.files[index])
