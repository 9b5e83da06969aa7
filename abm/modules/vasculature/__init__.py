"""The vasculature module (see module.py)."""
