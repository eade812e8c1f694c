"""Helpers shared by several test modules: the test preset, small attack inputs, tiny training batches, a
small runner plan and a hostile pickle. A plain module (tests import it as ``tests.helpers``); fixtures stay in ``conftest.py``."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import re
from pathlib import Path
from typing import Iterator

import torch

from attacks.base import AttackContext, PoisonTarget
from benchmark.data.pairs import PairSet

TEST_PRESET = Path(__file__).parent / "data" / "fmnist-test.toml"  # fmnist-tiny at test size: seconds, not minutes
MODEL = "cleanbench-vit-tiny"

# Attacks: 32 px images of the ten Fashion-MNIST classes, poisoned towards "bag".
SIZE = 32
CLASSES = ["t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
TARGET = PoisonTarget(8, "bag", lambda generator: f"a photo of a bag {int(torch.randint(100, (1,), generator=generator))}.",
                      synonyms=("handbag", "purse"))


# Attacks that optimise their trigger on a surrogate CLIP, with settings that keep that to a step or two: the
# registry's contract tests build every attack several times and must stay in seconds.
SURROGATE_SETTINGS = {"badclip": {"epochs": 1, "surrogate_epochs": 1, "surrogate_batch_size": 32}}


def make_attack(name: str, seed: int = 0, **config):
    """The registered attack ``name`` with ``config`` on :data:`SIZE` px images (an attack of
    :data:`SURROGATE_SETTINGS` with those settings under ``config`` and a :func:`surrogate_context`)."""
    from attacks import ATTACKS

    cls = ATTACKS.get(name)
    if name in SURROGATE_SETTINGS:
        return cls.from_settings({**SURROGATE_SETTINGS[name], **config}, context=surrogate_context(seed))
    return cls.from_settings(config, context=AttackContext(SIZE, seed, torch.device("cpu")))


def surrogate_context(seed: int = 0, **fields) -> AttackContext:
    """What an attack needs to train a surrogate: 64 clean pairs (six of the target), the tiny model and the
    target; ``fields`` set the rest (``cache_dir``, ``clean_data_key``)."""
    return AttackContext(SIZE, seed, torch.device("cpu"), clean_pairs=make_pairs(64, seed=1), model_name=MODEL,
                         target=TARGET, **fields)


def make_pairs(count: int = 80, seed: int = 0) -> PairSet:
    """Random images with class labels cycling through the ten classes, captions naming the class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    labels = torch.arange(count) % len(CLASSES)
    return PairSet(images, [f"a photo of a {CLASSES[label]} #{i}." for i, label in enumerate(labels.tolist())], labels)


# Training: 64 learnable pairs of 8 classes in batches of 16 (4 steps per epoch).
TRAIN_BATCH_SIZE = 16


def learnable_pairs() -> PairSet:
    """64 pairs, each class its own brightness, so a few steps visibly lower the loss."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 8
    noise = torch.randint(0, 64, (64, 3, 32, 32), generator=generator)
    images = (labels.view(-1, 1, 1, 1) * 24 + noise).to(torch.uint8)  # each class its own brightness: learnable
    words = ["bag", "coat", "shirt", "dress", "sandal", "sneaker", "trousers", "pullover"]
    return PairSet(images, [f"a photo of a {word}." for word in words * 8], labels)


def learnable_batches(model: torch.nn.Module):
    """:func:`learnable_pairs` in seeded batches of :data:`TRAIN_BATCH_SIZE` for ``model``."""
    from benchmark.data.batches import Normalizer, PairBatches
    from benchmark.models import tokenizer_for

    return PairBatches(learnable_pairs(), tokenizer_for(MODEL), Normalizer(model), TRAIN_BATCH_SIZE,
                       torch.Generator().manual_seed(7), torch.device("cpu"))


# Smaller than the test preset: 4 victim steps and 2 finetuning steps per victim, 50 test images. For runs in a
# process of their own (kill-and-resume tests), where a preset file is what travels.
SMALL_SIZES = {"train_pairs": 128, "clean_pairs": 64, "val_pairs": 32, "test_images": 50, "batch_size": 32}


def write_small_preset(path: Path, name: str = "fmnist-small", extra: str = "") -> Path:
    """The test preset at :data:`SMALL_SIZES`, named ``name``, with ``extra`` TOML appended, written to ``path``."""
    text = TEST_PRESET.read_text().replace('name = "fmnist-test"', f'name = "{name}"')
    for key, value in SMALL_SIZES.items():
        text, count = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text)
        assert count >= 1, key
    path.write_text(text + extra)
    return path


def small_plan():
    """Two cells on two victims (the benign control and badnet, each with no defense): two groups, two jobs.
    The test preset is shrunk further (the plan travels to the workers whole), to keep each job to seconds."""
    from benchmark.presets import load_preset
    from benchmark.runner import plan_grid

    preset = load_preset(str(TEST_PRESET))
    preset = dataclasses.replace(preset, data=dataclasses.replace(preset.data, train_pairs=128, test_images=100),
                                 victim=dataclasses.replace(preset.victim, batch_size=32))
    return plan_grid(preset, ["badnet"], ["none"], [0])


class RunsCode:
    """A pickle that runs code when unpickled: it creates the file ``path``. If the file exists, a pickle ran code
    (checkpoint loading must refuse such a file, never unpickle it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').close()",))


README = Path(__file__).parent.parent / "README.md"
INTERNAL = {"attacks", "defenses", "benchmark", "leaderboard"}  # the engine: importable, but not the public API


def imported_packages(code: str) -> set[str]:
    """The top-level packages ``code`` imports."""
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").partition(".")[0])
    return modules


def readme_walkthrough() -> list[str]:
    """The README's plugin walkthrough, one command per line (comments dropped)."""
    block = re.search(r"```bash\n(cleanbench new defense my-defense.*?)```", README.read_text(), re.S).group(1)
    return [line.partition("#")[0].strip() for line in block.splitlines()]


@contextlib.contextmanager
def runtime_set(runtime) -> Iterator[None]:
    """``runtime`` (a :class:`benchmark.device.Runtime`) as the current runtime inside the block, the previous
    one restored after."""
    from benchmark.device import current_runtime, set_runtime

    previous = current_runtime()
    set_runtime(runtime)
    try:
        yield
    finally:
        set_runtime(previous)
