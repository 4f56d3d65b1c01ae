"""The local embedder: character n-gram feature hashing, honest about being lexical.

Each text becomes the counts of its character 3- to 5-grams (within word boundaries), hashed into a fixed
number of dimensions with a signed hash, log-scaled and L2-normalised. It needs no model and no network,
works the same in every language, and matches texts that share words and word pieces (so "invoice",
"invoices" and "invoiced" are close). It knows nothing of meaning: "refund" and "money back" are far
apart. That is what `model = local-ngram-v1` says in the knowledge tables.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is the local-ai extra's: only `similarities` needs it, and imports it when called
    import numpy as np
    import numpy.typing as npt

MODEL = "local-ngram-v1"
_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_WORD.findall(text))


def _features(text: str) -> Counter[str]:
    features: Counter[str] = Counter()
    for word in normalise(text).split():
        padded = f"<{word}>"
        features["w:" + word] += 2
        for n in (3, 4, 5):
            for i in range(max(1, len(padded) - n + 1)):
                features[padded[i:i + n]] += 1
    return features


@lru_cache(maxsize=1 << 15)
def _slot(feature: str, dim: int) -> tuple[int, float]:
    """(dimension, sign) of a feature: its hash, remembered, since most n-grams recur from text to text."""
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little") % dim, 1.0 if digest[4] & 1 else -1.0


def embed(text: str, dim: int) -> list[float]:
    vector = [0.0] * dim
    for feature, count in _features(text).items():
        index, sign = _slot(feature, dim)
        vector[index] += sign * (1.0 + math.log(count))
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def similarities(vector: Sequence[float], rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The cosine similarity of `vector` with each row (all unit length, so their dot products).

    Each row's products are summed left to right (`add.accumulate`), as a plain loop sums them, and not
    pairwise as `dot` does: the same float to the last bit, so a score on a threshold stays on its side.
    Only the text's own dimensions are read (a short text fills few of them); adding the others' zero
    products changes no sum.
    """
    import numpy as np

    dense = np.asarray(vector, dtype=np.float64)
    used = np.flatnonzero(dense)
    if not len(rows) or not len(used):
        return np.zeros(len(rows))
    return np.add.accumulate(rows[:, used] * dense[used], axis=1)[:, -1]
