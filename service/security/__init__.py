"""Access control and limits: API keys, per-key rate limits (FastAPI-free)."""
