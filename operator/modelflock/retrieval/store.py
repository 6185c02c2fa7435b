"""PostgreSQL/pgvector: the chunk table of a knowledge base, written by the operator and
read by routers. Every statement is parameterised; the only names put into SQL text are
table identifiers, which are checked against a strict pattern and quoted.

Tables of a knowledge base `t`:
- `t` (doc_id, chunk, source, title, content, metadata, embedding vector(d)), primary key
  (doc_id, chunk): a document's chunks can exist once only, whatever crashes;
- `t_docs` (doc_id, content_hash, chunks, updated_at): what is stored per document; written in
  the same transaction as its chunks, so a document is either wholly new or wholly old;
- an HNSW index on `t.embedding` with cosine distance.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from modelflock.retrieval.documents import Chunk, Document

_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,47}")
CREDENTIAL_KEYS = ("host", "port", "dbname", "username", "password")


class DimensionMismatch(Exception):
    """Vectors of another length than spec.embedding.dimensions (in the table, or from the
    embedding expert); the message names the field."""


def ident(table: str) -> str:
    """A table name as a quoted SQL identifier; ValueError for anything but [a-z0-9_]."""
    if not _TABLE.fullmatch(table):
        raise ValueError(f"invalid table name {table!r}")
    return f'"{table}"'


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form, passed as a parameter ($n::text::vector)."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


_VECTOR_HEAD = struct.Struct(">HH")  # dimensions, unused


def encode_vector(vector: Sequence[float] | npt.NDArray[np.float32]) -> bytes:
    """pgvector's binary form: dimensions, 0, then big-endian float4s (vector_send)."""
    values = np.asarray(vector, dtype=">f4")
    if values.ndim != 1:
        raise ValueError(f"a vector has one axis, got shape {values.shape}")
    return _VECTOR_HEAD.pack(len(values), 0) + values.tobytes()


def decode_vector(data: bytes) -> npt.NDArray[np.float32]:
    dimensions, _ = _VECTOR_HEAD.unpack_from(data)
    return np.frombuffer(data, dtype=">f4", count=dimensions, offset=4).astype(np.float32)


async def use_binary_vectors(conn: asyncpg.Connection) -> None:
    """Vectors go over the wire in pgvector's binary form (no text formatting or parsing: a
    384-dim vector as text is ~8 kB of digits). Wherever the extension put its type."""
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
        " WHERE t.typname = 'vector' ORDER BY n.nspname = 'public' DESC LIMIT 1"
    )
    if schema is None:
        raise asyncpg.UndefinedObjectError("type vector does not exist: CREATE EXTENSION vector")
    await conn.set_type_codec(
        "vector", schema=schema, encoder=encode_vector, decoder=decode_vector, format="binary"
    )


@dataclass(frozen=True)
class ConnectionInfo:
    host: str
    port: int
    dbname: str
    username: str
    password: str

    @classmethod
    def from_mapping(cls, data: Mapping[str, str], where: str) -> ConnectionInfo:
        missing = [k for k in CREDENTIAL_KEYS if not data.get(k)]
        if missing:
            raise ValueError(f"{where}: missing keys {', '.join(missing)}")
        try:
            port = int(data["port"])
        except ValueError:
            raise ValueError(f"{where}: port is not a number") from None
        return cls(data["host"], port, data["dbname"], data["username"], data["password"])

    @classmethod
    def from_dir(cls, path: Path) -> ConnectionInfo:
        """A Secret mounted as files (blocking: call it in a thread)."""
        data = {}
        for key in CREDENTIAL_KEYS:
            file = path / key
            if file.exists():
                data[key] = file.read_text().strip()
        return cls.from_mapping(data, f"secret directory {path}")

    def connect_kwargs(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "database": self.dbname,
            "user": self.username,
            "password": self.password,
        }


# ---------------------------------------------------------------- writing (the operator)


class WriteStore:
    """One connection with write credentials, for one ingest pass."""

    def __init__(self, conn: asyncpg.Connection, table: str) -> None:
        self.conn = conn
        self.table = table
        self.t = ident(table)
        self.docs = ident(f"{table}_docs")

    @classmethod
    async def connect(
        cls, info: ConnectionInfo, table: str, connect_seconds: float = 5.0
    ) -> WriteStore:
        conn = await asyncpg.connect(
            **info.connect_kwargs(), timeout=connect_seconds, command_timeout=60
        )
        return cls(conn, table)

    async def close(self) -> None:
        await self.conn.close()

    async def stored_dimensions(self) -> int | None:
        row = await self.conn.fetchval(
            "SELECT a.atttypmod FROM pg_attribute a JOIN pg_class c ON a.attrelid = c.oid "
            "WHERE c.relname = $1 AND a.attname = 'embedding' AND NOT a.attisdropped",
            self.table,
        )
        return None if row is None else int(row)

    async def ensure_schema(self, dimensions: int, m: int, ef_construction: int) -> None:
        """Create the tables and index if missing; DimensionMismatch if the table has other
        dimensions. CREATE EXTENSION needs a privileged role: done by the DBA when ours
        lacks the right (the error says so)."""
        stored = await self.stored_dimensions()
        if stored is not None and stored != dimensions:
            raise DimensionMismatch(
                f"spec.embedding.dimensions is {dimensions} but table {self.table} stores"
                f" vector({stored}): set spec.store.table to another table, or drop this one"
            )
        has_vector = await self.conn.fetchval(
            "SELECT count(*) FROM pg_extension WHERE extname = 'vector'"
        )
        if not has_vector:
            await self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        async with self.conn.transaction():
            await self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.t} ("
                " doc_id text NOT NULL, chunk integer NOT NULL, source text NOT NULL,"
                " title text NOT NULL DEFAULT '', content text NOT NULL,"
                " metadata jsonb NOT NULL DEFAULT '{}',"
                f" embedding vector({int(dimensions)}) NOT NULL,"
                " PRIMARY KEY (doc_id, chunk))"
            )
            await self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.docs} ("
                " doc_id text PRIMARY KEY, content_hash text NOT NULL,"
                " chunks integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
            )
            await self.conn.execute(
                f"CREATE INDEX IF NOT EXISTS {ident(self.table + '_hnsw')} ON {self.t}"
                f" USING hnsw (embedding vector_cosine_ops)"
                f" WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
            )

    async def grant_read(self, role: str) -> None:
        """Let the routers' read-only role SELECT the chunks (role checked to exist)."""
        exists = await self.conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            raise ValueError(f"the read-only role {role!r} does not exist in the database")
        quoted = await self.conn.fetchval("SELECT quote_ident($1)", role)
        await self.conn.execute(f"GRANT SELECT ON {self.t} TO {quoted}")

    async def document_hashes(self) -> dict[str, str]:
        rows = await self.conn.fetch(f"SELECT doc_id, content_hash FROM {self.docs}")
        return {r["doc_id"]: r["content_hash"] for r in rows}

    async def replace_document(
        self,
        doc: Document,
        content_hash: str,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        """The document's chunks and hash, all or nothing."""
        metadata = json.dumps(dict(doc.metadata))
        rows = [
            (doc.doc_id, c.index, doc.source, c.title, c.text, metadata, vector_literal(v))
            for c, v in zip(chunks, vectors, strict=True)
        ]
        async with self.conn.transaction():
            await self.conn.execute(f"DELETE FROM {self.t} WHERE doc_id = $1", doc.doc_id)
            await self.conn.executemany(
                f"INSERT INTO {self.t} (doc_id, chunk, source, title, content, metadata,"
                " embedding) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::text::vector)",
                rows,
            )
            await self.conn.execute(
                f"INSERT INTO {self.docs} (doc_id, content_hash, chunks) VALUES ($1, $2, $3)"
                " ON CONFLICT (doc_id) DO UPDATE SET content_hash = EXCLUDED.content_hash,"
                " chunks = EXCLUDED.chunks, updated_at = now()",
                doc.doc_id,
                content_hash,
                len(rows),
            )

    async def delete_documents(self, doc_ids: Sequence[str]) -> None:
        if not doc_ids:
            return
        async with self.conn.transaction():
            await self.conn.execute(f"DELETE FROM {self.t} WHERE doc_id = ANY($1::text[])", doc_ids)
            await self.conn.execute(
                f"DELETE FROM {self.docs} WHERE doc_id = ANY($1::text[])", doc_ids
            )

    async def counts(self) -> tuple[int, int]:
        docs = await self.conn.fetchval(f"SELECT count(*) FROM {self.docs}")
        chunks = await self.conn.fetchval(f"SELECT count(*) FROM {self.t}")
        return int(docs), int(chunks)


# ---------------------------------------------------------------- reading (the routers)


@dataclass(frozen=True)
class Passage:
    doc_id: str
    chunk: int
    source: str
    title: str
    content: str
    score: float  # cosine similarity, 1 - cosine distance


def search_sql(table: str) -> str:
    t = ident(table)
    return (
        "SELECT doc_id, chunk, source, title, content,"
        " 1 - (embedding <=> $1) AS score"
        f" FROM {t} ORDER BY embedding <=> $1 LIMIT $2"
    )


async def search(
    pool: asyncpg.Pool,
    table: str,
    vector: Sequence[float] | npt.NDArray[np.float32],
    top_k: int,
    seconds: float,
) -> list[Passage]:
    """The top_k nearest chunks (HNSW, cosine); raises on timeout or a store error. The
    pool's connections send vectors in binary (`open_pool`)."""
    rows = await pool.fetch(search_sql(table), vector, top_k, timeout=seconds)
    return [
        Passage(r["doc_id"], r["chunk"], r["source"], r["title"], r["content"], float(r["score"]))
        for r in rows
    ]


async def open_pool(info: ConnectionInfo, ef_search: int, seconds: float) -> asyncpg.Pool:
    """A small read pool; each connection gets the HNSW search width, a statement timeout
    (the server stops a query the client gave up on) and the binary vector codec, once."""

    async def setup(conn: asyncpg.Connection) -> None:
        await use_binary_vectors(conn)
        await conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
        await conn.execute(f"SET statement_timeout = {max(1, int(seconds * 1000))}")

    pool: asyncpg.Pool = await asyncpg.create_pool(
        **info.connect_kwargs(),
        min_size=1,
        max_size=8,
        timeout=seconds,
        init=setup,
        max_inactive_connection_lifetime=300,
    )
    return pool
