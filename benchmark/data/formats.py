"""The data formats a preset's sources may be in, each read by one :class:`~benchmark.data.sources.Source` class.

The table names each class as ``"module:Class"``, imported when a source of that format is opened, so that
reading a preset never imports a reader it does not use; the format modules import only
:mod:`benchmark.data.sources`, never this module. Which formats serve which role (pairs, labelled images) is
:data:`benchmark.presets.PAIR_FORMATS` and :data:`~benchmark.presets.EVAL_FORMATS`.
"""

from __future__ import annotations

import functools

from benchmark.data.sources import Source
from benchmark.presets import SourceSpec
from benchmark.registry import import_object

FORMATS: dict[str, str] = {
    "csv": "benchmark.data.csv_pairs:CsvPairs",
    "webdataset": "benchmark.data.webdataset_pairs:WebDatasetPairs",
    "hf": "benchmark.data.hf_pairs:HfSource",
    "imagefolder": "benchmark.data.image_folder:ImageFolder",
    "imagenet": "benchmark.data.imagenet:ImageNetFolder",
}


@functools.lru_cache(maxsize=8)
def open_source(spec: SourceSpec, role: str) -> Source:
    """The source ``spec`` describes (``role`` is "train" for pairs or "eval" for labelled images), indexed.

    ``spec.path`` must already be expanded (see :mod:`benchmark.data.resolve`). Raises ``UserError`` when the
    data is missing or not in the stated format.
    """
    reference = FORMATS.get(spec.format)
    if reference is None:
        raise ValueError(f"unknown source format {spec.format!r}")  # DataSpec refuses these first
    return import_object(reference).from_spec(spec, role)
