"""Intents: what the rules of one step want, committed once by :func:`abm.engine.commit.commit_agents`.

Rules never remove, add or move agents themselves. They record intents, and the commit applies them all at
once with random-priority conflict resolution, so the outcome does not depend on the order of agents or rules.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Intents"]


class Intents:
    """The intents of one step.

    Parameters
    ----------
    world : abm.engine.world.World
        The world the intents refer to (for table sizes and death-cause codes).

    Attributes
    ----------
    death_cause : dict of str to int8 array
        Per table, the code of the cause each agent dies of this step (0 = survives), created on first use.
    divisions, moves : dict of str to list of (rows, targets)
        Per table, rows that divide (move) and the voxel each daughter (mover) wants.
    recruits : dict of str to list of (voxels, columns, readout, where)
        Per table, voxels where new agents want to enter (only those where ``where`` holds, when it is given),
        their other column values, and the event readout that counts the admitted ones.
    layer_sets : list of (layer, voxels, value)
        Layer voxels to set at the commit (e.g. necrotic voxels cleared); ``value`` a scalar or one per voxel.
    notes : dict of str to list
        Module-specific intents read by that module's commit hook (e.g. vessel sprouts).
    """

    def __init__(self, world):
        self.world = world
        self.xp = world.xp
        self.death_cause: dict = {}
        self.divisions: dict = {}
        self.moves: dict = {}
        self.recruits: dict = {}
        self.layer_sets: list = []
        self.notes: dict = {}

    def causes(self, table: str):
        """The death-cause codes of ``table`` this step (int8, one per agent), created on first use."""
        codes = self.death_cause.get(table)
        if codes is None:
            codes = self.death_cause[table] = self.xp.zeros(len(self.world.tables[table]), dtype=np.int8)
        return codes

    def kill(self, table: str, which, cause: str, where=None) -> None:
        """Mark agents of ``table`` as dying of ``cause``; ``which`` is a boolean mask or row indices.

        With row indices, ``where`` (bool, one per row) keeps only the rows where it is true; rows may repeat
        (two killers, one target). When several rules kill one agent the cause of highest priority wins, whatever
        the rule order. Neither a mask nor ``where`` is compacted on a GPU (a compaction is a host sync there).
        """
        xp = self.xp
        code = np.int8(self.world.death_codes[table][cause])
        codes = self.causes(table)
        if which.dtype == bool:
            xp.copyto(codes, xp.maximum(codes, code), where=which)
            return
        if where is not None:
            if xp is np:
                which = which[where]
            else:  # the hits of each agent by scatter-add, then one masked write
                hits = xp.zeros(codes.shape[0], dtype=np.int32)
                xp.add.at(hits, which, where.astype(np.int32))
                xp.copyto(codes, xp.maximum(codes, code), where=hits > 0)
                return
        codes[which] = xp.maximum(codes[which], code)

    def divide(self, table: str, parents, targets) -> None:
        """Record that agents ``parents`` want to place a daughter in voxels ``targets``."""
        self.divisions.setdefault(table, []).append((parents, targets))

    def move(self, table: str, rows, targets) -> None:
        """Record that agents ``rows`` want to move to voxels ``targets`` (capacity layers)."""
        self.moves.setdefault(table, []).append((rows, targets))

    def recruit(self, table: str, voxels, columns: dict, readout: str | None = None, where=None) -> None:
        """Record new agents wanting to enter at ``voxels`` with scalar column values ``columns``.

        With ``where`` (bool, one per voxel) only the voxels where it holds ask; the commit picks them for all
        requests together, one host sync on a GPU rather than one per request.
        """
        self.recruits.setdefault(table, []).append((voxels, columns, readout, where))

    def set_layer(self, layer: str, voxels, value) -> None:
        """Record that ``layer`` takes ``value`` (a scalar, or one value per voxel) at flat ``voxels`` at the commit."""
        self.layer_sets.append((layer, voxels, value))

    def note(self, key: str, value) -> None:
        """Record a module-specific intent under ``key`` for that module's commit hook."""
        self.notes.setdefault(key, []).append(value)
