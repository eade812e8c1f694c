"""The GPU paths on a real GPU (issue 19): device selection, bf16 autocast on and off, channels-last ResNets,
batches through pinned memory, and a checkpoint written on the GPU loading on the CPU with equal outputs.

The CPU suite can only check the settings these paths read (``tests/test_device.py``); these tests run them on
CUDA. They are skipped where there is no CUDA device; ``pytest -m gpu`` (or ``benchmarks/gpu_check.py``, which
starts with them) selects them.
"""

from __future__ import annotations


import pytest
import torch

from benchmark.checkpoints import load_weights, save_state_dict
from benchmark.data.pairs import PairSet
from benchmark.data.batches import Normalizer, PairBatches, to_device
from benchmark.device import Runtime, resolve_device
from benchmark.models import create_model, model_config, tokenizer_for
from benchmark.training import clip_loss, train
from benchmark.training_recipe import TrainRecipe
from tests.helpers import runtime_set

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
MODEL = "cleanbench-vit-tiny"
CAPTIONS = ["a photo of a bag.", "a coat on a plain background.", "a blurry photo of a shirt.", "this is a dress."]


def _pairs(count: int, model: str = MODEL) -> PairSet:
    size = model_config(model)["vision_cfg"]["image_size"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return PairSet(images, [CAPTIONS[i % len(CAPTIONS)] for i in range(count)], torch.zeros(count, dtype=torch.long))


def _batches(model: torch.nn.Module, pairs: PairSet, batch_size: int, device: torch.device = CUDA,
             name: str = MODEL) -> PairBatches:
    return PairBatches(pairs, tokenizer_for(name), Normalizer(model), batch_size, torch.Generator().manual_seed(0),
                       device)


def test_auto_selects_the_gpu():
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


@pytest.mark.parametrize("precision, bf16", [("auto", True), ("bf16", True), ("fp32", False)])
def test_bf16_autocast_on_and_off(precision, bf16):
    model = create_model(MODEL, seed=0).to(CUDA)
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    seen = []

    def loss_fn(net, batch):
        seen.append(torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16)
        return clip_loss(net, batch)

    with runtime_set(Runtime(precision)):  # type: ignore[arg-type]
        stats = train(model, _batches(model, _pairs(64), 16), TrainRecipe(epochs=1, batch_size=16, lr=1e-3),
                      loss_fn=loss_fn)
    assert seen == [bf16] * 4 and torch.isfinite(torch.tensor(stats.final_loss))
    assert all(value.dtype == torch.float32 for value in model.state_dict().values() if value.is_floating_point())
    assert not torch.equal(model.state_dict()["visual.conv1.weight"], before["visual.conv1.weight"])


def test_resnets_train_in_channels_last_and_vits_do_not():
    formats = []

    def loss_fn(net, batch):
        formats.append(batch["images"].is_contiguous(memory_format=torch.channels_last))
        return clip_loss(net, batch)

    resnet = create_model("RN50", seed=0).to(CUDA)
    train(resnet, _batches(resnet, _pairs(8, "RN50"), 4, name="RN50"), TrainRecipe(batch_size=4), loss_fn=loss_fn)
    weight = resnet.visual.conv1.weight  # a 3×3 kernel: the two formats differ
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert formats == [True, True]
    vit = create_model(MODEL, seed=0).to(CUDA)
    train(vit, _batches(vit, _pairs(32), 16), TrainRecipe(batch_size=16), loss_fn=loss_fn)
    assert vit.visual.conv1.weight.is_contiguous() and formats[2:] == [False, False]


def test_batches_come_through_pinned_memory(monkeypatch):
    pinned = []
    original = torch.Tensor.pin_memory

    def spy(self, *args, **kwargs):
        copy = original(self, *args, **kwargs)
        pinned.append(copy.is_pinned())
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    model, pairs = create_model(MODEL, seed=0), _pairs(32)
    on_gpu = next(iter(_batches(model, pairs, 16)))
    on_cpu = next(iter(_batches(model, pairs, 16, CPU)))  # the same draw: the same batch, normalised on the CPU
    assert pinned == [True] and on_gpu["images"].device.type == "cuda" and on_gpu["texts"].device.type == "cuda"
    assert torch.allclose(on_gpu["images"].cpu(), on_cpu["images"], atol=1e-6)
    assert torch.equal(on_gpu["texts"].cpu(), on_cpu["texts"])
    streamed = to_device(pairs.images[:8], CUDA)  # the streamed splits' path
    assert pinned == [True, True] and torch.equal(streamed.cpu(), pairs.images[:8])


@pytest.mark.parametrize("name", [MODEL, "RN50"])
def test_a_checkpoint_written_on_the_gpu_loads_on_the_cpu_with_equal_outputs(tmp_path, name):
    model = create_model(name, seed=0).to(CUDA)
    train(model, _batches(model, _pairs(8, name), 4, name=name), TrainRecipe(batch_size=4, lr=1e-3))
    path = tmp_path / "model.safetensors"
    save_state_dict(model, path)  # RN50 trained in channels-last: written as plain contiguous tensors
    size = model_config(name)["vision_cfg"]["image_size"]
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    texts = tokenizer_for(name)(CAPTIONS[:2])
    loaded = create_model(name, seed=1)
    load_weights(loaded, path)
    trained = {key: value.cpu() for key, value in model.state_dict().items()}
    assert all(torch.equal(value, trained[key]) for key, value in loaded.state_dict().items())
    with torch.no_grad():
        on_gpu = model.eval()(images.to(CUDA), texts.to(CUDA))
        on_cpu = loaded.eval()(images, texts)
        # the trained model itself, moved to the CPU in the default memory format (a channels-last RN50 may pick
        # another convolution algorithm there, which rounds differently)
        reference = model.cpu().to(memory_format=torch.contiguous_format)(images, texts)
    for key in ("image_features", "text_features"):
        assert torch.equal(on_cpu[key], reference[key])
        assert torch.allclose(on_cpu[key], on_gpu[key].cpu(), atol=2e-3)  # cuDNN's TF32 convolutions round
