"""The tumour module (see module.py)."""
