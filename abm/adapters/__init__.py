"""Adapters at the edge: wrappers that let other tools drive the engine.

These are the only modules under ``abm`` that import third-party modelling or scheduling libraries (a test
enforces it). Each adapter is imported on first use, so importing :mod:`abm.adapters` needs none of them:

``TMEModel``
    A ``mesa.Model`` over :class:`abm.model.Simulation` (:mod:`abm.adapters.mesa_model`; needs
    ``pip install 'tme-abm[mesa]'``).
``tme viz``
    The interactive browser view (:mod:`abm.adapters.viz`; Solara and Mesa's visualisation, needs
    ``pip install 'tme-abm[viz]'``).

:mod:`abm.adapters.dask_runner`
    The Dask and SLURM (dask-jobqueue) back ends of :func:`abm.cohort.executors.run_tasks` (needs
    ``pip install 'tme-abm[cluster]'``).
"""

from __future__ import annotations

import importlib

__all__ = ["TMEModel"]

_LAZY = {"TMEModel": "abm.adapters.mesa_model"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'abm.adapters' has no attribute '{name}'")
