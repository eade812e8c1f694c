"""Backdoor attacks: one module per attack, whose class registers itself with ``@ATTACKS.register()`` as a
plugin's does. The modules are imported on the registry's first use (:class:`benchmark.registry.Registry`), which
refuses, at registration, a class that is not an :class:`attacks.base.Attack`."""

from benchmark.registry import Registry

ATTACKS: Registry = Registry("attack", builtins="attacks", base_cls="attacks.base:Attack")

__all__ = ["ATTACKS"]
