"""Backdoor defenses. Built-ins register lazily; plugins register through :data:`DEFENSES` too."""

from benchmark.registry import Registry

DEFENSES: Registry = Registry("defense")

for _name, _ref in {
    "none": "defenses.none:NoDefense",
    "finetune": "defenses.finetune:Finetune",
    "cleanclip": "defenses.cleanclip:CleanCLIP",
    "ssl-only": "defenses.ssl_only:SSLOnly",
    "supervised": "defenses.supervised:Supervised",
}.items():
    DEFENSES.add(_name, _ref)

__all__ = ["DEFENSES"]
