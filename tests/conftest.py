"""Shared fixtures. tests/ has no __init__.py: pytest puts tests/ on sys.path, so its helpers import by bare name."""

from pg import postgres_server, postgres_url  # noqa: F401  (fixtures: a throwaway PostgreSQL server and database)
