"""The tenant's knowledge base: import Markdown, HTML and text, chunk by headings, embed, and retrieve.

Chunks follow the document's headings (a chunk never spans two sections), are about `CHUNK_CHARS` long
and overlap by `OVERLAP_CHARS` within a section. Re-importing a changed file replaces its chunks; an
unchanged file (same content hash and embedding model) costs nothing. Retrieval is hybrid: pgvector
cosine distance on the HNSW index and PostgreSQL full-text search, fused by reciprocal rank fusion, always
inside one tenant.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from sqlalchemy import Connection, text

from db.tenancy import TenantId
from pipelines.ai.base import Passage, Provider

CHUNK_CHARS = 900
OVERLAP_CHARS = 150
SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".txt": "text"}
RRF_K = 60


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


def import_document(conn: Connection, tenant: TenantId, source: str, raw: str, kind: str, provider: Provider,
                    dim: int) -> ImportResult:
    markdown = to_markdown(raw, kind)
    digest = hashlib.sha256(markdown.encode()).hexdigest()
    existing = conn.execute(text("SELECT id, content_hash, embedding_model FROM knowledge_documents "
                                 "WHERE tenant_id = :t AND source = :s FOR UPDATE"), {"t": tenant, "s": source}).first()
    model = provider.embedding_model
    if existing and existing.content_hash == digest and existing.embedding_model == model:
        return ImportResult(source, "unchanged", 0)
    pieces = chunk(markdown)
    vectors, _ = provider.embed([f"{c.heading}\n{c.content}" for c in pieces]) if pieces else ([], None)
    if any(len(v) != dim for v in vectors):
        raise ValueError(f"the embedding model returns {len(vectors[0])} dimensions; the schema has {dim} "
                         "(INTAKE_EMBEDDING_DIM at migration time)")
    title = title_of(markdown, Path(source).stem)
    if existing:
        document_id = existing.id
        conn.execute(text("DELETE FROM knowledge_chunks WHERE tenant_id = :t AND document_id = :d"),
                     {"t": tenant, "d": document_id})
        conn.execute(text("UPDATE knowledge_documents SET title = :title, content_hash = :h, embedding_model = :m, "
                          "embedding_dim = :dim, chunk_count = :n, updated_at = now() WHERE id = :d"),
                     {"title": title, "h": digest, "m": model, "dim": dim, "n": len(pieces), "d": document_id})
    else:
        document_id = conn.execute(text(
            "INSERT INTO knowledge_documents (tenant_id, source, title, content_hash, embedding_model, embedding_dim, "
            "chunk_count) VALUES (:t, :s, :title, :h, :m, :dim, :n) RETURNING id"),
            {"t": tenant, "s": source, "title": title, "h": digest, "m": model, "dim": dim, "n": len(pieces)},
        ).scalar_one()
    if pieces:
        conn.execute(text("""
            INSERT INTO knowledge_chunks (tenant_id, document_id, ordinal, heading, content, embedding, embedding_model)
            SELECT :t, :d, o, h, c, CAST(e AS vector), :m
            FROM unnest(CAST(:ordinals AS int[]), CAST(:headings AS text[]), CAST(:contents AS text[]),
                        CAST(:embeddings AS text[])) AS u(o, h, c, e)"""),
            {"t": tenant, "d": document_id, "m": model, "ordinals": list(range(len(pieces))),
             "headings": [c.heading for c in pieces], "contents": [c.content for c in pieces],
             "embeddings": ["[" + ",".join(f"{x:.6f}" for x in v) + "]" for v in vectors]})
    return ImportResult(source, "updated" if existing else "created", len(pieces))


def import_path(conn_factory: Callable[[], Iterator[Connection]], tenant: TenantId, path: Path, provider: Provider,
                dim: int, on_file: Callable[[ImportResult], None] | None = None) -> list[ImportResult]:
    """Import a file or folder, one transaction per file (a bad file does not undo the others)."""
    results = []
    for source, file in files(path):
        raw = file.read_text(encoding="utf-8", errors="replace")
        for conn in conn_factory():
            result = import_document(conn, tenant, source, raw, SUFFIXES[file.suffix.lower()], provider, dim)
        results.append(result)
        if on_file is not None:
            on_file(result)
    return results


_WORD = re.compile(r"[^\W_]{2,}", re.UNICODE)

RETRIEVE = text("""
WITH vec AS (
    SELECT id, row_number() OVER (ORDER BY embedding <=> CAST(:q AS vector)) AS rank
    FROM knowledge_chunks WHERE tenant_id = :t
    ORDER BY embedding <=> CAST(:q AS vector) LIMIT :pool
), fts AS (
    SELECT id, row_number() OVER (ORDER BY ts_rank_cd(search_vector, query) DESC) AS rank
    FROM knowledge_chunks, to_tsquery('simple', :tsquery) AS query
    WHERE tenant_id = :t AND :tsquery <> '' AND search_vector @@ query
    ORDER BY ts_rank_cd(search_vector, query) DESC LIMIT :pool
)
SELECT c.id, c.heading, c.content, 1 - (c.embedding <=> CAST(:q AS vector)) AS similarity,
       fts.rank IS NOT NULL AS keyword_hit,
       coalesce(1.0 / (:k + vec.rank), 0) + coalesce(1.0 / (:k + fts.rank), 0) AS fused
FROM knowledge_chunks c
LEFT JOIN vec ON vec.id = c.id LEFT JOIN fts ON fts.id = c.id
WHERE c.tenant_id = :t AND (vec.id IS NOT NULL OR fts.id IS NOT NULL)
ORDER BY fused DESC LIMIT :limit
""")


def tsquery(question: str) -> str:
    """Any of the question's words (prefix-matched when long enough), for the 'simple' configuration."""
    words = sorted({w.lower() for w in _WORD.findall(question)})
    return " | ".join(f"{w}:*" if len(w) >= 4 else w for w in words[:32])


def retrieve(conn: Connection, tenant: TenantId, question: str, vector: list[float], *, limit: int = 5,
             pool: int = 40) -> list[Passage]:
    conn.execute(text("SET LOCAL hnsw.ef_search = 100"))
    rows = conn.execute(RETRIEVE, {"t": tenant, "q": "[" + ",".join(f"{x:.6f}" for x in vector) + "]",
                                   "tsquery": tsquery(question), "pool": pool, "k": RRF_K, "limit": limit}).all()
    # A passage's score is its cosine similarity, lifted when the keywords matched too.
    return [Passage(str(r.id), r.heading, r.content, round(float(r.similarity) + (0.15 if r.keyword_hit else 0.0), 4))
            for r in rows]

