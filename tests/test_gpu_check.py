"""The GPU check's dry run (issue 19): ``benchmarks/gpu_check.py --device cpu --dry-run`` reaches every section
at test sizes on the CPU, so the script cannot rot between the runs on a GPU; and its parts that need no run
(the CPU study it compares against, the bf16 peak table, a failing or late section) are checked directly."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
GPU_ONLY = {"fraction of the GPU's bf16 peak", "peak GPU memory"}


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _rows(markdown: str) -> list[list[str]]:
    """The main table's rows as [section, figure, value, detail]."""
    table = markdown.split("| section | figure | value | detail |")[1].split("\n\n")[0]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.strip().splitlines()[1:]]


@pytest.mark.slow
def test_the_dry_run_reaches_every_section_and_writes_the_table(tmp_path, gpu_check):
    out = tmp_path / "gpu.md"  # in a process of its own, as it is run by hand
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert out.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    markdown = out.read_text()
    rows = _rows(markdown)
    assert done.returncode == 0, "\n".join(" | ".join(row) for row in rows)
    assert [section for section in gpu_check.SECTIONS if section not in {row[0] for row in rows}] == []
    for section, figure, value, _ in rows:
        assert value and not value.startswith(("failed", "skipped: no time")), (section, figure, value)
        assert (value == "skipped on cpu") == (figure in GPU_ONLY), (section, figure, value)
    assert "8 skipped" in next(row[2] for row in rows if row[0] == "tests")  # the GPU tests skip without CUDA
    assert f"torch {torch.__version__}" in markdown and "Commit " in markdown and "--dry-run" in markdown
    conclusions = [line for line in markdown.splitlines() if line.startswith(("| badnet: ", "| blended: "))]
    assert len(conclusions) == 8 and all(line.endswith(("| yes |", "| **no** |")) for line in conclusions)


def test_a_spent_time_budget_skips_every_section_and_says_so(tmp_path, gpu_check):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--device", "cpu", "--dry-run", "--budget-min", "0", "--out", str(out)]) == 0
    rows = _rows(out.read_text())
    assert [(row[0], row[2]) for row in rows] == [(section, "skipped: no time left") for section in gpu_check.SECTIONS]
    assert torch.compile.__name__ == "compile"  # the dry run's eager backend is not left behind


def test_a_failing_section_is_a_row_and_the_next_one_still_runs(tmp_path, gpu_check, monkeypatch):
    def broken(check):
        raise ValueError("no such thing\nsecond line")

    monkeypatch.setitem(gpu_check.RUNNERS, "tests", broken)
    monkeypatch.setitem(gpu_check.RUNNERS, "grid", lambda check: [gpu_check.Row("grid", "wall", "1 s")])
    check = gpu_check.Check(argparse.Namespace(), gpu_check.DRY, torch.device("cpu"), tmp_path)
    rows = gpu_check.run_sections(check, ["tests", "grid"], budget_s=60)
    assert [(row.section, row.value) for row in rows] == [("tests", "failed: ValueError: no such thing second line"),
                                                          ("grid", "1 s")]


def test_the_cpu_study_parses_and_its_conclusions_hold_on_it(gpu_check):
    study = gpu_check.cpu_study()
    assert study[("badnet", "cleanclip")]["ca_ci"][0] < study[("badnet", "cleanclip")]["ca"]
    assert len(study[("blended", "finetune")]["asr_seeds"]) == 3 and study[("none", "none")]["asr_ci"] is None
    conclusions = gpu_check.conclusions(study)
    assert len(conclusions) == 8 and all(conclusions.values())
    del study[("blended", "cleanclip")]
    assert [claim for claim, holds in gpu_check.conclusions(study).items() if holds is None] == [
        claim for claim in conclusions if claim.startswith("blended")]


@pytest.mark.parametrize("name, tflops", [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                          ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                          ("NVIDIA H100 NVL", None), ("NVIDIA GeForce RTX 4090", None)])
def test_the_bf16_peak_is_looked_up_by_gpu_name_and_unknown_otherwise(gpu_check, name, tflops):
    assert gpu_check.bf16_peak_tflops(name) == tflops
