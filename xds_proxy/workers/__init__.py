"""`--concurrency N`: one main process and N worker processes (docs/architecture.md)."""
