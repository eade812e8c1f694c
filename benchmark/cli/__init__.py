"""The ``cleanbench`` command line (typer): ``app`` holds the commands, ``main`` is the console script.

- :mod:`benchmark.cli.commands`: the app; ``run``, ``leaderboard`` and ``list``.
- :mod:`benchmark.cli.validate`: ``validate`` and the ``--data`` option it shares with ``run``.
- :mod:`benchmark.cli.attacks`: ``attacks show``.
- :mod:`benchmark.cli.new`: ``new attack|defense NAME``, a plugin package.
- :mod:`benchmark.cli.check`: ``check NAME|FILE``, the conformance suite.
- :mod:`benchmark.cli.scale`: ``run``'s options for precision, DDP and the executors.
- :mod:`benchmark.cli.support`: the options the commands share, plugin loading, one-line user errors.

Every module here imports only typer and torch-free engine modules at the top, so ``--help`` stays fast.
"""

from benchmark.cli.commands import app, main

__all__ = ["app", "main"]
