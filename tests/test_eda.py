"""EDA text augmentation: each operation's contract, the WordNet reader, seeding, and the no-WordNet fallback."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from benchmark.augment import text as text_augment
from benchmark.augment.text import (EDA, WordNet, clean_words, random_deletion, random_insertion, random_swap,
                                    synonym_replacement)

WORDS = "a blurry photo of a leather boot on a plain background".split()


def _write_wordnet(root: Path) -> WordNet:
    """A two-synset WordNet: {photo, photograph, pic} and {boot, iron_heel} as nouns; byte offsets as WordNet's."""
    header = "  1 a licence line that parsers must skip  \n"
    synsets = ["03925226 06 n 03 photo 0 photograph 0 pic 0 000 | a picture  \n",
               "02872752 06 n 02 boot 0 iron_heel 0 000 | footwear  \n"]
    data, offsets = header, []
    for line in synsets:
        offsets.append(len(data.encode()))
        data += line.replace(line[:8], f"{len(data.encode()):08d}", 1)
    (root / "data.noun").write_text(data)
    (root / "index.noun").write_text(header + f"boot n 1 0 1 0 {offsets[1]:08d}  \n"
                                     f"photo n 1 0 1 0 {offsets[0]:08d}  \n"
                                     f"photograph n 1 0 1 0 {offsets[0]:08d}  \n")
    for pos in ("verb", "adj", "adv"):
        (root / f"index.{pos}").write_text(header)
        (root / f"data.{pos}").write_text(header)
    (root / "noun.exc").write_text("pix pic\n")
    return WordNet(root)


@pytest.fixture
def wordnet(tmp_path: Path) -> WordNet:
    return _write_wordnet(tmp_path)


def test_wordnet_reader_parses_index_data_and_lemmatises(wordnet: WordNet):
    assert wordnet.synonyms("photo") == ["photograph", "pic"]
    assert wordnet.synonyms("boots") == ["boot", "iron heel"]  # morphy: boots → boot; "_" becomes a space
    assert wordnet.synonyms("tote") == []


def test_system_wordnet_gives_real_synonyms():
    system = WordNet.find()
    if system is None:
        pytest.skip("no WordNet installed (Debian wordnet-base or NLTK data)")
    assert "photograph" in system.synonyms("photo")
    assert "photo" in system.synonyms("photos")


def test_clean_words_matches_eda_get_only_chars():
    assert clean_words("A photo of a T-shirt, isn't it?") == ["a", "photo", "of", "a", "t", "shirt", "isnt", "it"]


@pytest.mark.parametrize("seed", range(20))
def test_swap_keeps_the_multiset_of_words(seed: int):
    rng = random.Random(seed)
    swapped = random_swap(WORDS, 3, rng)
    assert Counter(swapped) == Counter(WORDS)


@pytest.mark.parametrize("seed", range(20))
def test_deletion_never_returns_an_empty_caption(seed: int):
    rng = random.Random(seed)
    assert random_deletion(WORDS, 1.0, rng)  # deleting everything keeps one random word
    assert random_deletion(["boot"], 1.0, rng) == ["boot"]
    kept = random_deletion(WORDS, 0.5, rng)
    assert 1 <= len(kept) <= len(WORDS) and set(kept) <= set(WORDS)


@pytest.mark.parametrize("seed", range(10))
def test_synonym_replacement_takes_synonyms_from_wordnet(wordnet: WordNet, seed: int):
    rng = random.Random(seed)
    replaced = synonym_replacement(WORDS, 2, rng, wordnet)
    changed = [word for word in replaced if word not in WORDS]
    assert changed, "photo and boot have synonyms, so something must change"
    assert set(changed) <= {"photograph", "pic", "iron", "heel"}
    assert "a" in replaced and "of" in replaced  # stop words are never replaced


def test_insertion_inserts_wordnet_synonyms_or_copies_without_wordnet(wordnet: WordNet):
    rng = random.Random(0)
    inserted = random_insertion(WORDS, 2, rng, wordnet)
    extra = Counter(inserted) - Counter(WORDS)
    assert sum(extra.values()) >= 2 and set(extra) <= {"photograph", "pic", "iron", "heel", "photo", "boot"}
    copied = random_insertion(WORDS, 2, rng, None)
    assert len(copied) == len(WORDS) + 2 and set(copied) == set(WORDS)


def test_eda_is_seeded_and_draws_one_caption_per_caption(wordnet: WordNet):
    eda = EDA(0.1, wordnet)
    captions = ["a blurry photo of a leather boot on a plain background."] * 50
    first = eda.augment_all(captions, random.Random(3))
    assert first == eda.augment_all(captions, random.Random(3))
    assert len(first) == len(captions) and len(set(first)) > 5  # each caption is augmented independently
    assert first != eda.augment_all(captions, random.Random(4))


def test_letterless_caption_is_returned_unchanged(wordnet: WordNet):
    assert EDA(0.1, wordnet)("... 123 !", random.Random(0)) == "... 123 !"


def test_without_wordnet_synonym_replacement_is_off_with_a_warning(monkeypatch):
    monkeypatch.setattr(WordNet, "find", classmethod(lambda cls: None))
    text_augment.default_wordnet.cache_clear()
    try:
        with pytest.warns(UserWarning, match="wordnet-base"):
            eda = EDA.with_default_wordnet()
    finally:
        text_augment.default_wordnet.cache_clear()
    assert eda.wordnet is None
    for caption in eda.augment_all(["a blurry photo of a leather boot"] * 30, random.Random(0)):
        assert set(caption.split()) <= set(WORDS)  # only insertion-by-copy, swap and deletion remain
