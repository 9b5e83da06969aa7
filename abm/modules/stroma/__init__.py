"""The stroma module (see module.py)."""
