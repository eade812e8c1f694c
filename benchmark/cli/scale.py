"""``cleanbench run``'s options for scale: precision and compilation, DDP processes per cell, and the executor
(local workers or Slurm jobs). Kept here so ``commands.py`` stays a thin list of commands."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from benchmark.errors import UserError

PrecisionOption = typer.Option("auto", help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16.")
CompileOption = typer.Option(False, "--compile", help="torch.compile the model for training (GPU; compiles first).")
GpusOption = typer.Option(1, help="Processes (GPUs) training each victim and finetuning defense together with DDP: "
                                  "relaunches under torchrun; with --executor slurm, GPUs per job.")
ExecutorOption = typer.Option("local", help="local (workers on this machine) or slurm (a job per victim, submitit).")
WorkersOption = typer.Option(0, help="Local worker processes: one per GPU; on the CPU they split the cores. "
                                        "0 = one per visible GPU, on the CPU one per core (at most 4); "
                                        "1 = everything in this process.")
SlurmPartitionOption = typer.Option("", help="Slurm partition of the jobs.")
SlurmTimeOption = typer.Option(240, help="Slurm time limit per job, in minutes; a timed-out job is requeued.")
SlurmRequeueOption = typer.Option(3, help="How often a timed-out job is requeued (it resumes from the cache).")
SlurmExtraOption = typer.Option(None, "--slurm-option",
                                help="Further sbatch option KEY=VALUE, e.g. account=abc, qos=high (repeatable).")


def relaunch_under_torchrun(gpus: int, executor: str) -> bool:
    """Rerun this command as ``gpus`` torchrun ranks unless already one of them; True when it was relaunched
    (the caller then exits with the ranks' status, which this raises as ``typer.Exit``)."""
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: give 1 or more")
    if gpus == 1 or executor != "local":
        return False
    if "WORLD_SIZE" in os.environ:
        if int(os.environ["WORLD_SIZE"]) != gpus:
            raise UserError(f"--gpus {gpus} but torchrun started {os.environ['WORLD_SIZE']} processes")
        return False
    from benchmark.distributed import torchrun_command

    status = subprocess.call(torchrun_command(gpus, sys.argv[1:]))
    raise typer.Exit(status)
