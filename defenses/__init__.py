"""Backdoor defenses: one module per defense, whose class registers itself with ``@DEFENSES.register()`` as a
plugin's does. The modules are imported on the registry's first use (:class:`benchmark.registry.Registry`), which
refuses, at registration, a class that is not a :class:`defenses.base.Defense` of a known stage
(:func:`stage_contract`)."""

from __future__ import annotations

from benchmark.registry import Registry


def stage_contract(cls: type) -> str | None:
    """What is wrong with a Defense subclass's stage, or None: the stage must be in the table of stages
    (:data:`benchmark.stages.STAGES`) and the class must derive from that stage's contract (a ``data`` defense is a
    :class:`~defenses.base.Detector`, a ``training`` one a :class:`~defenses.base.TrainingDefense`)."""
    from benchmark.stages import STAGES

    stage = STAGES.get(getattr(cls, "stage", None))
    if stage is None:
        return f"class {cls.__name__} has stage {getattr(cls, 'stage', None)!r}; the stages are: {', '.join(STAGES)}"
    contract = stage.contract_class()
    if not issubclass(cls, contract):
        return (f"class {cls.__name__} has stage '{stage.name}' but does not derive from "
                f"{contract.__module__}.{contract.__qualname__}")
    return None


DEFENSES: Registry = Registry("defense", builtins="defenses", base_cls="defenses.base:Defense", check=stage_contract)

__all__ = ["DEFENSES", "stage_contract"]
