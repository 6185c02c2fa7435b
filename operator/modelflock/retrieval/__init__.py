"""Retrieval: documents → chunks → embeddings → PostgreSQL/pgvector, and queries on it."""
