"""The simulation engine: state, one schedule, readouts and the snapshot state a restart needs.

:class:`Simulation` owns the lattice layers, the fields and the agent tables on the active backend and
advances them with :meth:`Simulation.step`, which reads top to bottom:

1. tissue occupancy is rebuilt from the agents;
2. ``exchange`` rules record uptake and secretion; the fields advance (diffusion, decay, reactions);
3. ``behaviour`` rules record deaths and division intents;
4. the intents are committed at once (deaths, then births with conflicts resolved by random priority,
   then necrotic clearance);
5. time advances.

Nothing else advances time. The engine never opens a file: the runner hands :meth:`Simulation.state` to the
writer, and :meth:`Simulation.from_state` restores a run from it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from abm.agents import AgentTable
from abm.backend import Backend, get_backend
from abm.cells import tumour as tumour_mod
from abm.config import Config
from abm.fields import DiffusingField, face_boundaries
from kernels.lattice import moore_offsets, resolve_conflicts

__all__ = ["Simulation"]

_INITIAL_STREAM = 1


@dataclass
class Intents:
    """What the rules of one step want; committed once by :meth:`Simulation._commit`.

    Attributes
    ----------
    death_cause : dict of str to int8 array
        Per agent type, the cause code of death this step (0 = survives). When several rules kill the same
        agent the highest code wins, so the result does not depend on rule order.
    divisions : dict of str to list of (parents, targets)
        Per agent type, row indices of dividing agents and the voxel each daughter wants.
    cleared : list of int arrays
        Necrotic voxels (flat indices) to free.
    """

    xp: object
    death_cause: dict = field(default_factory=dict)
    divisions: dict = field(default_factory=dict)
    cleared: list = field(default_factory=list)

    def kill(self, agent_type: str, mask, cause: int) -> None:
        """Mark the agents where ``mask`` is true as dying of ``cause``."""
        xp = self.xp
        self.death_cause[agent_type] = xp.maximum(self.death_cause[agent_type], xp.where(mask, cause, 0)).astype(
            np.int8
        )

    def divide(self, agent_type: str, parents, targets) -> None:
        """Record that agents ``parents`` want to place a daughter in voxels ``targets``."""
        self.divisions.setdefault(agent_type, []).append((parents, targets))

    def clear_necrotic(self, voxels) -> None:
        """Record necrotic voxels to free."""
        self.cleared.append(voxels)


class Simulation:
    """A tumour-microenvironment simulation on one backend.

    Parameters
    ----------
    config : Config
        Validated run configuration.
    backend : Backend, optional
        Array backend; default from ``config.backend``.
    initialise : bool
        Seed the initial condition (set False when the state will be loaded from a snapshot).
    """

    FREE = 0
    TUMOUR = 1
    NECROTIC = 2
    VESSEL = 3

    def __init__(self, config: Config, backend: Backend | None = None, initialise: bool = True):
        self.config = config
        self.backend = backend or get_backend(config.backend)
        xp = self.xp = self.backend.xp
        self.shape = tuple(config.grid.shape)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))
        self.spacing_um = config.grid.spacing_um
        self.dt_min = config.time.dt_min
        self.dtype = np.dtype(config.dtype)
        self.offsets = xp.asarray(moore_offsets(self.ndim))
        self.step_index = 0

        ox = config.fields.oxygen
        bc = face_boundaries(self.ndim, ox.boundary.default, ox.boundary.value, ox.boundary.faces)
        self.fields = {
            "oxygen": DiffusingField(
                "oxygen", "mmHg", xp, self.shape, self.spacing_um, self.dt_min, ox.diffusivity_um2_per_min,
                ox.decay_per_min, bc, ox.initial_mmHg, self.dtype, ox.substeps,
            )
        }
        self.tumour = AgentTable(xp, tumour_mod.COLUMNS)
        self.agents = {"tumour": self.tumour}
        self.necrotic = xp.zeros(self.shape, dtype=bool)
        self.vessels = xp.zeros(self.shape, dtype=bool)
        self.tissue = xp.zeros(self.shape, dtype=np.uint8)
        self.rules = [tumour_mod.RULES[name] for name in config.tumour.rules]
        self.intents = Intents(xp)
        self._events = {}
        self._vessel_supply = self._vessel_source = None
        if initialise:
            self._seed_initial_condition()
        self._on_vessels_changed()
        self._rebuild_tissue()

    # ----------------------------------------------------------------------------------------------------------
    # Set-up
    @property
    def time_min(self) -> float:
        """Simulated time in minutes."""
        return self.step_index * self.dt_min

    def rng(self, purpose: str):
        """The random stream of ``purpose`` (a rule name) at the current step."""
        return self.backend.random(self.config.seed, self.step_index, zlib.crc32(purpose.encode()) + 2)

    def _voxel_centres_um(self):
        xp = self.xp
        axes = [(xp.arange(n, dtype=np.float64) + 0.5) * self.spacing_um for n in self.shape]
        return xp.meshgrid(*axes, indexing="ij")

    def _seed_initial_condition(self) -> None:
        xp, cfg = self.xp, self.config
        rng = self.backend.random(cfg.seed, 0, _INITIAL_STREAM)
        init = cfg.initial.tumour
        centre = init.center_um or [n * self.spacing_um / 2 for n in self.shape]
        r2 = sum((c - c0) ** 2 for c, c0 in zip(self._voxel_centres_um(), centre))
        in_tumour = (r2 <= init.radius_um**2).reshape(-1)
        u_fill = rng.random(self.size)
        u_vessel = rng.random(self.size)

        vs = cfg.vessels
        vessels = xp.zeros(self.size, dtype=bool)
        if vs.pattern == "random":
            vessels = u_vessel < vs.density
            if vs.exclude_tumour:
                vessels &= ~in_tumour
        elif vs.pattern == "list" and vs.positions:
            idx = np.ravel_multi_index(np.asarray(vs.positions).T, self.shape)
            vessels[xp.asarray(idx)] = True
        self.vessels = vessels.reshape(self.shape)

        seeded = in_tumour & (u_fill < init.fill_fraction) & ~vessels
        voxels = xp.nonzero(seeded)[0].astype(np.int64)
        n = voxels.shape[0]
        self.tumour.append(
            voxel=voxels, generation=xp.zeros(n, dtype=np.int32), quiescent=xp.zeros(n, dtype=bool)
        )

    def _on_vessels_changed(self) -> None:
        ox = self.config.fields.oxygen
        self._vessel_supply = self.vessels.astype(self.dtype) * self.dtype.type(ox.vessel_supply_per_min)
        self._vessel_source = self._vessel_supply * self.dtype.type(ox.blood_mmHg)

    def _rebuild_tissue(self) -> None:
        t = self.tissue
        t.fill(self.FREE)
        t[self.vessels] = self.VESSEL
        t[self.necrotic] = self.NECROTIC
        t.reshape(-1)[self.tumour["voxel"]] = self.TUMOUR

    # ----------------------------------------------------------------------------------------------------------
    # The schedule
    def step(self) -> None:
        """Advance the simulation by one time step (see the module docstring for the order)."""
        xp = self.xp
        self._rebuild_tissue()
        self.intents = Intents(xp, death_cause={k: xp.zeros(len(t), dtype=np.int8) for k, t in self.agents.items()})

        for f in self.fields.values():
            f.clear_sources()
        for r in self.rules:
            if r.phase == "exchange":
                r.fn(self, self.rng(r.name))
        oxygen = self.fields["oxygen"]
        oxygen.sink += self._vessel_supply
        oxygen.source += self._vessel_source
        for f in self.fields.values():
            f.advance()

        for r in self.rules:
            if r.phase == "behaviour":
                r.fn(self, self.rng(r.name))

        self._commit()
        self.step_index += 1

    def _commit(self) -> None:
        """Apply the step's intents: deaths, then births (random-priority conflicts), then clearance."""
        xp = self.xp
        cells = self.tumour
        cause = self.intents.death_cause["tumour"]
        ev = {
            "tumour_deaths_apoptosis": xp.count_nonzero(cause == tumour_mod.DEATH_APOPTOSIS),
            "tumour_deaths_necrosis": xp.count_nonzero(cause == tumour_mod.DEATH_NECROSIS),
        }
        necrotic_now = cells["voxel"][cause == tumour_mod.DEATH_NECROSIS]
        self.necrotic.reshape(-1)[necrotic_now] = True

        births = xp.zeros((), dtype=np.int64)
        divisions = self.intents.divisions.get("tumour", [])
        if divisions:
            parents = xp.concatenate([p for p, _ in divisions])
            targets = xp.concatenate([t for _, t in divisions])
            alive = cause[parents] == 0
            parents, targets = parents[alive], targets[alive]
            priority = self.rng("division_conflicts").random(parents.shape[0])
            won = resolve_conflicts(targets, priority)
            parents, targets = parents[won], targets[won]
            births = xp.asarray(parents.shape[0], dtype=np.int64)
            if parents.shape[0]:
                gen = cells["generation"]
                gen[parents] += 1
                daughters = cells.take(parents)
                daughters["voxel"] = targets
                cells.keep(cause == 0)
                cells.append(**daughters)
            else:
                cells.keep(cause == 0)
        else:
            cells.keep(cause == 0)
        ev["tumour_births"] = births

        cleared = xp.zeros((), dtype=np.int64)
        if self.intents.cleared:
            vox = xp.concatenate(self.intents.cleared)
            self.necrotic.reshape(-1)[vox] = False
            cleared = xp.asarray(vox.shape[0], dtype=np.int64)
        ev["necrotic_cleared"] = cleared
        self._events = ev

    # ----------------------------------------------------------------------------------------------------------
    # Readouts
    def metrics(self) -> dict[str, float]:
        """Readouts of the current state (one host transfer), for the time series.

        Returns
        -------
        dict of str to float
            ``time_min``; tumour cell counts (live, quiescent, hypoxic); ``hypoxic_fraction`` of live tumour
            cells below ``tumour.hypoxic_threshold_mmHg``; ``necrotic_voxels``; ``tumour_diameter_um``, the
            equivalent diameter of the lesion (live plus necrotic voxels); oxygen mean in the tumour and
            minimum over the lattice (mmHg); and the events of the last step (births, deaths by cause,
            necrotic voxels cleared).
        """
        xp = self.xp
        o2 = self.fields["oxygen"].data
        voxels = self.tumour["voxel"]
        n = voxels.shape[0]
        o2_cells = o2.reshape(-1)[voxels].astype(np.float64)
        hypoxic = xp.count_nonzero(o2_cells < self.config.tumour.hypoxic_threshold_mmHg)
        necrotic = xp.count_nonzero(self.necrotic)
        values = {
            "tumour_cells": xp.asarray(n, dtype=np.float64),
            "tumour_quiescent": xp.count_nonzero(self.tumour["quiescent"]),
            "tumour_hypoxic": hypoxic,
            "necrotic_voxels": necrotic,
            "oxygen_tumour_mean_mmHg": o2_cells.sum() / max(n, 1),
            "oxygen_min_mmHg": o2.min(),
        }
        values.update(self._events)
        names = list(values)
        host = self.backend.to_host(xp.stack([xp.asarray(values[k], dtype=np.float64) for k in names]))
        out = {"time_min": float(self.time_min)}
        out.update({k: float(v) for k, v in zip(names, host)})
        for k in ("tumour_deaths_apoptosis", "tumour_deaths_necrosis", "tumour_births", "necrotic_cleared"):
            out.setdefault(k, 0.0)
        out["hypoxic_fraction"] = out["tumour_hypoxic"] / out["tumour_cells"] if out["tumour_cells"] else 0.0
        lesion_voxels = out["tumour_cells"] + out["necrotic_voxels"]
        volume = lesion_voxels * self.spacing_um**self.ndim
        if self.ndim == 2:
            out["tumour_diameter_um"] = 2.0 * float(np.sqrt(volume / np.pi))
        else:
            out["tumour_diameter_um"] = 2.0 * float(np.cbrt(3.0 * volume / (4.0 * np.pi)))
        return out

    # ----------------------------------------------------------------------------------------------------------
    # Snapshot state
    def state(self) -> dict:
        """Everything a restart needs, as host arrays.

        Returns
        -------
        dict
            ``{"fields": {name: array}, "agents": {type: {column: array}}, "state": {name: array or scalar}}``.
            ``state`` holds the step number (the random stream is derived from ``(seed, step)``), the time,
            and the necrotic and vessel masks.
        """
        h = self.backend.to_host
        return {
            "fields": {name: h(f.data) for name, f in self.fields.items()},
            "agents": {name: table.to_host(h) for name, table in self.agents.items()},
            "state": {
                "step": self.step_index,
                "time_min": float(self.time_min),
                "necrotic": h(self.necrotic),
                "vessels": h(self.vessels),
            },
        }

    @classmethod
    def from_state(cls, config: Config, state: dict, backend: Backend | None = None) -> Simulation:
        """Rebuild a simulation from :meth:`state` output (e.g. read from a snapshot).

        Raises
        ------
        ValueError
            If the state does not match the config (grid shape, fields or agent types).
        """
        sim = cls(config, backend, initialise=False)
        xp = sim.xp
        for name, f in sim.fields.items():
            if name not in state["fields"]:
                raise ValueError(f"snapshot has no field '{name}'")
            data = np.asarray(state["fields"][name])
            if data.shape != sim.shape:
                raise ValueError(f"snapshot field '{name}' has shape {data.shape}, the config's grid is {sim.shape}")
            f.data = xp.asarray(data, dtype=sim.dtype)
        for name, table in sim.agents.items():
            if name not in state["agents"]:
                raise ValueError(f"snapshot has no agent table '{name}'")
            table.load(state["agents"][name])
        st = state["state"]
        sim.step_index = int(st["step"])
        sim.necrotic = xp.asarray(np.asarray(st["necrotic"], dtype=bool))
        sim.vessels = xp.asarray(np.asarray(st["vessels"], dtype=bool))
        sim._on_vessels_changed()
        sim._rebuild_tissue()
        return sim
