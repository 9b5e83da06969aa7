"""Model modules: tumour, vasculature, immune, stroma (and therapy, next).

Each module declares what it owns (fields, layers, tables, death causes, rules, readouts) and keeps its config
section in ``config.py`` next to its rules. The engine (``abm/engine``) never imports them; ``abm.model`` picks
the modules a config switches on and hands them to the engine.
"""
