"""Backdoor defenses: one module per defense, whose class registers itself with ``@DEFENSES.register()`` as a
plugin's does. The modules are imported on the registry's first use (:class:`benchmark.registry.Registry`)."""

from benchmark.registry import Registry

DEFENSES: Registry = Registry("defense", builtins="defenses")

__all__ = ["DEFENSES"]
