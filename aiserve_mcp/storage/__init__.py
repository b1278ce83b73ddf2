"""Persistence: SQLAlchemy 2 async models, Alembic migrations, and shared counters (memory or Redis)."""
