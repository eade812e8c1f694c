"""EDA text augmentation (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques…"), as CleanCLIP uses it.

CleanCLIP's official code (github.com/nishadsinghi/CleanCLIP @ d6e2f1dbf0ad952c05b816c6024d8205682a0674,
``utils/augment_text.py`` L9-11, ``src/data.py`` L36-37) calls ``eda(caption, alpha_sr=.1, alpha_ri=.1,
alpha_rs=.1, p_rd=.1, num_aug=1)`` from the EDA authors' ``eda.py`` (``utils/eda.py`` L170-219): the caption is
lowercased and stripped to letters, one candidate is built with each of synonym replacement (WordNet), random
insertion, random swap and random deletion, editing ``n = max(1, int(alpha · #words))`` words, and one candidate
is kept at random. This module ports that code. It serves every user of EDA captions: CleanCLIP and SSL-only,
RoCLIP, SafeCLIP and the ``clip+ssl`` victim objective.

WordNet is read straight from the WordNet database files (``index.<pos>``, ``data.<pos>``, ``<pos>.exc``), with
the lemmatisation rules of NLTK's ``morphy``, so there is no NLTK dependency. Sources, first found wins: the
directory in ``$CLEANBENCH_WORDNET_DIR``, Debian's ``wordnet-base`` (``/usr/share/wordnet``), then NLTK's
``corpora/wordnet`` (a folder or ``wordnet.zip``) in the usual ``nltk_data`` places.

Deviations from ``eda.py``:
- Randomness comes from a caller-supplied ``random.Random`` (seeded), not the global ``random`` module.
- Synonym lists are sorted before sampling, and random insertion picks a random synonym; ``eda.py`` takes the
  first element of a Python ``set``, which depends on the interpreter's hash seed (not reproducible).
- Without WordNet, synonym replacement is switched off (with a warning) and random insertion inserts a copy of
  one of the caption's own words instead of a synonym; the one candidate is then drawn from three operations.
- A caption with no letters is returned unchanged (``eda.py`` crashes on it).
"""

from __future__ import annotations

import functools
import os
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Callable

ENV_DIR = "CLEANBENCH_WORDNET_DIR"
DEBIAN_DIR = Path("/usr/share/wordnet")
NLTK_DIRS = ("~/nltk_data", "/usr/share/nltk_data", "/usr/local/share/nltk_data", "/usr/lib/nltk_data",
             "/usr/local/lib/nltk_data")
HOW_TO_GET_WORDNET = ("install Debian/Ubuntu's `wordnet-base` package (apt-get install wordnet-base), or NLTK's "
                      "data (python -m nltk.downloader wordnet), or point $CLEANBENCH_WORDNET_DIR at a folder "
                      "holding WordNet's index.noun/data.noun files")

# eda.py's stop words: never replaced by synonym replacement.
STOP_WORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself they them their theirs themselves what which who whom this that these those am is are "
    "was were be been being have has had having do does did doing a an the and but if or because as until while "
    "of at by for with about against between into through during before after above below to from up down in out "
    "on off over under again further then once here there when where why how all any both each few more most "
    "other some such no nor not only own same so than too very s t can will just don should now".split()
)

_POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# NLTK's morphy detachment rules (WordNet's morphy(7WN)), per part of speech.
_SUFFIXES = {
    "n": [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}


class WordNet:
    """Synonym lookup in a WordNet 3.x database: a folder of its files, or NLTK's ``wordnet.zip``."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = Path(location)
        if self.location.suffix == ".zip":
            archive = zipfile.ZipFile(self.location)
            prefix = next(name for name in archive.namelist() if name.endswith("index.noun"))[: -len("index.noun")]
            self._read: Callable[[str], bytes] = lambda name: archive.read(prefix + name)
        else:
            self._read = lambda name: (self.location / name).read_bytes()
        self._index: dict[str, dict[bytes, bytes]] = {}
        self._data: dict[str, bytes] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        self._lemmas("n")  # fail now, not in the middle of a run, if the folder is not a WordNet

    @classmethod
    def find(cls) -> "WordNet | None":
        """The first WordNet found in the places listed in the module docstring, or None."""
        candidates = [Path(os.environ[ENV_DIR])] if os.environ.get(ENV_DIR) else []
        candidates.append(DEBIAN_DIR)
        nltk_roots = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p] + list(NLTK_DIRS)
        for root in nltk_roots:
            corpora = Path(root).expanduser() / "corpora"
            candidates += [corpora / "wordnet", corpora / "wordnet.zip"]
        for candidate in candidates:
            if (candidate / "index.noun").is_file() or (candidate.suffix == ".zip" and candidate.is_file()):
                return cls(candidate)
        return None

    def synonyms(self, word: str) -> list[str]:
        """EDA's ``get_synonyms``: every lemma of every synset of ``word`` (all parts of speech), letters only."""
        found: set[str] = set()
        for pos in _POS:
            for lemma in self.morphy(word.lower(), pos):
                for offset in self._offsets(pos, lemma):
                    for name in self._synset_words(pos, offset):
                        cleaned = name.replace("_", " ").replace("-", " ").lower()
                        found.add("".join(c for c in cleaned if c in " abcdefghijklmnopqrstuvwxyz"))
        found.discard(word)
        return sorted(found)

    def morphy(self, form: str, pos: str) -> list[str]:
        """The base forms of ``form`` present in WordNet for ``pos`` (NLTK's ``_morphy``)."""
        index = self._lemmas(pos)
        exceptions = self._exception_map(pos)

        def present(forms: list[str]) -> list[str]:
            return list(dict.fromkeys(f for f in forms if f.encode() in index))

        def detach(forms: list[str]) -> list[str]:
            return [f[: -len(old)] + new for f in forms for old, new in _SUFFIXES[pos] if f.endswith(old)]

        if form in exceptions:
            return present([form] + exceptions[form])
        forms = detach([form])
        results = present([form] + forms)
        while not results and forms:
            forms = detach(forms)
            results = present(forms)
        return results

    def _lemmas(self, pos: str) -> dict[bytes, bytes]:
        """Lemma → the rest of its index line, parsed only when looked up (building the dict stays fast)."""
        if pos not in self._index:
            lines = self._read(f"index.{_POS[pos]}").splitlines()
            self._index[pos] = dict(line.split(b" ", 1) for line in lines if not line.startswith(b" "))  # no licence
        return self._index[pos]

    def _offsets(self, pos: str, lemma: str) -> list[int]:
        """The synset offsets of an index line: its last ``synset_cnt`` fields."""
        fields = self._lemmas(pos)[lemma.encode()].split()
        synset_count = int(fields[1])
        return [int(offset) for offset in fields[len(fields) - synset_count :]]

    def _synset_words(self, pos: str, offset: int) -> list[str]:
        if pos not in self._data:
            self._data[pos] = self._read(f"data.{_POS[pos]}")
        data = self._data[pos]
        fields = data[offset : data.index(b"\n", offset)].decode().split()
        count = int(fields[3], 16)
        return [re.sub(r"\(.*\)$", "", word) for word in fields[4 : 4 + 2 * count : 2]]  # drop adj markers "(a)"

    def _exception_map(self, pos: str) -> dict[str, list[str]]:
        if pos not in self._exceptions:
            table: dict[str, list[str]] = {}
            try:
                text = self._read(f"{_POS[pos]}.exc").decode()
            except (FileNotFoundError, KeyError):
                text = ""
            for line in text.splitlines():
                inflected, *bases = line.split()
                table[inflected] = bases
            self._exceptions[pos] = table
        return self._exceptions[pos]


@functools.lru_cache(maxsize=1)
def default_wordnet() -> WordNet | None:
    """The WordNet found on this machine (loaded once per process), or None with a warning saying how to get it."""
    wordnet = WordNet.find()
    if wordnet is None:
        warnings.warn(f"EDA: no WordNet found, so synonym replacement is off and random insertion copies the "
                      f"caption's own words; to get WordNet, {HOW_TO_GET_WORDNET}", stacklevel=2)
    return wordnet


def clean_words(caption: str) -> list[str]:
    """EDA's ``get_only_chars``: lowercase, apostrophes dropped, every non-letter made a space, split on spaces."""
    text = caption.replace("'", "").replace("-", " ").lower()
    return "".join(c if "a" <= c <= "z" else " " for c in text).split()


def synonym_replacement(words: list[str], n: int, rng: random.Random, wordnet: WordNet) -> list[str]:
    """Replace (every occurrence of) up to ``n`` distinct non-stop words by a random WordNet synonym."""
    candidates = sorted({word for word in words if word not in STOP_WORDS})
    rng.shuffle(candidates)
    new_words, replaced = list(words), 0
    for candidate in candidates:
        synonyms = wordnet.synonyms(candidate)
        if synonyms:
            synonym = rng.choice(synonyms)
            new_words = [synonym if word == candidate else word for word in new_words]
            replaced += 1
        if replaced >= n:
            break
    return " ".join(new_words).split()  # a multi-word synonym becomes several words, as in eda.py


def random_insertion(words: list[str], n: int, rng: random.Random, wordnet: WordNet | None) -> list[str]:
    """Insert ``n`` times a synonym of a random word at a random position (a copy of a word without WordNet)."""
    new_words = list(words)
    for _ in range(n):
        for _attempt in range(10):  # eda.py gives up after 10 words without synonyms
            word = new_words[rng.randrange(len(new_words))]
            options = [word] if wordnet is None else wordnet.synonyms(word)
            if options:
                new_words.insert(rng.randrange(len(new_words)), rng.choice(options))
                break
    return " ".join(new_words).split()


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    """Swap two random positions ``n`` times (eda.py: at most 3 redraws when both positions coincide)."""
    new_words = list(words)
    for _ in range(n):
        first = second = rng.randrange(len(new_words))
        for _attempt in range(4):
            second = rng.randrange(len(new_words))
            if second != first:
                break
        new_words[first], new_words[second] = new_words[second], new_words[first]
    return new_words


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Drop each word with probability ``p``; never returns an empty list (a random word is kept instead)."""
    if len(words) <= 1:
        return list(words)
    kept = [word for word in words if rng.random() > p]
    return kept or [words[rng.randrange(len(words))]]


class EDA:
    """One EDA caption per caption, as CleanCLIP draws it: four candidate edits, one kept at random."""

    def __init__(self, alpha: float = 0.1, wordnet: WordNet | None = None) -> None:
        self.alpha = alpha
        self.wordnet = wordnet

    @classmethod
    def with_default_wordnet(cls, alpha: float = 0.1) -> "EDA":
        return cls(alpha, default_wordnet())

    def __call__(self, caption: str, rng: random.Random) -> str:
        words = clean_words(caption)
        if not words:
            return caption
        n = max(1, int(self.alpha * len(words)))
        candidates = []
        if self.wordnet is not None:
            candidates.append(synonym_replacement(words, n, rng, self.wordnet))
        candidates.append(random_insertion(words, n, rng, self.wordnet))
        candidates.append(random_swap(words, n, rng))
        candidates.append(random_deletion(words, self.alpha, rng))
        return " ".join(rng.choice(candidates))

    def augment_all(self, captions: list[str], rng: random.Random) -> list[str]:
        """One augmented caption per caption, with repeated captions augmented independently."""
        return [self(caption, rng) for caption in captions]
