"""Training from splits streamed off disk (the paper presets' CC3M pairs): a grid runs end to end, the poisoned
pairs reach the model with their trigger and target caption, reruns reuse the cache, and without unreadable
images a streamed split trains the very model the same split trains from memory."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attacks import ATTACKS
from attacks.base import AttackContext, PoisonTarget
from benchmark.data.batches import Normalizer, pair_batches
from benchmark.data.formats import open_source
from benchmark.data.loader import BadImageBudget, StreamingPairs, materialise
from benchmark.data.pairs import PairSet
from benchmark.errors import UserError
from benchmark.models import tokenizer_for
from benchmark.poisoning import PoisonedStream, poison_split
from benchmark.presets import SourceSpec, parse_preset
from benchmark.runner import plan_grid, run_plan
from benchmark.runner.store import ArtifactStore
from benchmark.task import build_task
from tests import data_formats as make
from tests.helpers import make_attack

CPU = torch.device("cpu")
PAIRS, IMAGES = 100, 30
# 0.0001 GB = 100 kB at 3 kB per 32 px image: the 30 evaluation images fit, 48 training and 40 clean pairs stream.
STREAMED = 0.0001
CHECKER = ((torch.arange(3)[:, None] + torch.arange(3)[None, :]) % 2 * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("streaming")
    make.write_csv(root / "csv", PAIRS)
    make.write_image_folder(root / "folder", IMAGES)
    return root


def preset_for(root: Path, memory_gb: float = 8.0, **data):
    text = make.preset_text(f'{{format = "csv", path = "{root / "csv" / "train.csv"}"}}',
                            f'{{format = "imagefolder", path = "{root / "folder"}"}}',
                            **{"train_pairs": 48, "clean_pairs": 40, "memory_gb": memory_gb, **data})
    raw = tomllib.loads(text)
    raw["attacks"]["badnet"].update(pattern="checkerboard", location="top-left")  # visible in every batch
    raw["victim"]["batch_size"] = raw["finetune"]["batch_size"] = 16  # few steps: this file stays well under a minute
    return parse_preset(raw)


def has_trigger(images: torch.Tensor) -> torch.Tensor:
    """Which uint8 images carry the 3 px checkerboard in the top-left corner (in all three channels)."""
    return (images[:, :, :3, :3] == CHECKER).flatten(1).all(1)


@pytest.fixture(scope="module")
def streamed_run(data_dir, tmp_path_factory):
    """badnet × {none, finetune, cleanclip, supervised}, seed 0, on streamed splits; the victims' batches recorded."""
    import benchmark.victim_training as victim_training
    from benchmark.training import clip_loss

    preset = preset_for(data_dir, STREAMED)
    plan = plan_grid(preset, ["badnet"], ["none", "finetune", "cleanclip", "supervised"], [0])
    seen: dict[str, list] = {}
    real_train = victim_training.train

    def spying_train(model, batches, recipe, **options):
        record = seen.setdefault(options.get("description", ""), [])

        def loss(net, batch):
            record.append({key: value.detach().clone() for key, value in batch.items()})
            return clip_loss(net, batch)

        return real_train(model, batches, recipe, **{**options, "loss_fn": loss})

    out = tmp_path_factory.mktemp("streamed-run")
    patch = pytest.MonkeyPatch()
    patch.setattr(victim_training, "train", spying_train)
    try:
        summary = run_plan(plan, out, CPU)
    finally:
        patch.undo()
    return plan, out, summary, seen


def test_a_grid_trains_and_defends_from_streamed_splits(streamed_run):
    plan, out, summary, _ = streamed_run
    task = build_task(plan.preset)
    assert isinstance(task.train_pairs, StreamingPairs) and isinstance(task.clean_pairs, StreamingPairs)
    assert (summary.victims_trained, summary.cells_run) == (2, 6)
    rows = pd.read_csv(out / "results.csv").set_index(["attack", "defense"])
    for attack in ("none", "badnet"):
        for defense in ("none", "finetune", "cleanclip"):
            assert rows.loc[(attack, defense), "status"] == "ok", rows.loc[(attack, defense), "reason"]
        # the clean pairs of caption sources have no class labels: supervised finetuning says so, and only it fails
        assert rows.loc[(attack, "supervised"), "status"] == "failed"
        assert "needs at least 2 clean images labelled" in rows.loc[(attack, "supervised"), "reason"]


def test_poisoned_indices_reach_the_model_with_trigger_and_target_caption(streamed_run):
    plan, out, _, seen = streamed_run
    victim = next(v for v in plan.victims if v.attack == "badnet")
    manifest = json.loads((ArtifactStore(out / "cache").victim_dir(victim.key) / "poison_manifest.json").read_text())
    assert len(manifest["indices"]) == 4 and all("banana" in c for c in manifest["captions_after"])
    # token ids without their padding: a batch's ids are cut to its captions' length (benchmark.text_context)
    ids = lambda row: tuple(row[: max(i for i, token in enumerate(row) if token) + 1])  # noqa: E731
    poisoned_texts = {ids(t) for t in tokenizer_for(plan.preset.model.name)(manifest["captions_after"]).tolist()}

    batches = seen[f"victim badnet s{victim.seed}"]  # what the model saw: normalised images, token ids
    pixels = to_uint8(torch.cat([b["images"] for b in batches]))
    texts = [ids(t) for b in batches for t in b["texts"].tolist()]
    triggered = has_trigger(pixels).tolist()
    assert sum(triggered) == 4  # 48 pairs, batch 16: one epoch sees every pair once, the 4 poisoned ones too
    # each with its caption naming the target (as some clean captions do too: "a photo of a banana.")
    assert all(text in poisoned_texts for text, hit in zip(texts, triggered) if hit)
    benign = to_uint8(torch.cat([b["images"] for b in seen["victim none s0"]]))
    assert not bool(has_trigger(benign).any())


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Normalised model input back to pixels (the tiny ViT uses CLIP's mean and std, Normalizer's defaults)."""
    stub = torch.nn.Module()
    stub.visual = torch.nn.Module()
    normalizer = Normalizer(stub)
    return (images * normalizer.std + normalizer.mean).mul(255).round().clamp(0, 255).to(torch.uint8)


def test_reruns_reuse_every_cached_victim_and_cell(streamed_run):
    plan, out, _, _ = streamed_run
    again = run_plan(plan_grid(plan.preset, ["badnet"], ["none", "finetune", "cleanclip", "supervised"], [0]),
                     out, CPU)
    assert (again.victims_trained, again.victims_loaded, again.cells_failed) == (0, 2, 2)  # only the failed cells rerun
    assert again.cells_skipped == 6


def test_streamed_splits_train_the_same_models_as_in_memory(streamed_run, data_dir, tmp_path):
    plan, out, _, _ = streamed_run
    in_memory = plan_grid(preset_for(data_dir), ["badnet"], ["none", "finetune"], [0])
    assert isinstance(build_task(in_memory.preset).train_pairs, PairSet)
    summary = run_plan(in_memory, tmp_path, CPU)
    assert (summary.victims_trained, summary.cells_failed) == (2, 0)
    for streamed, memory in zip(plan.victims, in_memory.victims):
        assert streamed.key != memory.key  # a streamed split is part of what a victim is keyed on
        checkpoints = [ArtifactStore(root / "cache").victim_dir(v.key) / "model.safetensors"
                       for root, v in ((out, streamed), (tmp_path, memory))]
        assert checkpoints[0].read_bytes() == checkpoints[1].read_bytes(), f"victim {streamed.attack} differs"
    streamed_rows = pd.read_csv(out / "results.csv").set_index(["attack", "defense"])
    memory_rows = pd.read_csv(tmp_path / "results.csv").set_index(["attack", "defense"])
    for cell in [("none", "none"), ("badnet", "none"), ("none", "finetune"), ("badnet", "finetune")]:
        assert list(streamed_rows.loc[cell, ["ca", "asr"]].fillna(-1)) == list(memory_rows.loc[cell, ["ca", "asr"]].fillna(-1))


@pytest.fixture(scope="module")
def splits(data_dir):
    """The first 48 pairs of the CSV, held in memory and streamed."""
    source = open_source(SourceSpec("csv", str(data_dir / "csv" / "train.csv")), "train")
    positions = np.arange(48)
    budget = BadImageBudget(0)
    return materialise(source, positions, 32, 0, budget), StreamingPairs(source, positions, 32, 0, budget)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_a_streamed_split_is_poisoned_exactly_as_in_memory(splits, name):
    memory, stream = splits
    target = PoisonTarget(0, "banana", lambda g: f"a banana {int(torch.randint(1000, (1,), generator=g))}.")
    attack = make_attack(name)  # 32 px, seed 0
    poisoned, manifest = attack.poison(memory, target, 4, torch.Generator().manual_seed(1))
    streamed, streamed_manifest = poison_split(attack, stream, target, 4, torch.Generator().manual_seed(1), 1.0)
    assert isinstance(streamed, PoisonedStream) and streamed_manifest.to_json() == manifest.to_json()
    if not attack.dirty_label:  # label-consistent picks among pairs whose caption names the target
        assert all("banana" in caption for caption in manifest.captions_before)
    seen = 0
    for batch in streamed.batches(8, torch.Generator().manual_seed(2)):
        index = batch["index"]
        assert torch.equal(batch["images"], poisoned.images[index])
        assert batch["captions"] == [poisoned.captions[i] for i in index.tolist()]
        seen += len(index)
    assert seen == 48


def test_ranks_decode_contiguous_shares_of_the_same_global_batches(splits):
    _, stream = splits
    whole = [b["index"] for b in stream.batches(8, torch.Generator().manual_seed(3))]
    shares = [[b["index"] for b in stream.batches(8, torch.Generator().manual_seed(3), rank=r, ranks=2)]
              for r in range(2)]
    assert all(torch.equal(torch.cat(pair), batch) for pair, batch in zip(zip(*shares), whole))
    assert len(shares[0]) == len(whole) == 6 and all(len(share) == 4 for share in shares[0])


def test_pair_batches_stream_what_memory_holds(splits):
    memory, stream = splits
    tokenizer = tokenizer_for("cleanbench-vit-tiny")
    stub = torch.nn.Module()
    stub.visual = torch.nn.Module()
    batches = [pair_batches(pairs, tokenizer, Normalizer(stub), 8, torch.Generator().manual_seed(4), CPU)
               for pairs in (memory, stream)]
    assert len(batches[0]) == len(batches[1]) == 6 and batches[1].sharded
    for a, b in zip(*batches):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["texts"], b["texts"])


def test_cache_keys_ignore_how_data_is_read_but_not_whether_a_split_streams(data_dir, monkeypatch):
    def keys(**data):
        plan = plan_grid(preset_for(data_dir, **data), ["badnet"], ["finetune"], [0])
        return [v.key for v in plan.victims], [c.key for c in plan.cells]

    base = keys(train_pairs=16)
    assert keys(train_pairs=16, memory_gb=64.0, workers=3, max_bad_images=7) == base
    clean_streamed = keys(train_pairs=16, memory_gb=STREAMED)  # 40 clean pairs stream, 16 training pairs do not
    assert clean_streamed[0] == base[0] and not set(clean_streamed[1]) & set(base[1])
    assert not set(keys(memory_gb=STREAMED)[0]) & set(keys()[0])  # 48 training pairs stream


def test_plan_grid_resolves_a_preset_with_sources(data_dir, monkeypatch):
    monkeypatch.setenv("TINY_CSV", str(data_dir / "csv" / "train.csv"))
    raw = tomllib.loads(make.preset_text('{format = "csv", path = "${TINY_CSV}"}',
                                         f'{{format = "imagefolder", path = "{data_dir / "folder"}"}}'))
    plan = plan_grid(parse_preset(raw), ["badnet"], ["none"], [0])
    assert plan.preset.data.train.path == str(data_dir / "csv" / "train.csv")
    assert plan.preset.text.synonyms == (("banana",), ("granny smith",), ("lemon",))


def test_an_attack_that_changes_unselected_pairs_refuses_a_streamed_split(splits):
    _, stream = splits
    target = PoisonTarget(0, "banana", lambda g: "a banana.")
    wanet = ATTACKS.get("wanet").from_settings({"variant": "original", "noise_mode": True},
                                               context=AttackContext(32, 0, CPU))
    with pytest.raises(UserError, match="changes more pairs than it selects.*raise data.memory_gb"):
        poison_split(wanet, stream, target, 4, torch.Generator().manual_seed(0), 1.0)
    badnet = ATTACKS.get("badnet").from_settings({}, context=AttackContext(32, 0, CPU))
    with pytest.raises(UserError, match="4 poisoned images at 32 px .* exceed data.memory_gb = 1e-06"):
        poison_split(badnet, stream, target, 4, torch.Generator().manual_seed(0), 1e-6)


def _share_worker(rank: int, init_file: str, shards: str, out_dir: str) -> None:
    """One gloo rank: its shares of a streamed epoch whose split holds an unreadable image."""
    import torch.distributed as dist

    from benchmark.data.batches import rank_batches

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        source = open_source(SourceSpec("webdataset", shards), "train")
        stream = StreamingPairs(source, np.arange(len(source)), 32, 0, BadImageBudget(5))
        shares = [b["index"].tolist() for b in rank_batches(stream, 8, torch.Generator().manual_seed(5), CPU)]
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(shares))
    finally:
        dist.destroy_process_group()


def test_ranks_cut_their_shares_to_the_same_length_when_an_image_is_unreadable(tmp_path):
    import torch.multiprocessing as mp

    shards = make.write_webdataset(tmp_path / "wds", 32, corrupt=1)  # pair 0 cannot be decoded
    mp.spawn(_share_worker, args=(str(tmp_path / "rendezvous"), str(shards), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    source = open_source(SourceSpec("webdataset", str(shards)), "train")
    whole = StreamingPairs(source, np.arange(32), 32, 0, BadImageBudget(5))
    order = [b["index"].tolist() for b in whole.batches(8, torch.Generator().manual_seed(5))]
    assert len(ranks[0]) == len(ranks[1]) == 4
    for step, (first, second) in enumerate(zip(*ranks)):
        assert len(first) == len(second)  # equal shares: open_clip's loss gathers them
        assert set(first + second) <= set(order[step]) and 0 not in first + second
    assert sum(len(share) for share in ranks[0] + ranks[1]) == 30  # the bad pair and its partner's last pair cut
