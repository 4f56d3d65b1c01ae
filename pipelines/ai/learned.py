"""A classifier learned from one tenant's examples: lexical and semantic features and a linear model.

Features: the words and word pairs of a text and the character 2- to 5-grams of its words (so "refund",
"refunds" and "refunded" share most of theirs, in any language), weighted by sublinear tf-idf and
L2-normalised; beside them, when the `semantic` extra is installed, the text's sentence embedding
(`pipelines.ai.semantic`, weighted by `SEMANTIC_WEIGHT`), which knows that "money back" is a refund.
The model: one linear SVM per category (scikit-learn's liblinear), which is fast to train on
a hundred thousand short texts and does better than a nearest-example rule as soon as a category has a few
examples. Its accuracy is measured by cross-validation (stratified folds) before the final fit on all rows.

Training needs scikit-learn; prediction needs only numpy, so what is stored is plain arrays (vocabulary,
idf, weights) in one compressed `.npz`, never a pickle: a model read from the database cannot run code.
"""

from __future__ import annotations

import io
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from pipelines.ai import semantic
from pipelines.ai.embedding import normalise

LEXICAL = "lexical-svm-1"
SEMANTIC = f"lexical-{semantic.NAME}-svm-1"
SEMANTIC_WEIGHT = 2.0  # of the embedding beside the tf-idf block, chosen on BANKING77's folds
# Languages the encoder was not trained on, where a lexical-only model (trained beside the joint one) decides:
# on the chat lines written apart from the taxonomy it got fi 13/20 and sv 13/18, the joint model 11 and 10.
LEXICAL_LANGUAGES = frozenset({"fi", "sv"})
MAX_FEATURES = 60_000  # by document frequency: 77 categories x 60,000 weights x 2 bytes = 9 MB stored
READ_CHARS = 2_000  # of a text the features read (examples are capped there too)
MIN_CATEGORIES = 2
C = 0.5  # liblinear's regularisation, chosen on BANKING77's folds (0.25-1 within 0.5 point of each other)


def features(text: str) -> Counter[str]:
    words = normalise(text[:READ_CHARS]).split()
    counted: Counter[str] = Counter()
    for i, word in enumerate(words):
        counted["w " + word] += 1
        if i:
            counted["b " + words[i - 1] + " " + word] += 1
        padded = f"<{word}>"
        for n in (2, 3, 4, 5):
            for j in range(max(1, len(padded) - n + 1)):
                counted[padded[j:j + n]] += 1
    return counted


@dataclass
class TenantModel:
    categories: list[str]
    vocabulary: dict[str, int]
    idf: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float32]  # features x categories: a text's few hundred features are rows to gather
    bias: npt.NDArray[np.float32]
    semantic: npt.NDArray[np.float32] | None = None  # embedding dimensions x categories, weight folded in
    lexical: TenantModel | None = None  # beside a semantic model: the lexical-only one, for LEXICAL_LANGUAGES

    @property
    def format(self) -> str:
        return LEXICAL if self.semantic is None else SEMANTIC

    @property
    def nbytes(self) -> int:
        """Roughly what the model takes in memory: its arrays and its vocabulary (about 100 bytes a term)."""
        extra = 0 if self.semantic is None else self.semantic.nbytes
        extra += 0 if self.lexical is None else int(self.lexical.weights.nbytes)
        return int(self.weights.nbytes + self.idf.nbytes + self.bias.nbytes + extra) + 100 * len(self.vocabulary)

    def scores(self, text: str, embedded: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
        base = self.bias.copy()
        if self.semantic is not None:
            vector = embedded if embedded is not None else semantic.encode([text])[0]
            base += vector @ self.semantic
        counted = features(text)
        index = [self.vocabulary[f] for f in counted if f in self.vocabulary]
        if not index:
            return base
        values = np.array([1.0 + math.log(counted[f]) for f in counted if f in self.vocabulary], dtype=np.float32)
        values *= self.idf[index]
        values /= float(np.linalg.norm(values)) or 1.0
        result: npt.NDArray[np.float32] = values @ self.weights[index] + base
        return result

    def predict(self, text: str, embedded: npt.NDArray[np.float32] | None = None,
                language: str | None = None) -> tuple[str, float]:
        """The category and a confidence in [0, 1]: a softmax of the margins, sharpened as liblinear's scores
        are small (a margin of 1 is a sure answer)."""
        if self.lexical is not None and language in LEXICAL_LANGUAGES:
            return self.lexical.predict(text)
        scores = self.scores(text, embedded)
        exp = np.exp(4.0 * (scores - scores.max()))
        probabilities = exp / exp.sum()
        best = int(np.argmax(scores))
        return self.categories[best], float(probabilities[best])

    def to_bytes(self) -> bytes:
        terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"idf": self.idf, "weights": self.weights.astype(np.float16), "bias": self.bias,
                                  "meta": np.frombuffer(orjson.dumps({"format": self.format,
                                                                      "categories": self.categories,
                                                                      "terms": terms}), dtype=np.uint8)}
        if self.semantic is not None:
            arrays["semantic"] = self.semantic
        if self.lexical is not None:  # the same vocabulary and idf: only its weights differ
            arrays["lexical_weights"] = self.lexical.weights.astype(np.float16)
            arrays["lexical_bias"] = self.lexical.bias
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TenantModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = orjson.loads(arrays["meta"].tobytes())
            kind = meta.get("format")
            if kind not in (LEXICAL, SEMANTIC) or (kind == SEMANTIC and not semantic.available()):
                raise ValueError(f"a model of format {kind!r}, which this process cannot read")
            categories, vocabulary = list(meta["categories"]), {t: i for i, t in enumerate(meta["terms"])}
            lexical = None
            if "lexical_weights" in arrays:
                lexical = cls(categories=categories, vocabulary=vocabulary, idf=arrays["idf"],
                              weights=arrays["lexical_weights"].astype(np.float32), bias=arrays["lexical_bias"])
            return cls(categories=categories, vocabulary=vocabulary, idf=arrays["idf"],
                       weights=arrays["weights"].astype(np.float32), bias=arrays["bias"],
                       semantic=arrays["semantic"] if kind == SEMANTIC else None, lexical=lexical)


@dataclass
class Trained:
    model: TenantModel
    examples: int
    categories: int
    accuracy: float | None  # cross-validated; None with too few examples a category to fold
    seconds: float


@dataclass
class Counted:
    """Every text's features as numbers: one id per distinct feature (`terms`), and per text its ids and
    counts, held in three flat arrays (CSR-like). Held while training folds: Python dicts of strings a text
    would take about ten times as much (some 350 MB for BANKING77's 10,000 texts)."""

    terms: list[str]
    indptr: npt.NDArray[np.int64]
    ids: npt.NDArray[np.int32]
    counts: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def take(self, rows: Any) -> Counted:
        """The rows given, in that order, sharing `terms`."""
        starts, ends = self.indptr[rows], self.indptr[np.asarray(rows) + 1]
        pieces = [np.arange(start, end) for start, end in zip(starts, ends, strict=True)]
        flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
        return Counted(self.terms, indptr, self.ids[flat], self.counts[flat])


def count_all(texts: list[str]) -> Counted:
    index: dict[str, int] = {}
    ids, counts, indptr = [], [], [0]
    for text in texts:
        counted = features(text)
        ids.append(np.fromiter((index.setdefault(f, len(index)) for f in counted), dtype=np.int32, count=len(counted)))
        counts.append(np.fromiter(counted.values(), dtype=np.float32, count=len(counted)))
        indptr.append(indptr[-1] + len(counted))
    empty = np.zeros(0, dtype=np.int32)
    return Counted(list(index), np.array(indptr, dtype=np.int64), np.concatenate(ids) if ids else empty,
                   np.concatenate(counts) if counts else empty.astype(np.float32))


def _vocabulary(counted: Counted) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The `MAX_FEATURES` terms found in the most texts (ties: the first found first) and their idf."""
    df = np.bincount(counted.ids, minlength=len(counted.terms))
    chosen = np.argsort(-df, kind="stable")[:MAX_FEATURES]
    chosen = chosen[df[chosen] > 0]
    n = len(counted)
    idf = (np.log((1 + n) / (1 + df[chosen])) + 1.0).astype(np.float32)
    return chosen, idf


def _matrix(counted: Counted, chosen: npt.NDArray[np.int64], idf: npt.NDArray[np.float32],
            embedded: npt.NDArray[np.float32] | None = None) -> Any:
    """Sublinear tf-idf, each row L2-normalised, over the chosen terms, then (when given) each text's embedding
    weighted by `SEMANTIC_WEIGHT` in the columns after them.

    Built at once as the float64 CSR liblinear reads, so scikit-learn copies nothing before liblinear's own
    copy: stacking the two blocks as sparse matrices went through coordinate copies several times the size
    (on all of BANKING77 the embeddings are three quarters of the values), which was training's peak."""
    from scipy.sparse import csr_matrix

    n, width = len(counted), 0 if embedded is None else embedded.shape[1]
    column = np.full(len(counted.terms), -1, dtype=np.int32)
    column[chosen] = np.arange(len(chosen), dtype=np.int32)
    columns = column[counted.ids]
    kept = columns >= 0
    rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(counted.indptr))[kept]
    columns = columns[kept]
    values = (1.0 + np.log(counted.counts[kept])) * idf[columns].astype(np.float64)
    norms = np.sqrt(np.bincount(rows, weights=values * values, minlength=n))
    values /= np.where(norms == 0, 1.0, norms)[rows]
    lexical = np.bincount(rows, minlength=n)  # each row's kept terms, in order: rows are already grouped
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lexical + width, out=indptr[1:])
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    data = np.empty(int(indptr[-1]), dtype=np.float64)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lexical, out=starts[1:])
    at = indptr[rows] + (np.arange(len(rows)) - starts[rows])  # each kept term's place in its row
    indices[at], data[at] = columns, values
    if embedded is not None:
        offsets = np.arange(width, dtype=np.int64)
        for first in range(0, n, 1024):  # in slices, so the places of the dense block stay small
            last = min(first + 1024, n)
            at = (indptr[first:last] + lexical[first:last])[:, None] + offsets
            indices[at] = offsets.astype(np.int32) + len(chosen)
            data[at] = embedded[first:last] * SEMANTIC_WEIGHT
    matrix = csr_matrix((data, indices, indptr), shape=(n, len(chosen) + width))
    matrix.sort_indices()  # counting left each row's terms in the order they were met
    return matrix


def fit(texts: list[str], labels: list[str], counted: Counted | None = None,
        embedded: npt.NDArray[np.float32] | None = None) -> TenantModel:
    """Fit on every row; `embedded` (one sentence embedding a text) adds the semantic block."""
    from sklearn.svm import LinearSVC

    counted = counted if counted is not None else count_all(texts)
    chosen, idf = _vocabulary(counted)
    vocabulary = {counted.terms[int(g)]: i for i, g in enumerate(chosen)}
    categories = sorted(set(labels))
    svm = LinearSVC(C=C, random_state=0)
    matrix = _matrix(counted, chosen, idf, embedded)
    svm.fit(matrix, labels)
    del matrix  # liblinear's copy of it is gone too: the next fold's starts from here
    weights = np.asarray(svm.coef_, dtype=np.float32)
    bias = np.asarray(svm.intercept_, dtype=np.float32)
    if len(categories) == 2:  # liblinear keeps one row for two classes: the second's score
        weights, bias = np.vstack([-weights, weights]), np.concatenate([-bias, bias])
    lexical, extra = weights[:, :len(vocabulary)], weights[:, len(vocabulary):]
    return TenantModel(categories=[str(c) for c in svm.classes_], vocabulary=vocabulary, idf=idf,
                       weights=np.ascontiguousarray(lexical.T), bias=bias,
                       semantic=None if embedded is None else np.ascontiguousarray(extra.T * SEMANTIC_WEIGHT))


def cross_validated(texts: list[str], labels: list[str], folds: int = 5, seed: int = 0,
                    embedded: npt.NDArray[np.float32] | None = None, counted: Counted | None = None) -> float | None:
    """Accuracy on held-out folds, each fold's model trained on the others; None when a category has fewer
    examples than two folds need."""
    from sklearn.model_selection import StratifiedKFold

    smallest = min(Counter(labels).values())
    folds = min(folds, smallest)
    if folds < 2:
        return None
    counted = counted if counted is not None else count_all(texts)
    right = 0
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(texts, labels):
        model = fit([texts[i] for i in train], [labels[i] for i in train], counted.take(train),
                    None if embedded is None else embedded[train])
        right += sum(model.predict(texts[i], None if embedded is None else embedded[i])[0] == labels[i]
                     for i in test)
    return right / len(texts)


def train(rows: list[tuple[str, str]], *, folds: int = 5, use_semantic: bool | None = None) -> Trained | None:
    """A model from (text, category) rows, or None with fewer than two categories (nothing to choose).
    Semantic features join when the encoder is installed (or as `use_semantic` says)."""
    started = time.perf_counter()
    seen: dict[str, str] = {}
    for text, category in rows:  # newest first: a text's latest label wins
        seen.setdefault(" ".join(text.split()).lower(), category)
    texts, labels = list(seen), list(seen.values())
    if len(set(labels)) < MIN_CATEGORIES:
        return None
    embedded = semantic.encode(texts) if (semantic.available() if use_semantic is None else use_semantic) else None
    counted = count_all(texts)  # once, for the folds and the final fit
    accuracy = cross_validated(texts, labels, folds=3 if len(texts) > 20_000 else folds, embedded=embedded,
                               counted=counted)
    model = fit(texts, labels, counted, embedded=embedded)
    if embedded is not None:
        model.lexical = fit(texts, labels, counted)
    return Trained(model, len(texts), len(set(labels)), accuracy, time.perf_counter() - started)
