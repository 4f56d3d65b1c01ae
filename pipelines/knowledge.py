"""The tenant's knowledge base: import Markdown, HTML and text, chunk by headings, embed, and retrieve.

Chunks follow the document's headings (a chunk never spans two sections), are about `CHUNK_CHARS` long
and overlap by `OVERLAP_CHARS` within a section. Re-importing a changed file replaces its chunks; an
unchanged file (same content hash and embedding model) costs nothing. Retrieval is hybrid, always inside
one tenant: the tenant's nearest chunks by pgvector cosine distance (exactly, or on the shared HNSW index
for large tenants: see `nearest`) and PostgreSQL full-text search in the question's language, fused by
reciprocal rank fusion.

An import is metered like any provider call: each file that is embedded leaves an `ai_usage` row (feature
`knowledge`), in the transaction that stores its chunks, and the monthly budget is checked before a hosted
provider embeds (refused when spent: see `pipelines.ai.spend.require_budget`) and after (its alerts are
that transaction's change events).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, text, update

from db import direct
from db.schema import knowledge_chunks, knowledge_documents
from db.tenancy import TenantId
from pipelines import changes
from pipelines.ai import semantic, spend
from pipelines.ai.base import Passage, Provider, Usage

CHUNK_CHARS = 900
OVERLAP_CHARS = 150
SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".txt": "text"}
RRF_K = 60
SEMANTIC_READ_CHARS = 1_400  # a chunk is about 900 characters, at most 1.5 times that


@dataclass(frozen=True)
class Chunk:
    heading: str
    content: str


class _HtmlToMarkdown(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "nav", "footer"):
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in ("p", "div", "li", "br", "tr", "section", "article"):
            self.out.append("\n\n" if tag != "li" else "\n- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "nav", "footer"):
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(re.sub(r"\s+", " ", data))


def to_markdown(content: str, kind: str) -> str:
    if kind == "html":
        parser = _HtmlToMarkdown()
        parser.feed(content)
        parser.close()
        return "".join(parser.out)
    return content


def sections(markdown: str) -> Iterator[tuple[str, str]]:
    """(heading path, body) for each section; the path joins the enclosing headings with ' > '."""
    path: list[tuple[int, str]] = []
    body: list[str] = []
    for line in markdown.splitlines():
        match = re.match(r"^(#{1,6})\s+(.*\S)\s*#*\s*$", line)
        if match:
            if any(b.strip() for b in body):
                yield " > ".join(h for _, h in path), "\n".join(body).strip()
            body = []
            level = len(match[1])
            path = [(lv, h) for lv, h in path if lv < level] + [(level, match[2].strip())]
        else:
            body.append(line)
    if any(b.strip() for b in body):
        yield " > ".join(h for _, h in path), "\n".join(body).strip()


def chunk(markdown: str) -> list[Chunk]:
    chunks: list[Chunk] = []
    for heading, body in sections(markdown):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", body) if p.strip()]
        current = ""
        for paragraph in paragraphs:
            if current and len(current) + len(paragraph) + 2 > CHUNK_CHARS:
                chunks.append(Chunk(heading, current))
                tail = current[-OVERLAP_CHARS:]
                current = tail[tail.find(" ") + 1:] if " " in tail else tail
            current = f"{current}\n\n{paragraph}" if current else paragraph
            while len(current) > CHUNK_CHARS * 1.5:  # one very long paragraph: cut at a sentence
                cut = current.rfind(". ", 0, CHUNK_CHARS) + 1 or CHUNK_CHARS
                chunks.append(Chunk(heading, current[:cut].strip()))
                current = current[max(0, cut - OVERLAP_CHARS):].strip()
        if current:
            chunks.append(Chunk(heading, current))
    return chunks


def title_of(markdown: str, fallback: str) -> str:
    match = re.search(r"^#\s+(.+)$", markdown, re.MULTILINE)
    return match[1].strip() if match else fallback


def files(path: Path) -> list[tuple[str, Path]]:
    """(source name, file) for a file or every supported file under a folder."""
    if path.is_file():
        return [(path.name, path)] if path.suffix.lower() in SUFFIXES else []
    return sorted((str(p.relative_to(path)), p) for p in path.rglob("*")
                  if p.is_file() and p.suffix.lower() in SUFFIXES)


@dataclass(frozen=True)
class ImportResult:
    source: str
    status: str  # "created", "updated" or "unchanged"
    chunks: int
    usage: Usage | None = None  # the embedding call's, when one was made


@dataclass(frozen=True)
class Metering:
    """What an import's spend is priced with and checked against (`INTAKE_AI_PRICES`, the tenant's budget)."""

    prices: dict[str, tuple[float, float]]
    budget_usd: float | None = None


def import_document(conn: Connection, tenant: TenantId, source: str, raw: str, kind: str, provider: Provider,
                    dim: int, before_embedding: Callable[[], None] | None = None) -> ImportResult:
    markdown = to_markdown(raw, kind)
    digest = hashlib.sha256(markdown.encode()).hexdigest()
    docs = knowledge_documents.c
    existing = conn.execute(select(docs.id, docs.content_hash, docs.embedding_model)
                            .where(docs.tenant_id == tenant, docs.source == source).with_for_update()).first()
    model = provider.embedding_model
    if existing and existing.content_hash == digest and existing.embedding_model == model:
        return ImportResult(source, "unchanged", 0)
    pieces = chunk(markdown)
    if pieces and before_embedding is not None:
        before_embedding()
    texts = [f"{c.heading}\n{c.content}" for c in pieces]
    vectors, usage = provider.embed(texts) if pieces else ([], None)
    meanings = [_literal(row) for row in semantic.encode(texts, SEMANTIC_READ_CHARS)] if (
        pieces and semantic.available()) else [None] * len(pieces)
    if any(len(v) != dim for v in vectors):
        raise ValueError(f"the embedding model returns {len(vectors[0])} dimensions; the schema has {dim} "
                         "(INTAKE_EMBEDDING_DIM at migration time)")
    title = title_of(markdown, Path(source).stem)
    if existing:
        document_id = existing.id
        conn.execute(delete(knowledge_chunks).where(knowledge_chunks.c.tenant_id == tenant,
                                                    knowledge_chunks.c.document_id == document_id))
        conn.execute(update(knowledge_documents).where(docs.id == document_id).values(
            title=title, content_hash=digest, embedding_model=model, embedding_dim=dim, chunk_count=len(pieces),
            updated_at=func.now()))
    else:
        document_id = conn.execute(insert(knowledge_documents).values(
            tenant_id=tenant, source=source, title=title, content_hash=digest, embedding_model=model,
            embedding_dim=dim, chunk_count=len(pieces)).returning(docs.id)).scalar_one()
    if pieces:
        conn.execute(text("""
            INSERT INTO knowledge_chunks (tenant_id, document_id, ordinal, heading, content, embedding, embedding_model,
                                          semantic)
            SELECT :t, :d, o, h, c, CAST(e AS vector), :m, CAST(s AS vector)
            FROM unnest(CAST(:ordinals AS int[]), CAST(:headings AS text[]), CAST(:contents AS text[]),
                        CAST(:embeddings AS text[]), CAST(:meanings AS text[])) AS u(o, h, c, e, s)"""),
            {"t": tenant, "d": document_id, "m": model, "ordinals": list(range(len(pieces))),
             "headings": [c.heading for c in pieces], "contents": [c.content for c in pieces],
             "embeddings": [_literal(v) for v in vectors], "meanings": meanings})
    return ImportResult(source, "updated" if existing else "created", len(pieces), usage)


def _literal(vector: Any) -> str:
    return "[" + ",".join(f"{float(x):.6f}" for x in vector) + "]"


def import_metered(conn: Connection, tenant: TenantId, source: str, raw: str, kind: str, provider: Provider,
                   dim: int, metering: Metering) -> ImportResult:
    """`import_document` paid for as any call: refused before a hosted provider embeds over budget, its usage
    recorded, the budget's alerts the transaction's last statement."""
    feed: list[changes.Change] = []

    def within_budget() -> None:
        if provider.name != "local":
            spend.require_budget(conn, tenant, metering.budget_usd, feed=feed)

    result = import_document(conn, tenant, source, raw, kind, provider, dim, within_budget)
    if result.usage is not None:
        spend.record_usage(conn, tenant, None, [("knowledge", result.usage)], metering.prices)
        spend.check_budget(conn, tenant, metering.budget_usd, feed=feed)
    changes.record(conn, tenant, feed)
    return result


def import_path(conn_factory: Callable[[], Iterator[Connection]], tenant: TenantId, path: Path, provider: Provider,
                dim: int, on_file: Callable[[ImportResult], None] | None = None, *,
                metering: Metering | None = None) -> list[ImportResult]:
    """Import a file or folder, one transaction per file (a bad file does not undo the others)."""
    results = []
    for source, file in files(path):
        raw = file.read_text(encoding="utf-8", errors="replace")
        for conn in conn_factory():
            result = import_metered(conn, tenant, source, raw, SUFFIXES[file.suffix.lower()], provider, dim,
                                    metering or Metering({}))
        results.append(result)
        if on_file is not None:
            on_file(result)
    return results


# The text-search configuration for a question in each language (migration 0010 indexes chunks in all).
TS_CONFIGS = {"en": "english", "fi": "finnish", "sv": "swedish", "de": "german", "es": "spanish", "fr": "french"}
EXACT_BELOW = 20_000  # a tenant with fewer chunks is searched exactly (see `retrieve`)
EF_SEARCH = 200  # HNSW candidates per search for larger tenants (pgvector's default is 40)
QUESTION_CHARS = 2_000  # of a question that the full-text half reads
RANK_NORMALIZATION = 1  # ts_rank_cd divides by 1 + log(length): a long chunk does not win by length alone
# How much the meaning counts beside the words, by the question's language ("": any other). The encoder was
# not trained on Finnish or Swedish: there every text looks alike to it (0.5 to 0.76), so the words decide.
# Chosen on the two question sets of tests/test_retrieval_semantic.py (README, "Knowledge retrieval").
SEMANTIC_WEIGHT = {"": 2.0, "en": 2.0, "de": 2.0, "es": 2.0, "fr": 2.0, "fi": 0.25, "sv": 0.25}
KEYWORD_LIFT = 0.25  # of a blended score, when the question's words matched the chunk's (full text)

COUNT_UP_TO = text("SELECT count(*) AS n FROM (SELECT 1 FROM knowledge_chunks WHERE tenant_id = :t LIMIT :n) AS s")
EF = text("SELECT set_config('hnsw.ef_search', :ef, true)")
# Adding 0 to the distance keeps any plan off the shared HNSW index: an exact scan of the tenant's rows.
NEAREST_EXACT = text("""
SELECT id FROM knowledge_chunks WHERE tenant_id = :t
ORDER BY (embedding <=> CAST(:q AS vector)) + 0 LIMIT :pool
""")
NEAREST_INDEXED = text("""
SELECT id FROM knowledge_chunks WHERE tenant_id = :t ORDER BY embedding <=> CAST(:q AS vector) LIMIT :pool
""")
# The semantic ranking, exact within the tenant (the column has no index; chunks imported without the encoder
# have no vector and are not ranked by it).
NEAREST_SEMANTIC = text("""
SELECT id FROM knowledge_chunks WHERE tenant_id = :t AND semantic IS NOT NULL
ORDER BY (semantic <=> CAST(:s AS vector)) + 0 LIMIT :pool
""")
FUSE = text("""
WITH vec AS (
    SELECT id, rank FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS v(id, rank)
), sem AS (
    SELECT id, rank FROM unnest(CAST(:sem_ids AS uuid[])) WITH ORDINALITY AS v(id, rank)
), query AS (
    SELECT CASE WHEN words = '' THEN NULL ELSE to_tsquery('simple', words) END AS q
    FROM (SELECT coalesce(string_agg(quote_literal(lexeme) || CASE WHEN length(lexeme) >= 5 THEN ':*' ELSE '' END,
                                     ' | '), '') AS words
          FROM unnest(to_tsvector(CAST(:config AS regconfig), :question))) AS w
), fts AS (
    SELECT c.id, row_number() OVER (ORDER BY ts_rank_cd(c.search_vector, query.q, :norm) DESC, c.id) AS rank
    FROM knowledge_chunks c, query
    WHERE c.tenant_id = :t AND c.search_vector @@ query.q
    ORDER BY ts_rank_cd(c.search_vector, query.q, :norm) DESC, c.id LIMIT :pool
)
SELECT c.id, c.heading, c.content, 1 - (c.embedding <=> CAST(:q AS vector)) AS similarity,
       1 - (c.semantic <=> CAST(:s AS vector)) AS meaning,
       fts.rank IS NOT NULL AS keyword_hit,
       coalesce(1.0 / (:k + vec.rank), 0) + coalesce(1.0 / (:k + fts.rank), 0)
       + :ws * coalesce(1.0 / (:k + sem.rank), 0) AS fused
FROM (SELECT id FROM vec UNION SELECT id FROM fts UNION SELECT id FROM sem) AS found
JOIN knowledge_chunks c ON c.id = found.id AND c.tenant_id = :t
LEFT JOIN vec ON vec.id = c.id LEFT JOIN fts ON fts.id = c.id LEFT JOIN sem ON sem.id = c.id
ORDER BY fused DESC, similarity DESC, c.id LIMIT :limit
""")


def nearest(conn: Connection, tenant: TenantId, vector: str, pool: int, exact_below: int = EXACT_BELOW) -> list[str]:
    """The ids of the tenant's `pool` nearest chunks, nearest first; never fewer than the tenant can give.

    All tenants share one HNSW index, and pgvector 0.6 filters by tenant only after the index scan, among
    `hnsw.ef_search` candidates: a tenant with a small share of the index gets a few rows or none. Below
    `exact_below` chunks the search is exact (a few milliseconds; see the README for the crossover). Above
    it the index is used, and when the tenant's rows among its candidates are fewer than asked for (the
    tenant's share is small after all), the search is done again exactly. The exact statement cannot use
    the index whatever plan PostgreSQL picks, a generic plan of a prepared statement included.
    """
    (size,) = direct.rows(conn, COUNT_UP_TO, {"t": tenant, "n": exact_below})
    params = {"t": tenant, "q": vector, "pool": pool}
    if size.n < exact_below:
        return [str(r.id) for r in direct.rows(conn, NEAREST_EXACT, params)]
    direct.run(conn, EF, {"ef": str(EF_SEARCH)})
    ids = [str(r.id) for r in direct.rows(conn, NEAREST_INDEXED, params)]
    if len(ids) < pool:
        ids = [str(r.id) for r in direct.rows(conn, NEAREST_EXACT, params)]
    return ids


def retrieve(conn: Connection, tenant: TenantId, question: str, vector: list[float], *, limit: int = 5,
             pool: int = 40, language: str | None = None, exact_below: int = EXACT_BELOW,
             meaning: Sequence[float] | None = None) -> list[Passage]:
    """The tenant's best passages for a question: vector and full-text rankings fused (reciprocal rank fusion).

    The full-text half reads the question in its language's configuration (stop words dropped, words
    stemmed; 'simple' when the language is unknown), ranked with a length normalization.
    """
    literal = "[" + ",".join(f"{x:.6f}" for x in vector) + "]"
    # What PostgreSQL text cannot hold (NUL, lone surrogates) becomes a space or U+FFFD.
    question = question[:QUESTION_CHARS].replace("\x00", " ").encode("utf-8", "replace").decode()
    ids = nearest(conn, tenant, literal, pool, exact_below)
    weight = SEMANTIC_WEIGHT.get(language or "", SEMANTIC_WEIGHT[""])
    sem_literal = _literal(meaning) if meaning is not None else None
    sem_ids = [] if sem_literal is None else [
        str(r.id) for r in direct.rows(conn, NEAREST_SEMANTIC, {"t": tenant, "s": sem_literal, "pool": pool})]
    rows = direct.rows(conn, FUSE, {"t": tenant, "q": literal, "ids": ids, "pool": pool, "k": RRF_K,
                                    "limit": limit if sem_literal is None else pool,
                                    "config": TS_CONFIGS.get(language or "", "simple"), "s": sem_literal,
                                    "sem_ids": sem_ids, "ws": 1.0, "question": question,
                                    "norm": RANK_NORMALIZATION})
    if sem_literal is None:  # lexical only: the fused order, each scored by its cosine similarity and keywords
        return [Passage(str(r.id), r.heading, r.content,
                        round(float(r.similarity) + (0.15 if r.keyword_hit else 0.0), 4)) for r in rows]
    passages = [Passage(str(r.id), r.heading, r.content, blended(r, weight)) for r in rows]
    return sorted(passages, key=lambda p: -p.score)[:limit]


def blended(row: Any, weight: float) -> float:
    """A candidate's score where the meaning counts: its lexical similarity (lifted by `KEYWORD_LIFT` when its
    words matched) and its semantic similarity times `weight`, over 1 + weight, so that it stays on the
    scale the drafter's threshold reads (`pipelines.ai.local.RELEVANT`). A chunk without a semantic vector
    counts its lexical half alone."""
    lexical = float(row.similarity) + (KEYWORD_LIFT if row.keyword_hit else 0.0)
    if row.meaning is None:
        return round(lexical, 4)
    return round((lexical + weight * float(row.meaning)) / (1 + weight), 4)
