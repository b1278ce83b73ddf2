"""The aiserve worker: the process that runs on a rented machine (or beside the server) and hosts models."""

TOKEN_ENV = "AISERVE_WORKER_TOKEN"  # noqa: S105 (the name of the variable that carries the worker's token)
