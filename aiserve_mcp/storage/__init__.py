"""Persistence: SQLAlchemy 2 async models, Alembic migrations, and rate-limit windows (memory or Redis)."""
