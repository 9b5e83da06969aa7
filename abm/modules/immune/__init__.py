"""The immune module (see module.py)."""
