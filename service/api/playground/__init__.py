"""The playground page served at GET / (see routes.py)."""
