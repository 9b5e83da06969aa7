"""The generic commit: apply one step's intents to every table and layer at once.

Order, the same every step:

1. deaths are recorded for every table (cause of highest priority; the dead rows' columns are kept in the
   :class:`CommitRecord` for the module hooks);
2. divisions on the exclusive tissue layer, all tables together, conflicts for a voxel resolved by random
   priority (stream ``engine/division_conflicts``); each table's ``on_divide`` sets the daughters' columns;
3. moves on capacity layers, admitted by random priority against the places free at the start of the step
   (every current occupant holds its place this step, so a voxel never overfills; ``engine/moves``);
4. the dead are removed and the daughters appended (one copy per column);
5. recruitment on capacity layers against the places left after moves and deaths (``engine/recruitment``);
6. layer changes.

Module commit hooks and the refresh of the occupancy indices follow (see :class:`abm.engine.Simulation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels.lattice import compact, resolve_capacity, resolve_conflicts

__all__ = ["CommitRecord", "commit_agents"]

#: Random streams of the commit. The names predate the module namespaces and are kept so that results stay.
STREAMS = {"divisions": "division_conflicts", "moves": "immune_moves", "recruitment": "immune_recruitment"}


@dataclass
class CommitRecord:
    """What one commit did.

    Attributes
    ----------
    dead : dict of str to (codes, columns)
        Per table with deaths: the cause codes of the dead rows (int8) and their columns before removal.
    events : dict of str to scalar
        Event readouts (backend scalars): deaths per cause and per table, births, admitted recruits.
    """

    dead: dict = field(default_factory=dict)
    events: dict = field(default_factory=dict)


def _admit(world, requests, stream: str, slots):
    """Admit ``(voxels, payload)`` requests against ``slots`` free places per voxel, in one random draw."""
    if not requests:
        return
    voxels = world.xp.concatenate([v for v, _ in requests])
    won = resolve_capacity(voxels, world.rng(stream).random(voxels.shape[0]), slots)
    start = 0
    for v, payload in requests:
        yield payload, v, won[start:start + v.shape[0]]
        start += v.shape[0]


def _host_counts(world, masks) -> list[int]:
    """The number of true entries of each of ``masks``, read on the host in one copy."""
    xp = world.xp
    counts = [xp.count_nonzero(m) for m in masks]
    return counts if xp is np else [int(n) for n in world.backend.to_host(xp.stack(counts))]


def _recruit(world, requests, slots):
    """Admit ``(voxels, where, payload)`` recruitment requests against ``slots`` free places per voxel.

    A request's candidates are its ``voxels`` where ``where`` holds (all of them without it); every request's
    candidates are given priorities in one draw, in request order. The candidates and the admitted ones per
    request are counted on the host in one copy each (the second only when anyone asks to enter), not by a
    compaction per request. Yields ``(payload, admitted voxels)`` per request.
    """
    xp = world.xp
    wants = [xp.ones(v.shape[0], dtype=bool) if w is None else w for v, w, _ in requests]
    sizes = _host_counts(world, wants)
    total = sum(sizes)
    if total == 0:
        return
    voxels = xp.concatenate([compact(v, w, k) for (v, _, _), w, k in zip(requests, wants, sizes)])
    won = resolve_capacity(voxels, world.rng(STREAMS["recruitment"]).random(total), slots)
    bounds = np.cumsum([0, *sizes]).tolist()
    parts = [won[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    for (_, _, payload), part, a, b, m in zip(requests, parts, bounds[:-1], bounds[1:], _host_counts(world, parts)):
        yield payload, compact(voxels[a:b], part, m)


def commit_agents(world, intents, params_of: dict) -> CommitRecord:
    """Apply ``intents`` to ``world`` (see the module docstring for the order).

    Parameters
    ----------
    world : World
    intents : Intents
    params_of : dict of str to object
        Per table, the parameters of its owning module (handed to ``on_divide``).

    Returns
    -------
    CommitRecord
    """
    xp = world.xp
    record = CommitRecord()
    ev = record.events
    zero = xp.zeros((), dtype=np.int64)

    # 1. Deaths.
    keep = {}
    for name, spec in world.table_specs.items():
        table = world.tables[name]
        cause = intents.death_cause.get(name)
        for c in world.death_codes[name]:
            readout = world.death_readouts[name].get(c)
            if readout:
                ev[readout] = zero
        if spec.deaths_readout:
            ev[spec.deaths_readout] = zero
        if cause is None:
            continue
        dead = xp.nonzero(cause)[0]  # deaths are few: the hooks work on these rows only
        codes = cause.take(dead)
        record.dead[name] = (codes, table.take(dead))
        for c, code in world.death_codes[name].items():
            readout = world.death_readouts[name].get(c)
            if readout:
                ev[readout] = xp.count_nonzero(codes == code)
        if spec.deaths_readout:
            ev[spec.deaths_readout] = xp.asarray(dead.shape[0], dtype=np.int64)
        keep[name] = cause == 0

    # 2. Divisions on the exclusive layer, every table's together.
    daughters = {}
    requests = []
    for name, spec in world.table_specs.items():
        if spec.births_readout:
            ev[spec.births_readout] = zero
        for parents, targets in intents.divisions.get(name, []):
            if spec.layer != "tissue":
                raise NotImplementedError(f"table '{name}' divides, but only tissue-layer tables can divide")
            cause = intents.death_cause.get(name)
            if cause is not None:  # a parent that dies this step does not divide
                alive = xp.flatnonzero(cause.take(parents) == 0)  # one index array for both: one host sync
                parents, targets = parents.take(alive), targets.take(alive)
            requests.append((name, parents, targets))
    if requests:
        targets = xp.concatenate([t for _, _, t in requests])
        won = resolve_conflicts(targets, world.rng(STREAMS["divisions"]).random(targets.shape[0]), world.size)
        start = 0
        won_parents: dict = {}
        for name, parents, tg in requests:
            w = xp.flatnonzero(won[start:start + parents.shape[0]])
            start += parents.shape[0]
            won_parents.setdefault(name, []).append((parents.take(w), tg.take(w)))
        for name, pairs in won_parents.items():
            p = xp.concatenate([a for a, _ in pairs]) if len(pairs) > 1 else pairs[0][0]
            t = xp.concatenate([b for _, b in pairs]) if len(pairs) > 1 else pairs[0][1]
            spec = world.table_specs[name]
            if spec.births_readout:
                ev[spec.births_readout] = xp.asarray(p.shape[0], dtype=np.int64)
            if p.shape[0]:
                table = world.tables[name]
                cols = table.take(p)
                cols["voxel"] = t
                if spec.on_divide is not None:
                    spec.on_divide(world, params_of[name], table, p, cols)
                daughters[name] = cols

    # 3. Moves on capacity layers, against the places free at the start of the step.
    for layer, capacity in world.capacity.items():
        requests = [(tg, (name, r)) for name, spec in world.table_specs.items() if spec.layer == layer
                    for r, tg in intents.moves.get(name, [])]
        for (name, rows), tg, won in _admit(world, requests, STREAMS["moves"], capacity - world.counts(layer)):
            # The rows of one request are distinct (one move per agent): losers write their own voxel back, so
            # no mask selects the winners (a mask's size is a host sync on CuPy).
            voxel = world.tables[name]["voxel"]
            voxel[rows] = xp.where(won, tg, voxel.take(rows))
    for name, spec in world.table_specs.items():
        if spec.layer == "tissue" and intents.moves.get(name):
            raise NotImplementedError(f"table '{name}' moves, but only capacity-layer tables can move")

    # 4. Remove the dead, append the daughters.
    for name in world.table_specs:
        if name in keep or name in daughters:
            world.tables[name].keep(keep.get(name), **daughters.get(name, {}))

    # 5. Recruitment against the places left.
    for layer, capacity in world.capacity.items():
        requests = []
        for name, spec in world.table_specs.items():
            if spec.layer != layer:
                continue
            for voxels, columns, readout, where in intents.recruits.get(name, []):
                requests.append((voxels, where, (name, columns, readout)))
                if readout:
                    ev.setdefault(readout, zero)
        if not requests:
            continue
        slots = capacity - world.count_layer(layer)
        for (name, columns, readout), new in _recruit(world, requests, slots):
            m = new.shape[0]
            world.tables[name].append(voxel=new, **{c: xp.full(m, val) for c, val in columns.items()})
            if readout:
                ev[readout] = ev[readout] + m

    # 6. Layer changes.
    for layer, voxels, value in intents.layer_sets:
        world.layers[layer].reshape(-1)[voxels] = value
    return record
