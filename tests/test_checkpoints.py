"""Weights in and out: cleanbench's checkpoints load in plain open_clip, open_clip's load in cleanbench, and no
untrusted pickle or TorchScript program is ever run without the user saying so."""

from __future__ import annotations

import pickle

import open_clip
import pytest
import torch

from benchmark.checkpoints import save_state_dict
from benchmark.errors import UserError
from benchmark.models import CONFIG_DIR, create_model, tokenizer_for
from tests.helpers import RunsCode

MODEL = "cleanbench-vit-tiny"


def _embeddings(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = tokenizer_for(MODEL)(["a photo of a bag.", "a coat", "a shirt", "this is a dress."])
    model.eval()
    with torch.no_grad():  # open_clip's own text encoder, so that cleanbench's shorter one cannot differ by rounding
        return model.encode_image(images), open_clip.CLIP.encode_text(model, texts)


def _assert_same_embeddings(a: torch.nn.Module, b: torch.nn.Module) -> None:
    (image_a, text_a), (image_b, text_b) = _embeddings(a), _embeddings(b)
    assert torch.equal(image_a, image_b) and torch.equal(text_a, text_b)


def test_a_cleanbench_checkpoint_loads_in_plain_open_clip(tmp_path):
    model = create_model(MODEL, seed=1)
    path = tmp_path / "model.safetensors"
    save_state_dict(model, path)
    open_clip.add_model_config(CONFIG_DIR)  # the only cleanbench-specific step: the tiny architecture's JSON
    plain = open_clip.create_model(MODEL, pretrained=str(path))
    _assert_same_embeddings(model, plain)
    assert not torch.equal(_embeddings(create_model(MODEL, seed=2))[0], _embeddings(model)[0])


def test_open_clip_training_script_checkpoint_loads_in_cleanbench(tmp_path):
    source = create_model(MODEL, seed=3)
    optimizer = torch.optim.AdamW(source.parameters(), lr=1e-3)
    source(torch.rand(2, 3, 32, 32), tokenizer_for(MODEL)(["a", "b"]))["image_features"].sum().backward()
    optimizer.step()
    path = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "name": "run", "optimizer": optimizer.state_dict(),
                "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    _assert_same_embeddings(source, create_model(MODEL, pretrained=str(path)))


def test_a_plain_state_dict_file_loads(tmp_path):
    source = create_model(MODEL, seed=4)
    path = tmp_path / "weights.bin"
    torch.save(source.state_dict(), path)
    _assert_same_embeddings(source, create_model(MODEL, pretrained=str(path)))


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {"x": RunsCode(marker)}}, handle)
    with pytest.raises(UserError, match="refused to load .*convert it to safetensors"):
        create_model(MODEL, pretrained=str(path))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore")  # tracing and torch.jit.load warn about themselves
def test_torchscript_needs_the_explicit_flag(tmp_path):
    source = create_model(MODEL, seed=5)
    source.output_dict = False
    mask = source._buffers.pop("attn_mask")  # a constant, as in OpenAI's archives, not a state-dict entry
    source.attn_mask = mask
    traced = torch.jit.trace(source, (torch.rand(2, 3, 32, 32), tokenizer_for(MODEL)(["a", "b"])), check_trace=False)
    path = tmp_path / "RN50.pt"
    traced.save(str(path))
    with pytest.raises(UserError, match="TorchScript archive .* allow_torchscript = true"):
        create_model(MODEL, pretrained=str(path))
    _assert_same_embeddings(source, create_model(MODEL, pretrained=str(path), allow_torchscript=True))


def test_unknown_tag_missing_file_and_wrong_architecture_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="neither a file nor a pretrained tag of RN50; tags: .*openai"):
        create_model("RN50", pretrained="opnai")
    with pytest.raises(UserError, match="does not exist"):
        create_model(MODEL, pretrained=str(tmp_path / "missing.safetensors"))
    other = tmp_path / "other.safetensors"
    save_state_dict(torch.nn.Linear(2, 2), other)
    with pytest.raises(UserError, match="does not fit the model architecture"):
        create_model(MODEL, pretrained=str(other))
