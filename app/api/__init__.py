"""The HTTP API (FastAPI). Routes are thin; the logic lives in app.services."""
