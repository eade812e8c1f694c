"""The GPU path, proven (issue 19): one script that anyone with one CUDA GPU runs to check and measure it.

    python benchmarks/gpu_check.py                        # one CUDA GPU; writes benchmarks/results/gpu-DATE.md
    python benchmarks/gpu_check.py --device cpu --dry-run # every section at test size on the CPU (the suite's check)

None of the GPU code paths can be exercised on the CPU machines the suite runs on, so this script is where
they meet a GPU. Sections, in order (``--sections`` picks some):

- ``tests``: the GPU-marked tests (``pytest -m gpu``: device selection, bf16 autocast on and off, channels-last
  ResNets, pinned batches, a checkpoint written on the GPU loaded on the CPU).
- ``grid``: the paper subset of the default grid (BadNet and Blended × none, finetune, cleanclip, seed 0)
  through the real CLI, its wall time, and its CA/ASR beside the committed CPU study, with the study's
  conclusions checked one by one (the same conclusions are expected, not the same digits).
- ``throughput``: victim-training images/s against ``python -m open_clip_train.main`` on the same pairs, model,
  batch and precision, measured in the same run (helpers shared with ``benchmarks/perf.py``); the fraction of
  the GPU's dense bf16 peak it reaches (FLOPs per step counted by ``FlopCounterMode``); peak GPU memory.
- ``compile``: the same training with ``torch.compile`` on against off.
- ``workers``: the grid with ``--workers 2`` on one GPU (two jobs sharing it) against ``--workers 1``.

Each section runs in its own ``try``: a failure is a row saying ``failed: reason`` and the rest still runs; a
section started after the time budget is spent is a row saying it was skipped. ``--dry-run`` swaps in the
test-sized preset and model, and on the CPU ``torch.compile``'s eager backend (dynamo without inductor, whose C++
build takes minutes on a small CPU); its numbers say nothing about speed.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import perf  # noqa: E402  (benchmarks/ is on sys.path; perf puts the repository there too)
from benchmark.data.pairs import PairSet  # noqa: E402
from benchmark.device import Runtime  # noqa: E402
from benchmark.results import RESULTS_FILE  # noqa: E402
from cleanclip_epoch_time import StepClock  # noqa: E402
from cpu_study import (PAPER_ATTACKS, PAPER_DEFENSES, STUDY, comparison_tables, conclusions, cpu_study,  # noqa: E402
                       read_cells)

SECTIONS = ("tests", "grid", "throughput", "compile", "workers")

# Dense (no sparsity) bf16 tensor-core peak in TFLOPS, first match on the device name wins. Sources: NVIDIA's
# H100 datasheet (SXM 989, PCIe 756: half the "with sparsity" figures), the H200 product page (SXM 989), the A100
# datasheet (312). Variants whose figure is not listed here (H100 NVL, H200 NVL) are reported as unknown.
BF16_PEAK_TFLOPS: tuple[tuple[str, float | None], ...] = (
    ("H100 NVL", None), ("H100 PCIe", 756.0), ("H100", 989.0), ("H200 NVL", None), ("H200", 989.0), ("A100", 312.0))


@dataclass(frozen=True)
class Sizes:
    """What each section runs on: the full sizes for a GPU, or test-sized ones for the CPU dry run."""

    preset: str  # the grid's preset, and the source of the throughput pairs
    model: str  # the throughput model
    pairs: int  # throughput pairs (upscaled to the model's image size)
    batch: int
    skip: int  # steps left out of the median (warm-up)


FULL = Sizes("fmnist-tiny", "ViT-B-32", 4096, 256, 4)
DRY = Sizes(str(REPO / "tests" / "data" / "fmnist-test.toml"), "cleanbench-vit-tiny", 128, 32, 2)
# The dry run's grid: the suite's test preset cut further, since the grid runs twice (--workers 1 and 2).
DRY_GRID = {"name": '"gpu-check-dry-run"', "train_pairs": 128, "clean_pairs": 64, "val_pairs": 32, "test_images": 100,
            "batch_size": 32}


def dry_preset(source: Path, folder: Path) -> Path:
    """A copy of the preset TOML ``source`` with the sizes of ``DRY_GRID``, written into ``folder``."""
    text = source.read_text()
    for key, value in DRY_GRID.items():
        text = re.sub(rf"^{key} = \S+", f"{key} = {value}", text, count=1 if key == "name" else 0, flags=re.M)
    path = folder / "gpu-check-dry-run.toml"
    path.write_text(text)
    return path


@dataclass
class Row:
    """One line of the table. ``value`` is text: a figure, ``failed: ...`` or ``skipped: ...``."""

    section: str
    figure: str
    value: str
    detail: str = ""

    def markdown(self) -> str:
        cells = (self.section, self.figure, self.value, self.detail)
        return "| " + " | ".join(str(cell).replace("|", "/").replace("\n", " ") for cell in cells) + " |"


@dataclass
class Check:
    """What the sections share: the options, the sizes, figures one section passes to the next, extra tables."""

    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    work: Path
    measured: dict = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


# ---------------------------------------------------------------- 1. the GPU-marked tests

def section_tests(check: Check) -> list[Row]:
    """``pytest -m gpu`` in a child process: its counts, and the failing tests' names."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
               "tests"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = done.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    if not counts:
        raise RuntimeError(f"pytest exit {done.returncode}: {(done.stdout + done.stderr)[-300:]}")
    summary = ", ".join(f"{n} {word}" for word, n in counts.items())
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    if failures or done.returncode not in (0, 5):
        return [Row("tests", "pytest -m gpu", f"failed: {summary}", "; ".join(failures)[:500])]
    detail = "every GPU test skips without CUDA" if not check.cuda else "the tests marked gpu (tests/test_gpu.py)"
    return [Row("tests", "pytest -m gpu", summary, detail)]


# ---------------------------------------------------------------- 2. the paper subset of the default grid

def grid_args(check: Check, out: Path, workers: int, device: str) -> list[str]:
    """``cleanbench run`` options of the paper subset on ``device`` with ``workers`` local workers."""
    return ["--attacks", ",".join(PAPER_ATTACKS), "--defenses", ",".join(PAPER_DEFENSES), "--seeds", "0",
            "--preset", check.sizes.preset, "--device", device, "--workers", str(workers), "--out", str(out)]


def run_grid(check: Check, name: str, workers: int, device: str) -> perf.GridRun:
    """The paper subset through ``cleanbench run`` (``perf.run_grid``: wall time, host memory, closing line) into
    a fresh folder; a failure carries the last line of the run's log, since the work folder is removed."""
    out, log = check.work / name, check.work / f"{name}.log"
    try:
        return perf.run_grid(grid_args(check, out, workers, device), log)
    except RuntimeError as error:
        lines = log.read_text().strip().splitlines() if log.exists() else []
        raise RuntimeError(f"{str(error).split(';')[0]}: {lines[-1] if lines else 'no output'}") from None


def section_grid(check: Check) -> list[Row]:
    """The paper subset with ``--workers 1``: wall time, and CA/ASR and conclusions beside the CPU study's."""
    run = run_grid(check, "grid-workers1", 1, check.args.device)
    check.measured["grid_s"] = run.seconds
    cells, study = read_cells(check.work / "grid-workers1" / RESULTS_FILE), cpu_study()
    agree = [a == b for a, b in zip(conclusions(cells).values(), conclusions(study).values()) if b is not None]
    check.tables += [f"## The paper subset on `{Path(check.sizes.preset).stem}` against the CPU study", "",
                     f"CPU figures: `{STUDY.relative_to(REPO)}` (preset `fmnist-tiny`, seeds 0–2).", "",
                     *comparison_tables(cells, study), ""]
    note = "" if not check.args.dry_run else "; dry run on a test-sized preset, not comparable with the CPU study"
    wall = f"{run.seconds:.0f} s"
    return [Row("grid", f"paper subset, --device {check.args.device}: wall",
                f"failed: {run.cells_failed} of {run.cells_run} cells ({wall})" if run.cells_failed else wall,
                f"{run.victims_trained} victims trained, {run.cells_run} cells, host memory peak "
                f"{run.peak_memory_gb:.1f} GB"),
            Row("grid", "conclusions as on the CPU", f"{sum(agree)}/{len(agree)} agree",
                f"CA/ASR beside the CPU study below{note}")]


# ---------------------------------------------------------------- 3. and 4. training throughput, compile

@dataclass
class Rate:
    """Victim training on the pairs: images/s (median step after the warm-up), the first step's seconds
    (compilation included), peak GPU memory (None on the CPU) and the FLOPs of one step."""

    images_per_second: float
    first_step_s: float
    peak_gb: float | None
    step_flops: int


def throughput_pairs(check: Check) -> PairSet:
    """The first ``pairs`` victim-training pairs of the preset, upscaled to the throughput model's image size."""
    import torch.nn.functional as F

    from benchmark.models import model_config
    from benchmark.presets import load_preset
    from benchmark.task import build_task

    if "pairs" in check.measured:  # built once, for the throughput and compile sections
        return check.measured["pairs"]
    pairs = build_task(load_preset(check.sizes.preset)).train_pairs
    pairs = pairs.subset(torch.arange(min(check.sizes.pairs, len(pairs))))
    size = model_config(check.sizes.model)["vision_cfg"]["image_size"]
    if pairs.images.shape[-1] != size:
        pairs = PairSet(torch.cat([F.interpolate(chunk.float(), size=(size, size), mode="bilinear").round()
                                   .clamp(0, 255).to(torch.uint8) for chunk in pairs.images.split(256)]),
                        pairs.captions, pairs.labels)
    check.measured["pairs"] = pairs
    return pairs


def cleanbench_rate(check: Check, pairs: PairSet, compile_model: bool) -> Rate:
    """cleanbench's own training loop on the pairs, under the runtime the CLI would set (``--precision auto``)."""
    from benchmark.device import current_runtime, set_runtime
    from benchmark.models import create_model, tokenizer_for
    from benchmark.data.batches import Normalizer, PairBatches
    from benchmark.training import train
    from benchmark.training_recipe import TrainRecipe

    sizes, runtime = check.sizes, Runtime("auto", compile_model)
    model = create_model(sizes.model, seed=0).to(check.device)
    batches = PairBatches(pairs, tokenizer_for(sizes.model), Normalizer(model), sizes.batch,
                          torch.Generator().manual_seed(0), check.device)
    flops = step_flops(model, next(iter(batches)), runtime, check.device)
    clock, previous = StepClock(), current_runtime()
    if check.cuda:
        torch.cuda.reset_peak_memory_stats(check.device)
    set_runtime(runtime)
    try:
        train(model, batches, TrainRecipe(epochs=1, batch_size=sizes.batch, warmup_steps=2), reporter=clock)
    finally:
        set_runtime(previous)
    peak = torch.cuda.max_memory_allocated(check.device) / 1024**3 if check.cuda else None
    steps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]
    del model, batches
    if check.cuda:
        torch.cuda.empty_cache()
    return Rate(sizes.batch / statistics.median(steps[sizes.skip:]), steps[0], peak, flops)


def step_flops(model: torch.nn.Module, batch: dict, runtime: Runtime, device: torch.device) -> int:
    """FLOPs of one training step (forward and backward of the CLIP loss), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmark.training import clip_loss

    counter = FlopCounterMode(display=False)
    with counter:
        with runtime.autocast(device):
            loss = clip_loss(model.train(), batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def reference_rate(check: Check, csv_path: Path, logs: Path) -> float:
    """Median images/s per step of ``python -m open_clip_train.main`` on the CSV: same model, batch and
    precision (``amp_bf16`` is bf16 autocast over fp32 weights, as cleanbench's ``--precision auto`` on CUDA)."""
    from benchmark.models import CONFIG_DIR

    sizes = check.sizes
    args = ["--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", ",", "--csv-img-key",
            "filepath", "--csv-caption-key", "title", "--model", sizes.model, "--batch-size", str(sizes.batch),
            "--epochs", "1", "--lr", "5e-4", "--wd", "0.1", "--warmup", "2", "--precision",
            "amp_bf16" if check.cuda else "fp32", "--workers", str(check.args.loader_workers), "--logs", str(logs),
            "--name", f"run{time.monotonic_ns()}", "--save-frequency", "0", "--zeroshot-frequency", "0",
            "--val-frequency", "0", "--log-every-n-steps", "1", "--report-to", "", "--seed", "0"]
    env = None if check.cuda else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", perf.OPEN_CLIP_LAUNCHER, str(CONFIG_DIR), *args],
                          capture_output=True, text=True, env=env)
    rates = [float(m) for m in perf.OPEN_CLIP_RATE.findall(done.stdout + done.stderr)]
    if done.returncode != 0 or len(rates) <= sizes.skip:
        raise RuntimeError(f"open_clip_train exit {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
    return statistics.median(rates[sizes.skip:])


def bf16_peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of the GPU called ``name`` (see ``BF16_PEAK_TFLOPS``), None when not listed."""
    return next((tflops for key, tflops in BF16_PEAK_TFLOPS if key in name), None)


def section_throughput(check: Check) -> list[Row]:
    """cleanbench against open_clip_train on the same pairs; the share of the bf16 peak; peak GPU memory."""
    pairs = throughput_pairs(check)
    sizes, precision = check.sizes, "bf16 autocast" if check.cuda else "fp32"
    with tempfile.TemporaryDirectory(dir=check.work) as tmp:
        csv_path = perf.export_csv(pairs, Path(tmp) / "pairs")
        theirs = reference_rate(check, csv_path, Path(tmp) / "logs")
    ours = cleanbench_rate(check, pairs, compile_model=False)
    check.measured["eager"] = ours
    setup = (f"{sizes.model} at {pairs.images.shape[-1]} px, batch {sizes.batch}, {len(pairs)} pairs, {precision}, "
             f"median step after {sizes.skip}")
    rows = [Row("throughput", "victim training vs open_clip_train", f"{ours.images_per_second / theirs:.2f}×",
                f"cleanbench {ours.images_per_second:.0f} img/s vs open_clip_train {theirs:.0f} img/s "
                f"({check.args.loader_workers} loader workers); {setup}")]
    achieved = ours.step_flops * ours.images_per_second / sizes.batch / 1e12
    if not check.cuda:
        rows.append(Row("throughput", "fraction of the GPU's bf16 peak", "skipped on cpu",
                        f"{achieved:.3f} TFLOPS achieved ({ours.step_flops / 1e9:.1f} GFLOPs per step counted)"))
    else:
        name = torch.cuda.get_device_name(check.device)
        peak = bf16_peak_tflops(name)
        rows.append(Row("throughput", "fraction of the GPU's bf16 peak",
                        f"{achieved / peak:.1%}" if peak else "unknown",
                        f"{achieved:.1f} TFLOPS achieved ({ours.step_flops / 1e9:.0f} GFLOPs per step counted by "
                        f"FlopCounterMode) of {f'{peak:.0f}' if peak else 'an unlisted'} dense bf16 peak ({name})"))
    rows.append(Row("throughput", "peak GPU memory", f"{ours.peak_gb:.2f} GB" if check.cuda else "skipped on cpu",
                    "torch.cuda.max_memory_allocated over the training run" if check.cuda else ""))
    return rows


def section_compile(check: Check) -> list[Row]:
    """cleanbench's training with ``torch.compile`` against without (the throughput section's run, if any)."""
    pairs = throughput_pairs(check)
    eager = check.measured.get("eager") or cleanbench_rate(check, pairs, compile_model=False)
    compiled = cleanbench_rate(check, pairs, compile_model=True)
    memory = (f"peak GPU memory {compiled.peak_gb:.2f} GB on vs {eager.peak_gb:.2f} GB off" if check.cuda
              else "peak GPU memory skipped on cpu")
    note = "; dry run: torch.compile with the eager backend (dynamo only)" if check.args.dry_run else ""
    return [Row("compile", "--compile on vs off", f"{compiled.images_per_second / eager.images_per_second:.2f}×",
                f"{compiled.images_per_second:.0f} vs {eager.images_per_second:.0f} img/s; first step (compiling) "
                f"{compiled.first_step_s:.1f} s vs {eager.first_step_s:.1f} s; {memory}{note}")]


# ---------------------------------------------------------------- 5. two workers sharing one GPU

def section_workers(check: Check) -> list[Row]:
    """The paper subset with two local workers on the one device against one worker (the grid section's run)."""
    # `--device cuda --workers 2` asks for one GPU per worker; naming the GPU puts both workers on it.
    device = "cuda:0" if check.cuda else "cpu"
    one = check.measured.get("grid_s")
    if one is None:
        one = run_grid(check, "workers1", 1, device).seconds
    two = run_grid(check, "workers2", 2, device)
    ratio = f"{one / two.seconds:.2f}× faster"
    return [Row("workers", "--workers 2 vs --workers 1 (grid wall)",
                f"failed: {two.cells_failed} of {two.cells_run} cells ({ratio})" if two.cells_failed else ratio,
                f"{two.seconds:.0f} s vs {one:.0f} s for the paper subset, both workers on --device {device}")]


# ---------------------------------------------------------------- the table

RUNNERS: dict[str, Callable[[Check], list[Row]]] = {
    "tests": section_tests, "grid": section_grid, "throughput": section_throughput, "compile": section_compile,
    "workers": section_workers}


def run_sections(check: Check, chosen: list[str], budget_s: float) -> list[Row]:
    """Each section in turn, each failure a row; once the budget is spent, the remaining sections are skipped."""
    rows, start = [], time.perf_counter()
    for name in chosen:
        spent = time.perf_counter() - start
        if spent >= budget_s:
            section = [Row(name, "—", "skipped: no time left",
                           f"{spent / 60:.1f} min spent of the {budget_s / 60:.1f}-min budget")]
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            try:
                section = RUNNERS[name](check)
            except Exception as error:  # noqa: BLE001 - one failing section must not stop the others
                reason = f"{type(error).__name__}: {error}".strip().splitlines()
                section = [Row(name, "—", f"failed: {' '.join(reason)[:300]}")]
        for row in section:
            print("   ", row.markdown(), flush=True)
        rows += section
    return rows


def report(check: Check, rows: list[Row], seconds: float) -> str:
    """The markdown file: the command, commit, versions and device, then the table and the grid's comparison."""
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip() or "unknown"
    gpu = torch.cuda.get_device_name(check.device) if check.cuda else "none (CPU run)"
    cuda = torch.version.cuda or "none"
    return "\n".join([
        f"# cleanbench on a GPU, {datetime.now(timezone.utc).date().isoformat()}"
        + (" (dry run: test sizes, no speed figures)" if check.args.dry_run else ""), "",
        f"Command: `python benchmarks/{Path(__file__).name} {' '.join(check.args.argv)}`", "",
        f"Commit {commit}; torch {torch.__version__} (CUDA {cuda}); GPU: {gpu}; machine: {perf.machine()}; "
        f"{seconds / 60:.1f} min in all.", "",
        "| section | figure | value | detail |", "|---|---|---|---|", *(row.markdown() for row in rows), "",
        *check.tables])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked; ``argv`` kept for the report's command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the dry run's device)")
    parser.add_argument("--dry-run", action="store_true", help="test-sized preset and model, a few steps")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--budget-min", type=float, default=8.0, help="no section starts after this many minutes")
    parser.add_argument("--loader-workers", type=int, default=None,
                        help="DataLoader workers of open_clip_train (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--out", type=Path, default=None, help="markdown file (default benchmarks/results/gpu-DATE.md)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.device not in ("cuda", "cpu"):
        parser.error(f"--device {args.device!r}: choose cuda or cpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here (the dry run is --device cpu --dry-run)")
    if args.loader_workers is None:
        args.loader_workers = 8 if args.device == "cuda" else 1
    if args.out is None:
        args.out = HERE / "results" / f"gpu-{datetime.now(timezone.utc).date().isoformat()}.md"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, write the markdown file; 1 when a section failed."""
    args = parse_args(argv)
    started, compile_function = time.perf_counter(), torch.compile
    if args.dry_run and args.device == "cpu":  # see the module docstring
        torch.compile = functools.partial(compile_function, backend="eager")
    try:
        with tempfile.TemporaryDirectory(prefix="cleanbench-gpu-check-") as work:
            sizes = replace(DRY, preset=str(dry_preset(Path(DRY.preset), Path(work)))) if args.dry_run else FULL
            check = Check(args, sizes, torch.device(args.device), Path(work))
            rows = run_sections(check, args.sections, args.budget_min * 60)
    finally:
        torch.compile = compile_function
    text = report(check, rows, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 1 if any(row.value.startswith("failed") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
