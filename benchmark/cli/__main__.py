"""``python -m benchmark.cli`` (and ``torchrun -m benchmark.cli``, see :func:`benchmark.distributed.torchrun_command`)."""

from benchmark.cli import main

if __name__ == "__main__":
    main()
