"""Backdoor attacks. Built-ins register lazily; plugins register through :data:`ATTACKS` too."""

from benchmark.registry import Registry

ATTACKS: Registry = Registry("attack")

for _name, _ref in {
    "badnet": "attacks.badnet:BadNet",
    "blended": "attacks.blended:Blended",
    "label-consistent": "attacks.label_consistent:LabelConsistent",
    "wanet": "attacks.wanet:WaNet",
}.items():
    ATTACKS.add(_name, _ref)

__all__ = ["ATTACKS"]
