"""Backdoor attacks: one module per attack, whose class registers itself with ``@ATTACKS.register()`` as a
plugin's does. The modules are imported on the registry's first use (:class:`benchmark.registry.Registry`)."""

from benchmark.registry import Registry

ATTACKS: Registry = Registry("attack", builtins="attacks")

__all__ = ["ATTACKS"]
