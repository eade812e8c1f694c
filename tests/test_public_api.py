"""``import cleanbench``: the public API a plugin author uses. Importing it is cheap (no torch until a name is
used), every name it lists resolves, and each is the very object of the engine's old import path, so plugins
written against either path see one registry, one base class."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import cleanbench


def test_importing_cleanbench_loads_no_torch():
    code = "import sys, cleanbench; assert cleanbench.__version__; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", sorted(cleanbench._EXPORTS))
def test_every_public_name_is_the_object_at_its_old_path(name):
    assert name in cleanbench.__all__ and name in dir(cleanbench)
    assert getattr(cleanbench, name) is getattr(importlib.import_module(cleanbench._EXPORTS[name]), name)


def test_what_a_plugin_needs_is_there():
    needed = {"Attack", "AttackContext", "PoisonTarget", "Defense", "DefenseContext", "ATTACKS", "DEFENSES",
              "pair_batches", "Normalizer", "Batch", "train", "clip_loss", "TrainRecipe", "check_range", "UserError",
              "check", "assert_conforms"}
    assert needed <= set(cleanbench.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'cleanbench' has no attribute 'Defence'"):
        cleanbench.Defence  # noqa: B018
