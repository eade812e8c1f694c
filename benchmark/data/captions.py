"""Captions for class-labelled images, so the text side of a pair is not one fixed string per class.

Each caption is a template filled with one of the class's synonyms, drawn from a seeded generator. The same
machinery writes the attacker's target captions (CleanCLIP replaces a poisoned caption with a random template
filled with the target name, reference §1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CaptionWriter:
    """Writes varied captions: ``templates`` contain ``{}``; ``synonyms[c]`` are the phrases for class ``c``."""

    templates: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]

    def caption(self, label: int, generator: torch.Generator) -> str:
        template = self.templates[int(torch.randint(len(self.templates), (1,), generator=generator))]
        names = self.synonyms[label]
        return template.format(names[int(torch.randint(len(names), (1,), generator=generator))])

    def captions(self, labels: torch.Tensor, generator: torch.Generator) -> list[str]:
        return [self.caption(int(label), generator) for label in labels]
