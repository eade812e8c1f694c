"""Backdoor defenses. Built-ins register lazily; plugins register through :data:`DEFENSES` too."""

from benchmark.registry import Registry

DEFENSES: Registry = Registry("defense")

for _name, _ref in {
    "none": "defenses.none:NoDefense",
    "finetune": "defenses.finetune:Finetune",
}.items():
    DEFENSES.add(_name, _ref)

__all__ = ["DEFENSES"]
