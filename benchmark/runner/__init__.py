"""The grid runner: plan the cells, reuse what is cached, train each victim once, defend, evaluate, record."""

from benchmark.runner.grid import run_plan
from benchmark.runner.plan import Plan, plan_grid

__all__ = ["Plan", "plan_grid", "run_plan"]
