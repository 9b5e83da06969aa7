"""Snapshot state to and from HDF5 groups: the one place both the writer and the readers use.

This module is the bottom layer of :mod:`abm.io`: it imports only h5py and NumPy, so the writer
(:mod:`abm.io.writer`) and the readers (:mod:`abm.io.reader`, :mod:`abm.io.run`) can share it without importing
each other.
"""

from __future__ import annotations

import h5py
import numpy as np

__all__ = ["read_snapshot_state", "read_state", "write_state"]


def write_state(group: h5py.Group, state: dict, comp: dict) -> None:
    """Write a (possibly nested) state mapping: scalars as attributes, arrays as datasets, dicts as groups.

    Nested mappings are how future state slots in without a format change: e.g. ``state["pk"][drug]`` with
    the compartment amounts of one drug, ``state["pending_doses"][drug]`` with the times and doses still to
    come (see docs/FORMAT.md). Boolean arrays are stored as uint8 with the attribute ``bool=True``.

    Parameters
    ----------
    group : h5py.Group
        Empty group to fill.
    state : dict
        Mapping of str to scalar, ndarray or nested mapping.
    comp : dict
        Dataset compression keywords, used for arrays of more than 1024 elements.
    """
    for key, value in state.items():
        if isinstance(value, dict):
            write_state(group.create_group(key), value, comp)
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            data = value.astype(np.uint8) if value.dtype == bool else value
            ds = group.create_dataset(key, data=data, **(comp if value.size > 1024 else {}))
            if value.dtype == bool:
                ds.attrs["bool"] = True
        else:
            group.attrs[key] = value


def read_state(group: h5py.Group) -> dict:
    """Inverse of :func:`write_state`: a nested mapping of scalars (attributes) and arrays (datasets)."""
    st: dict = dict(group.attrs)
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            st[key] = read_state(item)
        else:
            data = item[()]
            st[key] = data.astype(bool) if item.attrs.get("bool", False) else data
    return st


def read_snapshot_state(group: h5py.Group) -> dict:
    """Read one snapshot group back into the dictionary layout of :meth:`abm.model.Simulation.state`.

    Returns
    -------
    dict
        ``{"fields": {name: grid-shaped array}, "agents": {type: {column: array}}, "state": nested mapping}``.
    """
    fields = {name: ds[()] for name, ds in group["fields"].items()}
    agents = {kind: {col: ds[()] for col, ds in g.items()} for kind, g in group["agents"].items()}
    return {"fields": fields, "agents": agents, "state": read_state(group["state"])}
