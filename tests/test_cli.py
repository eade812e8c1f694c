"""The command line a user types: listing, a tiny grid, and bad input (one clear line, exit code 2, nothing written)."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest

from benchmark.data import fashion_mnist


def test_list_shows_builtins_with_versions_and_sources(cli):
    code, out, _ = cli("list", "attacks")
    assert code == 0 and "badnet" in out and "built-in" in out
    code, out, _ = cli("list", "defenses")
    assert code == 0 and "finetune" in out and "none" in out
    code, out, _ = cli("list", "presets")
    assert code == 0 and "fmnist-tiny" in out
    code, out, _ = cli("list", "defenses", "roclip")  # with its stage
    assert code == 0 and re.search(r"│ roclip +│ 1 +│ training +│ built-in", out)
    code, out, _ = cli("list", "stages")  # the table of stages: each one's contract and hand-off
    assert code == 0 and re.search(r"│ data +│ Detector\.score\(\) +│ training pairs +│ victim +│ scores", out)
    code, _, err = cli("list", "models")
    assert code == 2 and "cannot list 'models'" in err


def test_list_and_check_take_a_selection_with_wildcards_and_exclusions(cli):
    from benchmark.cli.check import selected_components

    code, out, _ = cli("list", "defenses", "detect-*")
    assert code == 0 and all(name in out for name in ("detect-dao", "detect-kdist", "detect-slof"))
    assert "finetune" not in out and "cleanclip" not in out
    code, out, _ = cli("list", "attacks", "all,-badclip")
    assert code == 0 and "badnet" in out and "wanet" in out and "badclip" not in out
    code, out, _ = cli("list", "presets", "fmnist-*")
    assert code == 0 and "fmnist-tiny" in out and "cc3m" not in out
    assert selected_components("detect-*") == ["detect-dao", "detect-kdist", "detect-slof"]
    assert "badclip" not in selected_components("all,-badclip") and "finetune" in selected_components("all,-badclip")
    assert selected_components("my_defense.py") == ["my_defense.py"]  # files and plain names go to check as given
    for args in (["list", "defenses", "detekt-*"], ["check", "detekt-*"]):
        code, _, err = cli(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "matches 'detekt-*'. Available: " in err and "detect-dao" in err


def test_validate_takes_a_selection(cli, test_preset):
    code, out, err = cli("validate", "--preset", test_preset, "--attacks", "badnet", "--defenses", "detect-*")
    assert code == 0, err
    assert all(name in out for name in ("detect-dao", "detect-kdist", "detect-slof")) and "cleanclip" not in out
    code, _, err = cli("validate", "--preset", test_preset, "--attacks", "badnet,-badnett", "--defenses", "none")
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "Unknown attack 'badnett'" in err


def test_run_tiny_grid_writes_one_row_per_cell(cli, test_preset, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = cli("run", "--preset", test_preset, "--attacks", "badnet", "--defenses", "none,finetune",
                          "--seeds", "0", "--out", out)
    assert code == 0, stdout
    results = pd.read_csv(out / "results.csv")
    assert sorted(zip(results.attack, results.defense)) == [
        ("badnet", "finetune"), ("badnet", "none"), ("none", "finetune"), ("none", "none")]
    assert (results.status == "ok").all()
    assert results.ca.between(0, 1).all() and results.n_clean.eq(300).all()
    badnet = results[results.attack == "badnet"]
    assert badnet.asr.between(0, 1).all() and badnet.n_triggered.gt(0).all()
    assert results[results.attack == "none"].asr.isna().all()
    assert "cleanbench results" in stdout
    assert (out / "trigger_gallery.png").stat().st_size > 0 and "figure-trigger-gallery" in (out / "index.html").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attacks", "blend"], "Unknown attack 'blend'. Did you mean: "),
        (["--defenses", "cleenclip"], "Unknown defense 'cleenclip'."),
        (["--defenses", "detekt-*"], "no defense matches 'detekt-*'. Available: cleanclip, detect-dao"),
        (["--attacks", "all,-bad"], "Unknown attack 'bad'. Did you mean: "),
        (["--preset", "fmnist-tiney"], "Unknown preset 'fmnist-tiney'. Did you mean: fmnist-tiny, fmnist-tiny-clip-ssl, "
                                       "fmnist-tiny-pretrained?"),
        (["--poison-count", "100000"], "poison_count = 100000 is larger than the 512 training pairs"),
        (["--poison-rate", "1.5"], "poison_rate = 1.5 is out of range; allowed: (0, 1]"),
        (["--seeds", "a,b"], "--seeds 'a,b': give comma-separated integers"),
        (["--device", "tpu"], "--device 'tpu' is not understood"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, test_preset, tmp_path, args, message):
    out = tmp_path / "out"
    base = ["run", "--preset", test_preset, "--attacks", "badnet", "--defenses", "none", "--out", out]
    if "--preset" in args:
        base = base[:1] + base[3:]
    code, _, err = cli(*base, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_dataset_names_all_three_sources(cli, test_preset, tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian-package")
    out = tmp_path / "out"
    code, _, err = cli("run", "--preset", test_preset, "--attacks", "badnet", "--defenses", "none", "--out", out,
                       "--data-dir", tmp_path / "empty")
    assert code == 2
    assert "Fashion-MNIST not found" in err and "empty" in err and "dataset-fashion-mnist" in err
    assert "zalando-datasets/fashion_mnist" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_help_is_torch_free_and_python_m_benchmark_cli_runs_the_app():
    code = ("import sys; from typer.testing import CliRunner; from benchmark.cli import app; "
            "codes = [CliRunner().invoke(app, [*args, '--help']).exit_code for args in "
            "([], ['run'], ['validate'], ['leaderboard'], ['list'], ['attacks', 'show'])]; "
            "sys.exit(any(codes) or 'torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    shown = subprocess.run([sys.executable, "-m", "benchmark.cli", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "run" in shown.stdout and "validate" in shown.stdout


@pytest.mark.parametrize("args, expected, note", [
    ([], ("badnet", "none,finetune,cleanclip"), "running the quick suite: --attacks badnet --defenses "
                                                "none,finetune,cleanclip; every attack against every defense is "
                                                "--attacks all --defenses all"),
    (["--attacks", "all"], ("all", "none,finetune,cleanclip"), "running the quick suite's choice: --defenses "
                                                               "none,finetune,cleanclip;"),
    (["--attacks", "all", "--defenses", "all"], ("all", "all"), None),
])
def test_run_without_attacks_or_defenses_runs_the_quick_suite_and_says_how_to_run_everything(
        tmp_path, monkeypatch, args, expected, note):
    """A plain ``cleanbench run`` (what ``make run`` types) is the quick suite, not every attack × every defense."""
    from pathlib import Path

    from typer.testing import CliRunner

    import benchmark.api
    from benchmark.cli import app
    from benchmark.errors import UserError

    asked = []

    def run_grid(attacks, defenses, seeds, **kwargs):
        asked.append((attacks, defenses, seeds))
        raise UserError("stop here: nothing runs")

    monkeypatch.setattr(benchmark.api, "run_grid", run_grid)
    result = CliRunner().invoke(app, ["run", *args, "--out", str(tmp_path / "out")])
    assert asked == [(*expected, "0")]
    assert (note in result.stderr) if note else "quick suite" not in result.stderr
    make_run = [line.strip() for line in (Path(__file__).parent.parent / "Makefile").read_text().splitlines()
                if "cleanbench run" in line and not line.startswith("#")]
    assert "$(VENV)/bin/cleanbench run --out results" in make_run  # `make run` relies on run's default
