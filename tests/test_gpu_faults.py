"""The GPU path's faults found by reading it (issue 19's note, fixed in issue 40), each checked on the CPU: no
host sync in a training step, one ``torch.compile`` per process and model configuration, evaluation under the
configured autocast. (Several local workers sharing one GPU: ``tests/test_executors.py``.)"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import pytest
import torch

from benchmark.data.batches import Normalizer, PairBatches
from benchmark.data.pairs import PairSet
from benchmark.device import Runtime
from benchmark.models import create_model, tokenizer_for
from benchmark.training import train
from benchmark.training_recipe import TrainRecipe
from tests.helpers import runtime_set

MODEL = "cleanbench-vit-tiny"
CPU = torch.device("cpu")
# Every way a tensor's value reaches Python: on a GPU each one waits for the device (a host sync).
SYNCS = ("item", "cpu", "tolist", "numpy", "__int__", "__float__", "__bool__", "__index__")


def _pairs(count: int = 32) -> PairSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
    words = ["bag", "coat", "shirt", "dress"]
    return PairSet(images, [f"a photo of a {words[i % 4]}." for i in range(count)], torch.arange(count) % 4)


@contextlib.contextmanager
def _counting_syncs() -> Iterator[Counter]:
    counts: Counter = Counter()
    with pytest.MonkeyPatch.context() as patch:
        for name in SYNCS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _name=name, _original=original, **kwargs):
                counts[_name] += 1
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        yield counts


def test_a_training_step_never_syncs_with_the_device():
    """The batches are made first (their token ids are cut on the CPU, before the copy to the device); the steps
    then read nothing back: the loss log and the NaN guard read the losses once per epoch here."""
    model = create_model(MODEL, seed=0)
    batches = list(PairBatches(_pairs(), tokenizer_for(MODEL), Normalizer(model), 8,
                               torch.Generator().manual_seed(0), CPU))
    epochs = 2
    with _counting_syncs() as counts:
        stats = train(model, batches, TrainRecipe(epochs=epochs, batch_size=8, lr=1e-3, warmup_steps=2))
    assert stats.steps == 4 * epochs
    assert sum(counts.values()) <= epochs, counts  # one read of the losses per epoch, none per step
    assert all(batch["texts"].shape[1] < model.positional_embedding.shape[0] for batch in batches)


def test_the_normalizer_copies_mean_and_std_to_the_device_once(monkeypatch):
    model = create_model(MODEL, seed=0)
    normalize = Normalizer(model)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    first = normalize(images)
    copies = Counter()
    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        copies["to"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    for _ in range(3):
        assert torch.equal(normalize(images), first)
    assert copies["to"] == 0  # the old Normalizer called .to twice per batch


def test_the_nan_guard_names_the_first_non_finite_step_read_at_the_sync_point():
    """The guard reads the losses at the sync points now (not after every step) and still names the step."""
    model = torch.nn.Linear(2, 2)
    batches = [{"x": torch.ones(4, 2), "bad": torch.tensor(float(step == 2))} for step in range(5)]

    def loss_fn(model, batch):
        return model(batch["x"]).sum() + torch.log(1 - batch["bad"])  # -inf at step 2 only

    from benchmark.training import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"loss is -inf at step 2 \(epoch 1\)"):
        train(model, batches, TrainRecipe(epochs=1, batch_size=4), loss_fn=loss_fn)


def test_compile_runs_once_per_process_and_model_configuration(monkeypatch):
    """Two victims (two trainings of fresh models of one configuration) share one ``torch.compile``."""
    import benchmark.training as training

    calls = []

    def counting_compile(fn, *args, **kwargs):
        calls.append(fn)
        return fn  # eager: the count is what matters here

    monkeypatch.setattr(torch, "compile", counting_compile)
    monkeypatch.setattr(training, "_compiled_forwards", {}, raising=False)
    with runtime_set(Runtime(compile=True)):
        for seed in (0, 1):
            model = create_model(MODEL, seed=seed)
            batches = PairBatches(_pairs(16), tokenizer_for(MODEL), Normalizer(model), 8,
                                  torch.Generator().manual_seed(seed), CPU)
            train(model, batches, TrainRecipe(epochs=1, batch_size=8, lr=1e-3))
    assert len(calls) == 1


def test_the_compiled_path_trains_the_same_weights_with_the_eager_backend():
    """The shared compiled forward (dynamo, eager backend: no C++ compiler needed) trains as the plain model."""
    import functools

    import benchmark.training as training

    def trained(compile_model: bool) -> dict[str, torch.Tensor]:
        model = create_model(MODEL, seed=0)
        batches = PairBatches(_pairs(16), tokenizer_for(MODEL), Normalizer(model), 8,
                              torch.Generator().manual_seed(0), CPU)
        with runtime_set(Runtime(compile=compile_model)):
            train(model, batches, TrainRecipe(epochs=1, batch_size=8, lr=1e-3))
        return model.state_dict()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
        patch.setattr(training, "_compiled_forwards", {}, raising=False)
        compiled_weights = trained(True)
    eager_weights = trained(False)
    assert all(torch.allclose(compiled_weights[key], eager_weights[key], atol=1e-5) for key in eager_weights)


def test_evaluation_runs_under_the_configured_autocast(monkeypatch):
    """Evaluation (the zero-shot class embeddings and every forward pass) enters the runtime's autocast, as a
    training step does: bf16 on CUDA by default, where it ran in fp32 before."""
    from benchmark.data.pairs import EvalSet
    from benchmark.device import Runtime
    from benchmark.metrics import classifier_for, evaluate

    depth, entered = [0], []

    @contextlib.contextmanager
    def recording(self, device):
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    monkeypatch.setattr(Runtime, "autocast", recording)
    model = create_model(MODEL, seed=0)
    forward = model.encode_image

    def encode_image(*args, **kwargs):
        entered.append(depth[0] > 0)
        return forward(*args, **kwargs)

    encode_text = model.encode_text

    def encode_text_recorded(*args, **kwargs):
        entered.append(depth[0] > 0)
        return encode_text(*args, **kwargs)

    monkeypatch.setattr(model, "encode_image", encode_image)
    monkeypatch.setattr(model, "encode_text", encode_text_recorded)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    eval_set = EvalSet(images, torch.arange(6) % 3, ["bag", "coat", "shirt"])
    classifier = classifier_for(model, tokenizer_for(MODEL), eval_set, CPU)
    evaluate(classifier, eval_set, target=0, trigger=lambda x, g: x.flip(-1), seed=0, device=CPU)
    assert len(entered) >= 3 and all(entered), entered
