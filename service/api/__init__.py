"""The HTTP API: schemas, routers and the one mapping from engine errors to HTTP responses."""
