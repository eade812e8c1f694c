"""Backdoor defenses: one module per defense, whose class registers itself with ``@DEFENSES.register()`` as a
plugin's does. The modules are imported on the registry's first use (:class:`benchmark.registry.Registry`), which
refuses, at registration, a class that is not a :class:`defenses.base.Defense` of a known stage
(:func:`stage_contract`)."""

from __future__ import annotations

from benchmark.registry import Registry


def stage_contract(cls: type) -> str | None:
    """What is wrong with a Defense subclass's stage, or None: the stage must be one of
    :data:`benchmark.results.DEFENSE_STAGES` and the class must derive from that stage's contract (a ``data``
    defense is a :class:`~defenses.base.Detector`, a ``training`` one a :class:`~defenses.base.TrainingDefense`)."""
    from benchmark.results import DEFENSE_STAGES
    from defenses.base import Defense, Detector, TrainingDefense

    stage = getattr(cls, "stage", None)
    if stage not in DEFENSE_STAGES:
        return f"class {cls.__name__} has stage {stage!r}; the stages are: {', '.join(DEFENSE_STAGES)}"
    contract = {"data": Detector, "training": TrainingDefense}.get(stage, Defense)
    if not issubclass(cls, contract):
        return (f"class {cls.__name__} has stage '{stage}' but does not derive from "
                f"{contract.__module__}.{contract.__qualname__}")
    return None


DEFENSES: Registry = Registry("defense", builtins="defenses", base_cls="defenses.base:Defense", check=stage_contract)

__all__ = ["DEFENSES", "stage_contract"]
