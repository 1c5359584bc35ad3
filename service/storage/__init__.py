"""Durable state under ``NTK_DATA_DIR``: a SQLite ledger plus array files."""
