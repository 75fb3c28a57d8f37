"""Data for sequence-to-sequence tasks (the encoder-decoder's examples).

* :mod:`tinyllm.datasets.numbers` -- cardinal numbers written out in English and in French,
  a translation task generated on the spot (no download).
* :mod:`tinyllm.datasets.pairs` -- (source, target) text pairs: a tab-separated parallel corpus
  (Tatoeba / Anki format), a split that never lets a test source into training, and padded
  batches of token ids for an encoder-decoder.
"""
from .numbers import english_number, french_number, number_pairs, split_numbers  # noqa: F401
from .pairs import (  # noqa: F401
    IGNORE_INDEX,
    PairDataset,
    collate_pairs,
    group_by_source,
    pad_sequences,
    pair_batches,
    pair_evaluator,
    read_tsv_pairs,
    reference_streams,
    split_pairs,
)
