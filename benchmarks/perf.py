"""cleanbench's performance, each figure a ratio against a reference measured in the same run (issue 7).

    python benchmarks/perf.py                       # every section; writes benchmarks/results/perf-DATE.md
    python benchmarks/perf.py --sections throughput,eval,cleanclip

Sections and their targets:

- ``throughput``: victim training images/s against open_clip's own trainer (``open_clip_train.main``) on the same
  pairs exported as a CSV of PNG files, same model config, batch size, precision and torch threads; runs
  alternate. Target ≥ 1.0×.
- ``eval``: producing CA and ASR for one model against the bare ``encode_image`` calls over the same images
  (clean and triggered, already normalised). Target ≤ 1.25×.
- ``cleanclip``: CleanCLIP's epoch time against plain finetuning's (``cleanclip_epoch_time.py``). Target ≤ 2.2×.
- ``grid``: ``cleanbench run --attacks all --defenses all`` on the preset, one seed: wall ≤ 15 min, peak memory ≤ 3 GB (all its processes),
  victims trained = attacks + 1, a rerun ≤ 30 s; then seeds 1 and 2 added to the same folder (seed 0 reused):
  three seeds ≤ 3.2× one seed. ``--grid-out`` keeps that folder (its results are the CleanCLIP study's).
- ``scaling``: grid wall time against cells on one cached victim (1, 2, 4, 8 copies of a defense) and against
  training-set size (5k, 10k, 20k, 40k pairs, one victim): the fitted slopes, the per-cell fixed cost ≤ 5 s.

Absolute figures come with the machine they were measured on. Exits 1 when a measured figure misses its target.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from benchmark.models import create_model, tokenizer_for  # noqa: E402
from benchmark.presets import load_preset, split_attack_settings  # noqa: E402
from benchmark.results import RESULTS_FILE  # noqa: E402
from benchmark.task import build_task  # noqa: E402
from cleanclip_epoch_time import StepClock  # noqa: E402  (benchmarks/ is on sys.path)

SECTIONS = ("throughput", "eval", "cleanclip", "grid", "scaling")


@dataclass
class Figure:
    """One line of the table: a measured value, its reference, and the target it is held to."""

    name: str
    value: float
    unit: str
    detail: str
    target: str
    ok: bool | None  # None: informational, no target

    def markdown(self) -> str:
        verdict = {True: "met", False: "**missed**", None: ""}[self.ok]
        return f"| {self.name} | {self.value:.4g} {self.unit} | {self.detail} | {self.target} | {verdict} |"


# ---------------------------------------------------------------- 1. training throughput against open_clip_train

OPEN_CLIP_LAUNCHER = (
    "import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
    "from open_clip_train.main import main; main(sys.argv[2:])"
)
OPEN_CLIP_RATE = re.compile(r"Batch \(t\): [\d.]+, ([\d.]+)/s,")


def export_csv(pairs, folder: Path) -> Path:
    """The pairs as PNG files plus a CSV (filepath, title), the format open_clip_train and CleanCLIP read."""
    import pandas as pd
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(pairs.images):
        path = folder / f"{index:06d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    csv = folder / "pairs.csv"
    pd.DataFrame({"filepath": paths, "title": pairs.captions}).to_csv(csv, index=False)
    return csv


def open_clip_rate(csv: Path, preset, logs: Path, workers: int, skip: int) -> float:
    """Median images/s per step of ``python -m open_clip_train.main`` over one epoch of the CSV."""
    from benchmark.models import CONFIG_DIR

    recipe = preset.victim
    args = ["--train-data", str(csv), "--dataset-type", "csv", "--csv-separator", ",", "--csv-img-key", "filepath",
            "--csv-caption-key", "title", "--model", preset.model.name, "--batch-size", str(recipe.batch_size),
            "--epochs", "1", "--lr", str(recipe.lr), "--wd", str(recipe.weight_decay), "--warmup",
            str(recipe.warmup_steps), "--precision", "fp32", "--workers", str(workers), "--logs", str(logs),
            "--name", f"run{time.monotonic_ns()}", "--save-frequency", "0", "--zeroshot-frequency", "0",
            "--val-frequency", "0", "--log-every-n-steps", "1", "--report-to", "", "--seed", "0"]
    config = CONFIG_DIR / f"{preset.model.name}.json"
    done = subprocess.run([sys.executable, "-c", OPEN_CLIP_LAUNCHER, str(config), *args], capture_output=True,
                          text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    rates = [float(m) for m in OPEN_CLIP_RATE.findall(done.stdout + done.stderr)]
    if done.returncode != 0 or len(rates) <= skip:
        raise RuntimeError(f"open_clip_train failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return statistics.median(rates[skip:])


def cleanbench_rate(pairs, preset, skip: int) -> float:
    """Median images/s per step of cleanbench's victim training over one epoch of the same pairs."""
    from benchmark.data.batches import Normalizer, PairBatches
    from benchmark.training import train

    model = create_model(preset.model.name, seed=0)
    clock = StepClock()
    batches = PairBatches(pairs, tokenizer_for(preset.model.name), Normalizer(model), preset.victim.batch_size,
                          torch.Generator().manual_seed(0), torch.device("cpu"))
    train(model, batches, replace(preset.victim, epochs=1), reporter=clock)
    steps = [b - a for a, b in zip(clock.stamps[skip:], clock.stamps[skip + 1:])]
    return preset.victim.batch_size / statistics.median(steps)


def section_throughput(preset, args) -> list[Figure]:
    task = build_task(preset)
    pairs = task.train_pairs.subset(torch.arange(min(args.pairs, len(task.train_pairs))))
    skip = 5
    with tempfile.TemporaryDirectory() as tmp:
        csv = export_csv(pairs, Path(tmp) / "pairs")
        theirs, ours = [], []
        for _ in range(args.rounds):  # alternate, so drift in machine load hits both
            theirs.append(open_clip_rate(csv, preset, Path(tmp) / "logs", args.workers, skip))
            ours.append(cleanbench_rate(pairs, preset, skip))
    ratio = statistics.median(ours) / statistics.median(theirs)
    detail = (f"cleanbench {statistics.median(ours):.0f} img/s vs open_clip_train {statistics.median(theirs):.0f} "
              f"img/s ({args.workers} loader workers); {len(pairs)} pairs, batch {preset.victim.batch_size}, fp32, "
              f"median step after {skip}, {args.rounds} alternating rounds")
    return [Figure("victim training vs open_clip_train", ratio, "×", detail, "≥ 1.0×", ratio >= 1.0)]


# ---------------------------------------------------------------- 2. evaluation against encode_image alone

def section_eval(preset, args) -> list[Figure]:
    from attacks import ATTACKS
    from attacks.base import AttackContext
    from benchmark.data.pairs import to_float, to_uint8
    from benchmark.metrics import classifier_for, evaluate, forward_batch_size
    from benchmark.data.batches import Normalizer

    task = build_task(preset)
    test = task.test_set
    model = create_model(preset.model.name, seed=0).eval()
    tokenizer = tokenizer_for(preset.model.name)
    attack = ATTACKS.get("badnet").from_settings(split_attack_settings(preset.attacks.get("badnet"))[1],
                                                 context=AttackContext(preset.data.image_size, 0, torch.device("cpu")))
    non_target = torch.nonzero(test.labels != task.target_index).squeeze(1)
    normalize = Normalizer(model)
    triggered = to_uint8(attack.apply(to_float(test.images[non_target]), torch.Generator().manual_seed(0)))
    inputs = [normalize(to_float(test.images)), normalize(to_float(triggered))]  # prepared outside the clock

    def floor() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for images in inputs:
                for batch in images.split(forward_batch_size(torch.device("cpu"))):  # the batch evaluate uses
                    model.encode_image(batch, normalize=True)
        return time.perf_counter() - start

    def full() -> float:
        start = time.perf_counter()
        classifier = classifier_for(model, tokenizer, test, torch.device("cpu"))
        evaluate(classifier, test, target=task.target_index, trigger=attack.apply, seed=0, device=torch.device("cpu"))
        return time.perf_counter() - start

    floors, fulls = [], []
    for _ in range(args.rounds + 1):
        floors.append(floor())
        fulls.append(full())
    floors, fulls = floors[1:], fulls[1:]  # the first round warms caches and the tokenizer
    ratio = statistics.median(fulls) / statistics.median(floors)
    images = len(test) + len(non_target)
    detail = (f"CA + ASR {statistics.median(fulls):.2f}s vs encode_image {statistics.median(floors):.2f}s over "
              f"{images} images ({images / statistics.median(floors):.0f} img/s)")
    return [Figure("evaluation vs bare encode_image", ratio, "×", detail, "≤ 1.25×", ratio <= 1.25)]


# ---------------------------------------------------------------- 3. CleanCLIP against plain finetuning

def section_cleanclip(preset, args) -> list[Figure]:
    from cleanclip_epoch_time import BUDGET, epoch_times

    epochs = 3
    finetune = epoch_times("finetune", {}, args.preset, epochs)
    settings = {} if args.cleanclip_workers is None else {"num_workers": args.cleanclip_workers}
    cleanclip = epoch_times("cleanclip", settings, args.preset, epochs)
    ratio = statistics.median(cleanclip[1:]) / statistics.median(finetune[1:])
    workers = "default" if args.cleanclip_workers is None else args.cleanclip_workers
    detail = (f"median later epoch: cleanclip {statistics.median(cleanclip[1:]):.1f}s, finetune "
              f"{statistics.median(finetune[1:]):.1f}s ({preset.data.clean_pairs} pairs, augmentation workers: "
              f"{workers})")
    return [Figure("cleanclip epoch vs finetune epoch", ratio, "×", detail, f"≤ {BUDGET}×", ratio <= BUDGET)]


# ---------------------------------------------------------------- 4. the default grid

DONE_LINE = re.compile(r"done: (\d+) victims trained, (\d+) reused; (\d+) cells run, (\d+) reused, (\d+) failed")


@dataclass
class GridRun:
    seconds: float
    peak_memory_gb: float  # the process tree's resident memory at its peak (workers included; see _tree_memory_kb)
    victims_trained: int
    cells_run: int
    cells_failed: int


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack += children.get(pid, [])
    return found


def _memory_kb(pid: int) -> tuple[int, int]:
    """(anonymous + shared-memory kB, file-backed kB) resident for ``pid``, from /proc/PID/status counters.
    Cheap to read, unlike smaps_rollup, whose page walk took ~20 ms per worker and slowed the run it measured."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields.get("RssAnon", 0) + fields.get("RssShmem", 0), fields.get("RssFile", 0)


def _tree_memory_kb(root: int) -> int:
    """The process tree's resident memory: every process's own (anonymous) pages plus the largest file-backed
    set once (torch's libraries are mapped by every worker; summing RSS would count them per process)."""
    own, files = zip(*(_memory_kb(pid) for pid in _tree(root)))
    return sum(own) + max(files)


def run_grid(cli_args: list[str], log: Path) -> GridRun:
    """``cleanbench run ...`` in a child process: wall time, the peak memory of its whole process tree (sampled
    every second), and its closing line."""
    command = [sys.executable, "-m", "benchmark.cli", "run", *cli_args]
    start, peak_kb = time.perf_counter(), 0
    with open(log, "w") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO)
        while child.poll() is None:
            peak_kb = max(peak_kb, _tree_memory_kb(child.pid))
            time.sleep(1.0)
    seconds = time.perf_counter() - start
    summary = DONE_LINE.search(log.read_text())
    if summary is None:
        raise RuntimeError(f"cleanbench run {' '.join(cli_args)} failed (exit {child.returncode}); log: {log}")
    trained, _, run, _, failed = (int(g) for g in summary.groups())
    return GridRun(seconds, peak_kb / 1024**2, trained, run, failed)


def section_grid(preset, args) -> list[Figure]:
    from attacks import ATTACKS

    out = Path(args.grid_out) if args.grid_out else Path(tempfile.mkdtemp(prefix="cleanbench-grid-"))
    if (out / RESULTS_FILE).exists():
        raise SystemExit(f"--grid-out {out} already holds results: the grid must be timed from an empty folder")
    common = ["--attacks", "all", "--defenses", "all", "--preset", args.preset, "--out", str(out), "--device", "cpu"]
    one = run_grid([*common, "--seeds", "0"], out.parent / f"{out.name}-seed0.log")
    rerun = run_grid([*common, "--seeds", "0"], out.parent / f"{out.name}-rerun.log")
    figures = [
        Figure("default grid, one seed: wall", one.seconds / 60, "min",
               f"{one.cells_run} cells, {one.cells_failed} failed", "≤ 15 min", one.seconds <= 15 * 60),
        Figure("default grid, one seed: peak memory", one.peak_memory_gb, "GB",
               "resident memory of all the run's processes at its peak (own pages summed, libraries once)",
               "≤ 3 GB", one.peak_memory_gb <= 3.0),
        Figure("victims trained", one.victims_trained, "", f"{len(ATTACKS.names())} attacks + benign control",
               "= attacks + 1", one.victims_trained == len(ATTACKS.names()) + 1),
        Figure("rerun of the same grid", rerun.seconds, "s", f"{rerun.victims_trained} victims trained",
               "≤ 30 s", rerun.seconds <= 30 and rerun.victims_trained == 0),
    ]
    if args.grid_seeds > 1:
        seeds = ",".join(str(s) for s in range(args.grid_seeds))
        more = run_grid([*common, "--seeds", seeds], out.parent / f"{out.name}-seeds.log")
        total = one.seconds + more.seconds
        ratio = total / one.seconds
        figures.append(Figure(f"{args.grid_seeds} seeds vs one seed", ratio, "×",
                              f"{total / 60:.1f} min (seed 0, then seeds 1–{args.grid_seeds - 1} added)",
                              f"≤ {1.0667 * args.grid_seeds:.1f}×", ratio <= 1.0667 * args.grid_seeds))
    return figures


# ---------------------------------------------------------------- 5. how cost grows

COPIES_PLUGIN = '''"""Copies of the `none` defense, so a grid can hold any number of cells on one victim (benchmarks/perf.py)."""
from defenses import DEFENSES
from defenses.none import NoDefense

for _index in range(1, 8):
    DEFENSES.register()(type(f"NoneCopy{_index}", (NoDefense,), {"name": f"none-copy-{_index}"}))
'''


def fitted_slope(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R² (scipy's linregress)."""
    from scipy.stats import linregress

    fit = linregress(xs, ys)
    return float(fit.slope), float(fit.intercept), float(fit.rvalue**2)


def section_scaling(preset, args) -> list[Figure]:
    tmp = Path(tempfile.mkdtemp(prefix="cleanbench-scaling-"))
    plugin = tmp / "none_copies.py"
    plugin.write_text(COPIES_PLUGIN)
    small = tmp / "small.toml"
    figures = []

    # Cells on one cached victim: train it once, then time grids of 1, 2, 4, 8 cells into fresh copies.
    counts = [1, 2, 4, 8]
    seed_run = tmp / "victim"
    run_grid(["--attacks", "none", "--defenses", "none", "--preset", args.preset, "--out", str(seed_run),
              "--device", "cpu"], tmp / "victim.log")
    seconds = []
    for count in counts:
        out = tmp / f"cells{count}"
        _copy_cache(seed_run, out)
        defenses = ",".join(["none"] + [f"none-copy-{i}" for i in range(1, count)])
        run = run_grid(["--attacks", "none", "--defenses", defenses, "--preset", args.preset, "--out", str(out),
                        "--device", "cpu", "--plugin", str(plugin)], tmp / f"cells{count}.log")
        seconds.append(run.seconds)
    slope, intercept, r2 = fitted_slope(counts, seconds)
    figures.append(Figure("cost per cell on a cached victim", slope, "s/cell",
                          f"cells {counts}: {', '.join(f'{s:.0f}s' for s in seconds)}; intercept {intercept:.0f}s, "
                          f"R² {r2:.3f}", "≤ 5 s/cell, linear", slope <= 5.0 and r2 >= 0.95))

    # Training-set size: one benign victim (and its `none` cell) per size.
    sizes = [5000, 10000, 20000, 40000]
    seconds = []
    for size in sizes:
        small.write_text(_preset_with_train_pairs(preset, size))
        run = run_grid(["--attacks", "none", "--defenses", "none", "--preset", str(small), "--out",
                        str(tmp / f"size{size}"), "--device", "cpu"], tmp / f"size{size}.log")
        seconds.append(run.seconds)
    slope, intercept, r2 = fitted_slope(sizes, seconds)
    figures.append(Figure("cost per 1k training pairs (one victim)", slope * 1000, "s",
                          f"pairs {sizes}: {', '.join(f'{s:.0f}s' for s in seconds)}; intercept {intercept:.0f}s, "
                          f"R² {r2:.3f}", "linear (R² ≥ 0.98)", r2 >= 0.98))
    return figures


def _copy_cache(source: Path, destination: Path) -> None:
    """A fresh output folder that holds only the cached victim (no results, no cell metrics)."""
    import shutil

    from benchmark.cache_layout import CacheLayout

    shutil.copytree(CacheLayout.of_run(source).victims_dir, CacheLayout.of_run(destination).victims_dir)


def _preset_with_train_pairs(preset, train_pairs: int) -> str:
    """The preset's TOML text with another number of victim-training pairs (and its own name)."""
    text = Path(preset.source).read_text()
    text = re.sub(r'^name = ".*"', f'name = "{preset.name}-{train_pairs}"', text, count=1, flags=re.M)
    return re.sub(r"^train_pairs = \d+", f"train_pairs = {train_pairs}", text, count=1, flags=re.M)


# ---------------------------------------------------------------- the table

def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{gpu}, Python {platform.python_version()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist-tiny")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}")
    parser.add_argument("--pairs", type=int, default=5120, help="pairs for the throughput comparison")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per comparison")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of open_clip_train")
    parser.add_argument("--cleanclip-workers", type=int, default=None,
                        help="cleanclip's augmentation workers (default: the defense's own, 0 on the CPU)")
    parser.add_argument("--grid-out", help="keep the timed grid's output folder here (must not hold results)")
    parser.add_argument("--grid-seeds", type=int, default=3, help="seeds for the multi-seed grid figure (1: skip)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"perf-{date.today().isoformat()}.md")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    preset = load_preset(args.preset)
    runners: dict[str, Callable] = {"throughput": section_throughput, "eval": section_eval,
                                    "cleanclip": section_cleanclip, "grid": section_grid, "scaling": section_scaling}
    figures: list[Figure] = []
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    for name in chosen:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        section = runners[name](preset, args)
        for figure in section:
            print("   ", figure.markdown(), flush=True)
        figures.extend(section)
    lines = [f"# cleanbench performance, {date.today().isoformat()}", "",
             f"`python benchmarks/perf.py --sections {','.join(chosen)}` on preset `{args.preset}`; "
             f"{(time.perf_counter() - started) / 60:.0f} min in all.", "",
             f"Machine: {machine()}. Load average at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}"
             + (" (busy: other jobs shared the cores, so absolute figures are low and ratios noisy)."
                if max(load_before, os.getloadavg()[0]) > 0.5 * (os.cpu_count() or 1) + 1 else "."), "",
             "| figure | value | measured against | target | |", "|---|---|---|---|---|",
             *(figure.markdown() for figure in figures), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written to {args.out}")
    return 0 if all(f.ok is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
