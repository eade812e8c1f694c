"""Runtime settings of the training loop: bf16 autocast only where asked (by default only on CUDA, so the CPU
path is unchanged), channels-last only for convolutional models on CUDA, and images/s logged per epoch."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from benchmark.device import Runtime, current_runtime, set_runtime
from benchmark.errors import UserError
from benchmark.models import create_model
from benchmark.progress import Reporter
from benchmark.training import train
from benchmark.training_recipe import TrainRecipe
from tests.helpers import MODEL, learnable_batches

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_bf16_autocast_by_default_only_on_cuda():
    cuda = Runtime().autocast(CUDA)
    assert isinstance(cuda, torch.autocast) and cuda.fast_dtype == torch.bfloat16
    assert not isinstance(Runtime().autocast(CPU), torch.autocast)
    assert not isinstance(Runtime("fp32").autocast(CUDA), torch.autocast)
    with pytest.raises(UserError, match="--precision 'fp16'"):
        Runtime("fp16")  # type: ignore[arg-type]


def test_channels_last_only_for_convolutional_models_on_cuda():
    resnet, vit = create_model("RN50"), create_model(MODEL)
    assert Runtime().channels_last(resnet, CUDA)
    assert not Runtime().channels_last(vit, CUDA)  # one patch convolution: nothing to gain
    assert not Runtime().channels_last(resnet, CPU)


def test_forced_bf16_trains_on_cpu_and_each_epoch_logs_its_throughput():
    model = create_model(MODEL, seed=0)
    output = io.StringIO()
    previous = current_runtime()
    set_runtime(Runtime("bf16"))
    try:
        stats = train(model, learnable_batches(model), TrainRecipe(epochs=2, batch_size=16, lr=1e-3),
                      reporter=Reporter(console=Console(file=output), live=False), description="victim")
    finally:
        set_runtime(previous)
    lines = [line for line in output.getvalue().splitlines() if "images/s" in line]
    assert len(lines) == 2 and "victim: epoch 2/2, loss" in lines[1]
    assert len(stats.epoch_images_per_second) == 2 and min(stats.epoch_images_per_second) > 0
    assert torch.isfinite(torch.tensor(stats.final_loss))
