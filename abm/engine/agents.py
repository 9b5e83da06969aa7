"""Structure-of-arrays agent tables.

Each cell type declares its columns (name -> :class:`Column` with dtype, shape, unit) and keeps its agents in an
:class:`AgentTable`: one backend array per column, all of equal length. Births append rows; deaths compact
them with one index array. No Python loop ever runs over agents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AgentTable", "Column"]


@dataclass(frozen=True)
class Column:
    """Schema of one agent column.

    Attributes
    ----------
    dtype : str
        NumPy dtype name.
    unit : str
        Physical unit, or ``"-"`` for dimensionless and ``"flag"`` for booleans.
    description : str
        What the column holds.
    fill : float or None
        Value of rows appended without this column and of a snapshot that lacks it (a column a module adds only
        in some runs, such as the tumour's infection clock); ``None``: the column must always be given.
    """

    dtype: str
    unit: str
    description: str
    fill: float | None = None


class AgentTable:
    """Agents of one type as columns of equal length on the backend.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    schema : dict of str to Column
        The columns this type has.
    """

    def __init__(self, xp, schema: dict[str, Column]):
        self.xp = xp
        self.schema = dict(schema)
        self.columns = {name: xp.zeros(0, dtype=col.dtype) for name, col in self.schema.items()}

    def __len__(self) -> int:
        return int(next(iter(self.columns.values())).shape[0])

    def __getitem__(self, name: str):
        return self.columns[name]

    def __setitem__(self, name: str, values) -> None:
        if name not in self.schema:
            raise KeyError(f"no column '{name}' in this agent table (columns: {', '.join(self.schema)})")
        if values.shape[0] != len(self):
            raise ValueError(f"column '{name}' given {values.shape[0]} rows, the table has {len(self)}")
        self.columns[name] = values.astype(self.schema[name].dtype, copy=False)

    def append(self, **values) -> None:
        """Append rows; every column must be given, with equal lengths."""
        self.keep(None, **values)

    def take(self, index) -> dict:
        """Column values at ``index`` (an integer or boolean array), as a dict of new arrays."""
        return {name: arr[index] for name, arr in self.columns.items()}

    def keep(self, mask, **appended) -> None:
        """Keep only the rows where ``mask`` is true (``None``: all), preserving order, then append ``appended``.

        Removing and appending together copies each column once. Appended rows must give every column, with
        equal lengths.
        """
        xp = self.xp
        if appended:
            missing = set(self.schema) - set(appended)
            unfilled = sorted(c for c in missing if self.schema[c].fill is None)
            if unfilled:
                raise ValueError(f"append is missing column(s) {', '.join(unfilled)}")
            lengths = {int(v.shape[0]) for v in appended.values()}
            if len(lengths) != 1:
                raise ValueError(f"append got columns of different lengths {sorted(lengths)}")
            n = lengths.pop()
            appended = {**appended, **{c: xp.full(n, self.schema[c].fill, dtype=self.schema[c].dtype)
                                       for c in missing}}
        rows = None if mask is None else xp.flatnonzero(mask)  # one host sync for all columns, not one each
        for name, col in self.schema.items():
            kept = self.columns[name] if rows is None else self.columns[name].take(rows)
            if appended:
                kept = xp.concatenate([kept, xp.asarray(appended[name], dtype=col.dtype)])
            self.columns[name] = kept

    def to_host(self, to_host) -> dict[str, np.ndarray]:
        """All columns as host arrays, using the backend's ``to_host``."""
        return {name: to_host(arr) for name, arr in self.columns.items()}

    def load(self, columns: dict[str, np.ndarray]) -> None:
        """Replace the table's contents with host columns (for a restart).

        Every column must be present, except those with a ``fill`` value, which take it where the snapshot lacks them.
        """
        missing = set(self.schema) - set(columns)
        unfilled = sorted(c for c in missing if self.schema[c].fill is None)
        if unfilled:
            raise ValueError(f"snapshot lacks column(s) {', '.join(unfilled)}")
        n = len(next(iter(columns.values()))) if columns else 0
        for name, col in self.schema.items():
            if name in missing:
                self.columns[name] = self.xp.full(n, col.fill, dtype=col.dtype)
            else:
                self.columns[name] = self.xp.asarray(columns[name], dtype=col.dtype)
