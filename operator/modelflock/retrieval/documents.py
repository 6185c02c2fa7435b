"""Sources → documents → chunks, content hashes and the incremental ingest plan (pure)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_HEADING = re.compile(r"^#{1,6}\s+(.*\S)\s*$", re.M)


@dataclass(frozen=True)
class Document:
    doc_id: str  # "<kind>/<source>/<key>" or, for jsonl, "<kind>/<source>/<id>"
    source: str  # "<kind>/<source>/<key>": where it came from (shown with answers)
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    index: int
    title: str
    text: str


class SourceFormatError(ValueError):
    """A source's content does not parse in its declared format (message names the key)."""


def parse_source(
    kind: str, name: str, data: Mapping[str, str], fmt: str, keys: Sequence[str] = ()
) -> list[Document]:
    """The documents of one ConfigMap or Secret (`data` already decoded to text)."""
    chosen = [k for k in sorted(data) if not keys or k in keys]
    docs: list[Document] = []
    for key in chosen:
        where = f"{kind}/{name}/{key}"
        text = data[key]
        if fmt == "jsonl":
            docs += _jsonl(where, text)
            continue
        title = ""
        if fmt == "markdown":
            heading = _HEADING.search(text)
            title = heading.group(1) if heading else ""
        if text.strip():
            docs.append(Document(doc_id=where, source=where, text=text, title=title))
    return docs


def _jsonl(where: str, text: str) -> list[Document]:
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise SourceFormatError(f"{where} line {number}: not JSON") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise SourceFormatError(f"{where} line {number}: expected an object with 'text'")
        ident = item.get("id", number)
        if not isinstance(ident, str | int) or isinstance(ident, bool):
            raise SourceFormatError(f"{where} line {number}: 'id' must be a string or number")
        metadata = item.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise SourceFormatError(f"{where} line {number}: 'metadata' must be an object")
        title = item.get("title")
        docs.append(
            Document(
                doc_id=f"{where}#{ident}",
                source=f"{where}#{ident}",
                text=item["text"],
                title=title if isinstance(title, str) else "",
                metadata=metadata,
            )
        )
    return docs


def _sections(doc: Document, markdown: bool) -> list[tuple[str, str]]:
    """(title, text) parts: markdown is cut at headings, each part keeps its heading."""
    if not markdown:
        return [(doc.title, doc.text)]
    parts: list[tuple[str, str]] = []
    matches = list(_HEADING.finditer(doc.text))
    if not matches:
        return [(doc.title, doc.text)]
    if doc.text[: matches[0].start()].strip():
        parts.append((doc.title, doc.text[: matches[0].start()]))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(doc.text)
        body = doc.text[m.end() : end]
        if body.strip():
            parts.append((m.group(1), body))
    return parts


def chunk_document(doc: Document, size: int, overlap: int, markdown: bool = False) -> list[Chunk]:
    """Windows of `size` words that overlap by `overlap` words (never across a heading)."""
    chunks: list[Chunk] = []
    step = size - overlap
    for title, text in _sections(doc, markdown):
        words = text.split()
        start = 0
        while start < len(words):
            piece = " ".join(words[start : start + size])
            chunks.append(Chunk(len(chunks), title, piece))
            if start + size >= len(words):
                break
            start += step
    return chunks


def document_hash(doc: Document, fingerprint: str) -> str:
    """Changes when the document or how it is chunked/embedded (`fingerprint`) changes."""
    digest = hashlib.sha256()
    for part in (fingerprint, doc.doc_id, doc.source, doc.title, doc.text):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(json.dumps(dict(doc.metadata), sort_keys=True).encode())
    return digest.hexdigest()


def source_hash(hashes: Mapping[str, str]) -> str:
    """One hash over every (document id, document hash) pair."""
    digest = hashlib.sha256()
    for doc_id in sorted(hashes):
        digest.update(f"{doc_id}\0{hashes[doc_id]}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class IngestPlan:
    embed: list[Document]  # new or changed
    delete: list[str]  # document ids in the store that no source has any more
    unchanged: int


def plan_ingest(
    wanted: Iterable[Document], hashes: Mapping[str, str], stored: Mapping[str, str]
) -> IngestPlan:
    """What to embed and delete so the store matches the sources. `hashes` are the wanted
    documents' hashes, `stored` the store's (doc id → hash)."""
    docs = list(wanted)
    ids = {d.doc_id for d in docs}
    embed = [d for d in docs if stored.get(d.doc_id) != hashes[d.doc_id]]
    delete = sorted(i for i in stored if i not in ids)
    return IngestPlan(embed=embed, delete=delete, unchanged=len(docs) - len(embed))


def batches(counts: Sequence[int], batch_size: int) -> list[list[int]]:
    """Group documents (by their chunk counts) into embedding batches of about `batch_size`
    chunks: documents stay whole; one bigger than a batch goes alone (embedded in parts)."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, count in enumerate(counts):
        if current and total + count > batch_size:
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += count
    if current:
        groups.append(current)
    return groups
