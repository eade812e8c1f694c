"""Build the whole leaderboard of some results files, run folders or bundles into a folder: ``leaderboard.csv``,
``pairwise.csv``, ``detection.csv``, figures, ``index.html``.

The one entry point for both ``cleanbench leaderboard`` and the end of ``cleanbench run``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmark.storage import write_text_atomic
from leaderboard import DEFAULT_MAX_CA_COST, DEFAULT_THRESHOLD
from leaderboard.aggregate import Leaderboard, build, write_csv, write_pairwise_csv, write_table
from leaderboard.bundles import is_bundle, open_inputs, with_evidence
from leaderboard.detection import detection_table
from leaderboard.load import load_cell_predictions, load_results, resolve_results_path


def write_leaderboard(paths: list[Path], out: Path | None = None, threshold: float = DEFAULT_THRESHOLD,
                      quiet: bool = False, max_ca_cost: float = DEFAULT_MAX_CA_COST) -> Path:
    """Validate and aggregate ``paths``, write every output into ``out``, print the summary; returns index.html.

    ``out`` defaults to the folder of the first results file, so a run's leaderboard lands beside its results.
    """
    from leaderboard.html import render
    from leaderboard.plots import draw_all
    from leaderboard.summary import print_summary

    with tempfile.TemporaryDirectory(prefix="cleanbench-bundles-") as scratch:  # bundles are read extracted
        inputs = open_inputs(paths, Path(scratch))
        results = load_results([item.path for item in inputs])
        predictions = load_cell_predictions(results)
        results = with_evidence(results, inputs)
        sources = sorted({item.label or str(resolve_results_path(item.path)) for item in inputs})
    board: Leaderboard = build(results, threshold, max_ca_cost, predictions)
    first = Path(paths[0])
    out = Path(out) if out is not None else first.parent if is_bundle(first) else resolve_results_path(first).parent
    out.mkdir(parents=True, exist_ok=True)
    write_csv(board, out / "leaderboard.csv")
    write_pairwise_csv(board, out / "pairwise.csv")
    detection = detection_table(results)
    write_table(detection, out / "detection.csv")
    figures = draw_all(board, out)
    index = out / "index.html"
    write_text_atomic(index, render(board, results, figures, out, sources, detection))
    if not quiet:
        print_summary(board)
    return index


def serve(folder: Path, port: int) -> None:
    """Serve ``folder`` on localhost until interrupted (for browsers that restrict ``file://`` pages)."""
    import functools
    import http.server

    from benchmark.errors import UserError

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as error:
        raise UserError(f"--port {port}: cannot serve there ({error.strerror}); try --port 0") from None
    with server:
        print(f"serving {folder} at http://127.0.0.1:{server.server_address[1]}/index.html (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
