"""Celery workers: thin tasks that take ids, call the science core and write results to the DB."""
