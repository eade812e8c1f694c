"""``python -m benchmark.cli``; also how ``torchrun -m benchmark.cli`` starts each rank (see
:func:`benchmark.distributed.torchrun_command`)."""

from benchmark.cli import main

if __name__ == "__main__":
    main()
