"""Benchmark of the pool choice against Celery's defaults: ``python -m bench``."""
