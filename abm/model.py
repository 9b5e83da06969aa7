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
from abm.cells import caf as caf_mod
from abm.cells import macrophage as macrophage_mod
from abm.cells import tcell as tcell_mod
from abm.cells import tumour as tumour_mod
from abm.config import Config
from abm.fields import DiffusingField, face_boundaries
from abm.rules import rule
from kernels.chemotaxis import pick, sample_uniform
from kernels.lattice import (
    Stencil,
    box_sum,
    cube_offsets,
    moore_offsets,
    resolve_capacity,
    resolve_conflicts,
    scatter_count,
)

__all__ = ["Simulation"]

_INITIAL_STREAM = 1
_INITIAL_IMMUNE_STREAM = 3

#: Diffusing fields of the immune/stromal layer (config sections under ``[fields]``).
IMMUNE_FIELDS = ("chemokine", "ifng", "tgfb", "vegf", "cxcl12")

#: Immune-phenotype codes stored in the ``immune_phenotype_code`` time series.
PHENOTYPE_CODES = {"no_tumour": 0, "inflamed": 1, "excluded": 2, "desert": 3}


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
    moves : dict of str to list of (rows, targets)
        Per immune agent type, rows that want to move and the voxel each wants.
    recruits : dict of str to list of (voxels, columns)
        Per immune agent type, voxels where a new cell wants to enter and its non-voxel column values.
    sprouts : list of int arrays
        Free voxels that become vessels (angiogenesis).
    """

    xp: object
    death_cause: dict = field(default_factory=dict)
    divisions: dict = field(default_factory=dict)
    cleared: list = field(default_factory=list)
    moves: dict = field(default_factory=dict)
    recruits: dict = field(default_factory=dict)
    sprouts: list = field(default_factory=list)

    def move(self, agent_type: str, rows, targets) -> None:
        """Record that agents ``rows`` want to move to voxels ``targets`` (immune layer)."""
        self.moves.setdefault(agent_type, []).append((rows, targets))

    def recruit(self, agent_type: str, voxels, columns: dict) -> None:
        """Record new agents wanting to enter at ``voxels`` with scalar column values ``columns``."""
        self.recruits.setdefault(agent_type, []).append((voxels, columns))

    def kill(self, agent_type: str, which, cause: int) -> None:
        """Mark agents as dying of ``cause``: ``which`` is a boolean mask over the table or row indices."""
        xp = self.xp
        rows = xp.nonzero(which)[0] if which.dtype == bool else which
        codes = self.death_cause[agent_type]
        codes[rows] = xp.maximum(codes[rows], np.int8(cause))

    def divide(self, agent_type: str, parents, targets) -> None:
        """Record that agents ``parents`` want to place a daughter in voxels ``targets``."""
        self.divisions.setdefault(agent_type, []).append((parents, targets))

    def clear_necrotic(self, voxels) -> None:
        """Record necrotic voxels to free."""
        self.cleared.append(voxels)


@rule("angiogenesis", "behaviour")
def _angiogenesis(sim, rng) -> None:
    """Record VEGF-driven sprouting: free tissue voxels next to a vessel become vessels (``vessels.angiogenesis``).

    Rate ``r VEGF/(VEGF + K)`` per free voxel with a vessel in its Moore neighbourhood.
    """
    xp, vs = sim.xp, sim.config.vessels
    near = box_sum(sim.vessels, 1).reshape(-1) > 0.5
    candidates = xp.nonzero(near & (sim.tissue.reshape(-1) == sim.FREE))[0]
    if candidates.shape[0] == 0:
        return
    vegf = sim.fields["vegf"].data.reshape(-1)[candidates].astype(np.float64)
    rate = vs.angiogenesis_rate_per_min * vegf / (vegf + vs.angiogenesis_vegf_half_max)
    sprout = rng.random(candidates.shape[0]) < 1.0 - xp.exp(-rate * sim.dt_min)
    sim.intents.sprouts.append(candidates[sprout])


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
    CAF = 4

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
        moore = moore_offsets(self.ndim)
        self.moore = Stencil(self.shape, moore, xp)  # the 8 (26) neighbours
        self.moore_and_self = Stencil(self.shape, np.vstack([np.zeros((1, self.ndim), np.int64), moore]), xp)
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
        self.tumour_death_codes = {"tcell": tumour_mod.DEATH_KILLED_TCELL,
                                   "macrophage": tumour_mod.DEATH_KILLED_MACROPHAGE}
        self.immune_enabled = config.immune.enabled
        self.ecm = xp.zeros(self.shape, dtype=self.dtype)  # ECM density 0..1 (immune/stromal layer only)
        self.ecm_factors = None  # the ECM the large-molecule diffusivities were last built from
        self.priming = 0.0
        self.immune_occupancy = xp.zeros(self.shape, dtype=np.int32)
        if self.immune_enabled:
            self._init_immune_layer()
        self.intents = Intents(xp)
        self._events = {}
        self._vessel_supply = self._vessel_source = None
        self._scratch = {}  # all-zero integer lattices by dtype, lent to scratch_sum
        if initialise:
            self._seed_initial_condition()
        self._on_vessels_changed()
        self._rebuild_tissue()

    # ----------------------------------------------------------------------------------------------------------
    # Set-up
    @property
    def tumour_grid(self):
        """Boolean lattice, true where a live tumour cell sits (from the tissue layer of this step)."""
        return self.tissue == self.TUMOUR

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
            voxel=voxels, generation=xp.zeros(n, dtype=np.int32), quiescent=xp.zeros(n, dtype=bool),
            antigenicity=xp.full(n, cfg.tumour.antigenicity_initial), pdl1=xp.full(n, cfg.tumour.pdl1_baseline),
        )
        if self.immune_enabled:
            self._seed_immune_layer(in_tumour, xp.sqrt(r2).reshape(-1), vessels)

    def _init_immune_layer(self) -> None:
        """Fields, agent tables and rules of the immune/stromal layer (``immune.enabled``)."""
        xp, cfg = self.xp, self.config
        for name in IMMUNE_FIELDS:
            fc = getattr(cfg.fields, name)
            bc = face_boundaries(self.ndim, fc.boundary.default, fc.boundary.value, fc.boundary.faces)
            self.fields[name] = DiffusingField(
                name, fc.unit, xp, self.shape, self.spacing_um, self.dt_min, fc.diffusivity_um2_per_min,
                fc.decay_per_min, bc, fc.initial, self.dtype, fc.substeps,
            )
        self.agents["tcell"] = AgentTable(xp, tcell_mod.COLUMNS)
        self.agents["macrophage"] = AgentTable(xp, macrophage_mod.COLUMNS)
        self.agents["caf"] = AgentTable(xp, caf_mod.COLUMNS)
        im = cfg.immune
        self.rules += [caf_mod.RULES[n] for n in im.caf.rules]
        self.rules += [macrophage_mod.RULES[n] for n in im.macrophage.rules]
        self.rules += [tcell_mod.RULES[n] for n in im.tcell.rules]
        if cfg.vessels.angiogenesis:
            self.rules.append(_angiogenesis)
        self.priming = float(im.priming_initial)
        radius = int(round(im.tcell.suppression_radius_um / self.spacing_um))
        self.suppression_window = Stencil(self.shape, cube_offsets(self.ndim, radius), xp)

    def _large_molecule_fields(self) -> list[str]:
        return [n for n in IMMUNE_FIELDS if n in self.fields and getattr(self.config.fields, n).large_molecule]

    def _update_large_molecule_diffusivity(self, force: bool = False) -> None:
        """Rebuild the ECM-hindered diffusivity of large-molecule fields when the ECM changed meaningfully.

        Called every ``immune.ecm.update_every_steps`` steps; building the factors costs about one LOD step.
        """
        names = self._large_molecule_fields()
        if not names:
            return
        xp = self.xp
        if not force and self.ecm_factors is not None:
            if float(xp.abs(self.ecm - self.ecm_factors).max()) < 0.01:
                return
        self.ecm_factors = self.ecm.copy()
        self._apply_large_molecule_diffusivity()

    def _apply_large_molecule_diffusivity(self) -> None:
        cfg = self.config
        for name in self._large_molecule_fields():
            d0 = getattr(cfg.fields, name).diffusivity_um2_per_min
            if cfg.resistance.stromal_exclusion:
                d = d0 * (1.0 - cfg.immune.ecm.diffusion_hindrance * self.ecm_factors.astype(np.float64))
                self.fields[name].set_diffusivity(d)
            else:
                self.fields[name].set_diffusivity(d0)

    def _seed_immune_layer(self, in_tumour, r_um, vessels) -> None:
        xp, cfg = self.xp, self.config
        im = cfg.immune
        rng = self.backend.random(cfg.seed, 0, _INITIAL_IMMUNE_STREAM)
        n = len(self.tumour)
        p = cfg.tumour
        self.tumour["antigenicity"] = xp.clip(p.antigenicity_initial + p.antigenicity_spread * rng.normal(n), 0, 1)
        radius = cfg.initial.tumour.radius_um
        ring = (r_um > radius + im.caf.stroma_inner_um) & (r_um <= radius + im.caf.stroma_inner_um
                                                           + im.caf.stroma_width_um)
        ring &= ~in_tumour & ~vessels
        u_caf, u_mac = rng.random(self.size), rng.random(self.size)
        caf_vox = xp.nonzero(ring & (u_caf < im.caf.stroma_density))[0].astype(np.int64)
        k = caf_vox.shape[0]
        self.agents["caf"].append(voxel=caf_vox, activation=xp.full(k, im.caf.initial_activation))
        mac_vox = xp.nonzero(ring & (u_mac < im.initial_macrophages))[0].astype(np.int64)
        k = mac_vox.shape[0]
        self.agents["macrophage"].append(voxel=mac_vox, state=xp.zeros(k, dtype=np.int8), age_min=xp.zeros(k))
        ecm = xp.where(in_tumour, im.ecm.initial_tumour, im.ecm.initial_stroma)
        self.ecm = ecm.reshape(self.shape).astype(self.dtype)
        self._update_large_molecule_diffusivity(force=True)

    @property
    def vessel_voxels(self):
        """Flat indices of the vessel voxels (int64, shape ``(V,)``)."""
        return self._vessel_voxels

    def vessel_perfusion(self, voxels=None):
        """Perfusion factor (0..1] of vessel voxels: ``1 / (1 + VEGF/K)`` with abnormal vasculature, else 1.

        Parameters
        ----------
        voxels : int array, optional
            Flat voxel indices; default :attr:`vessel_voxels`.
        """
        xp = self.xp
        voxels = self._vessel_voxels if voxels is None else voxels
        if not (self.immune_enabled and self.config.resistance.abnormal_vasculature):
            return xp.ones(voxels.shape[0], dtype=np.float64)
        vegf = self.fields["vegf"].data.reshape(-1)[voxels].astype(np.float64)
        return 1.0 / (1.0 + vegf / self.config.immune.vessel_abnormality_vegf_half_max)

    def suppressor_counts(self, kind: str, voxels):
        """Number of M2 macrophages (``"m2"``) or Tregs (``"treg"``) within the suppression radius of ``voxels``.

        Parameters
        ----------
        kind : {"m2", "treg"}
        voxels : int array, shape ``(N,)``
            Flat voxel indices.

        Returns
        -------
        float64 array, shape ``(N,)``
            Counts over the cube of half-width ``round(suppression_radius_um / dx)`` voxels.
        """
        return self._counts_near(kind, self.suppression_window, voxels)

    def m2_neighbour_counts(self, voxels):
        """Number of M2 macrophages in the Moore neighbourhood of ``voxels`` (the voxel included), float64."""
        return self._counts_near("m2", self.moore_and_self, voxels)

    def adjacent_tumour_cell(self, voxels, uniforms):
        """A tumour cell picked uniformly in each of ``voxels`` or its Moore neighbours.

        Returns
        -------
        rows : int array, shape ``(N,)``
            Tumour-table row of the pick (meaningless where ``found`` is false).
        found : bool array, shape ``(N,)``
            Whether any tumour cell was in reach.
        """
        flat, inside = self.moore_and_self.neighbours(voxels)
        tumour_row = self.tumour_row.take(flat)
        choice, found = sample_uniform(inside & (tumour_row >= 0), uniforms)
        return pick(tumour_row, choice), found

    def _counts_near(self, kind: str, window: Stencil, voxels):
        """How many ``kind`` cells have each of ``voxels`` within their ``window`` (float64, shape ``(N,)``).

        Each suppressor adds its (symmetric) window onto a persistent all-zero count grid; the asking voxels
        gather one value each and the touched entries are zeroed again. Suppressors are few, so the cost follows
        their number, never the lattice size or the number of asking cells.
        """
        xp = self.xp
        if kind == "m2":
            m = self.agents["macrophage"]
            vox = m["voxel"][m["state"] == macrophage_mod.M2]
        else:
            t = self.agents["tcell"]
            vox = t["voxel"][t["is_treg"]]
        if vox.shape[0] == 0:  # none present: common, and saves the scatter
            return xp.zeros(voxels.shape[0], dtype=np.float64)
        flat, inside = window.neighbours(vox)
        # Outside entries point home and add 0.
        return self.scratch_sum(flat.reshape(-1), inside.reshape(-1).astype(np.int32), voxels).astype(np.float64)

    def multiplicity(self, voxels):
        """For each entry of ``voxels``, how many entries (itself included) name the same voxel (int32)."""
        return self.scratch_sum(voxels, np.int32(1), voxels)

    def scratch_sum(self, flat, weights, query, dtype=np.int32):
        """Scatter-add integer ``weights`` at ``flat`` onto a persistent all-zero lattice and read it at ``query``.

        The touched entries are zeroed again, so the cost follows the number of entries, never the lattice
        size. Integer sums are exact, hence independent of the order in which a GPU's atomics apply them; sum
        real numbers as fixed-point integers (``dtype=np.int64``) to keep that property.
        """
        xp = self.xp
        dtype = np.dtype(dtype)
        if dtype not in self._scratch:
            self._scratch[dtype] = xp.zeros(self.size, dtype=dtype)
        grid = self._scratch[dtype]
        xp.add.at(grid, flat, weights)
        out = grid.take(query)
        grid[flat] = 0
        return out

    def _on_vessels_changed(self) -> None:
        ox = self.config.fields.oxygen
        self._vessel_voxels = self.xp.nonzero(self.vessels.reshape(-1))[0].astype(np.int64)
        # Per vessel voxel: O2 exchange rate (1/min) and inflow (rate x blood pO2, mmHg/min).
        self._vessel_supply = self.xp.full(self._vessel_voxels.shape[0], ox.vessel_supply_per_min, dtype=self.dtype)
        self._vessel_source = self._vessel_supply * self.dtype.type(ox.blood_mmHg)

    def _rebuild_tissue(self) -> None:
        t = self.tissue
        flat = t.reshape(-1)
        t.fill(self.FREE)
        flat[self._vessel_voxels] = self.VESSEL
        t[self.necrotic] = self.NECROTIC
        flat[self.tumour["voxel"]] = self.TUMOUR
        if self.immune_enabled:
            xp = self.xp
            flat[self.agents["caf"]["voxel"]] = self.CAF
            row = xp.full(self.size, -1, dtype=np.int32)  # tumour row per voxel, -1 where none
            row[self.tumour["voxel"]] = xp.arange(len(self.tumour), dtype=np.int32)
            self.tumour_row = row
            self.immune_occupancy = self._immune_counts().reshape(self.shape)

    def _immune_counts(self):
        """T cells and macrophages per voxel (flat int32)."""
        vox = self.xp.concatenate([self.agents[k]["voxel"] for k in ("tcell", "macrophage")])
        counts = self.xp.zeros(self.size, dtype=np.int32)
        self.xp.add.at(counts, vox, np.int32(1))  # cheaper than bincount's int64 lattice and its conversion
        return counts

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
        # Vessel O2 supply, written at the vessel voxels only (they are distinct, so ``+=`` is exact).
        oxygen, vessels = self.fields["oxygen"], self._vessel_voxels
        supply, inflow = self._vessel_supply, self._vessel_source
        if self.immune_enabled and self.config.resistance.abnormal_vasculature:
            perfusion = self.vessel_perfusion().astype(self.dtype)
            supply, inflow = supply * perfusion, inflow * perfusion
        oxygen.sink.reshape(-1)[vessels] += supply
        oxygen.source.reshape(-1)[vessels] += inflow
        for f in self.fields.values():
            f.advance()

        for r in self.rules:
            if r.phase == "behaviour":
                r.fn(self, self.rng(r.name))

        self._commit()
        self.step_index += 1
        if self.immune_enabled and self.step_index % self.config.immune.ecm.update_every_steps == 0:
            self._update_large_molecule_diffusivity()

    def _commit(self) -> None:
        """Apply the step's intents: deaths, then births (random-priority conflicts), then clearance."""
        xp = self.xp
        cells = self.tumour
        cause = self.intents.death_cause["tumour"]
        dead = xp.nonzero(cause)[0]  # deaths are few: everything but the final keep works on these rows
        dead_cause = cause.take(dead)
        ev = {
            "tumour_deaths_apoptosis": xp.count_nonzero(dead_cause == tumour_mod.DEATH_APOPTOSIS),
            "tumour_deaths_necrosis": xp.count_nonzero(dead_cause == tumour_mod.DEATH_NECROSIS),
        }
        if self.immune_enabled:
            ev["tumour_killed_by_tcell"] = xp.count_nonzero(dead_cause == tumour_mod.DEATH_KILLED_TCELL)
            ev["tumour_killed_by_macrophage"] = xp.count_nonzero(dead_cause == tumour_mod.DEATH_KILLED_MACROPHAGE)
            ev["antigen_released"] = cells["antigenicity"].take(dead).astype(np.float64).sum()
        necrotic_now = cells["voxel"].take(dead[dead_cause == tumour_mod.DEATH_NECROSIS])
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
                if self.immune_enabled:
                    daughters["antigenicity"] = tumour_mod.mutate_antigenicity(
                        self, daughters["antigenicity"], self.rng("antigen_mutation"))
                cells.keep(cause == 0, **daughters)
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
        if self.immune_enabled:
            ev["vessels_sprouted"] = xp.zeros((), dtype=np.int64)
            if self.intents.sprouts:
                vox = xp.unique(xp.concatenate(self.intents.sprouts))
                taken = xp.zeros(self.size, dtype=bool)
                taken[cells["voxel"]] = True  # a daughter placed this step keeps its voxel
                vox = vox[~taken[vox]]
                self.vessels.reshape(-1)[vox] = True
                ev["vessels_sprouted"] = xp.asarray(vox.shape[0], dtype=np.int64)
                if vox.shape[0]:
                    self._on_vessels_changed()
            self._commit_immune(ev)
        self._events = ev

    def _admit(self, requests, stream: str, slots):
        """Resolve requests for immune-layer places against ``slots`` free places per voxel, in one draw.

        ``requests`` is a list of ``(voxels, payload)``; yields ``(payload, voxels, admitted)`` per request, with
        ``admitted`` a boolean mask over its voxels. Priorities come from the random stream ``stream``.
        """
        if not requests:
            return
        voxels = self.xp.concatenate([v for v, _ in requests])
        won = resolve_capacity(voxels, self.rng(stream).random(voxels.shape[0]), slots)
        start = 0
        for v, payload in requests:
            yield payload, v, won[start:start + v.shape[0]]
            start += v.shape[0]

    def _commit_immune(self, ev: dict) -> None:
        """Immune layer: moves (random priority against free places), deaths, recruitment, priming."""
        xp = self.xp
        cap = self.config.immune.immune_capacity
        kinds = ("tcell", "macrophage")
        tables = {k: self.agents[k] for k in kinds}
        occupancy = self.immune_occupancy.reshape(-1)  # counted at the start of the step; nobody moved since
        # Moves: every current occupant holds its place this step, so a voxel never overfills.
        requests = [(tg, (k, r)) for k in kinds for r, tg in self.intents.moves.get(k, [])]
        for (k, rows), tg, w in self._admit(requests, "immune_moves", cap - occupancy):
            tables[k]["voxel"][rows[w]] = tg[w]
        # Deaths.
        for k, t in tables.items():
            cause = self.intents.death_cause[k]
            ev[f"{k}_deaths"] = xp.count_nonzero(cause)
            t.keep(cause == 0)
        # Recruitment at vessel voxels against the places left.
        occupancy = self._immune_counts()
        requests = [(v, (k, c)) for k in kinds for v, c in self.intents.recruits.get(k, [])]
        ev["tcell_recruited"] = ev["treg_recruited"] = ev["macrophage_recruited"] = xp.zeros((), dtype=np.int64)
        for (k, cols), v, w in self._admit(requests, "immune_recruitment", cap - occupancy):
            new = v[w]
            m = new.shape[0]
            tables[k].append(voxel=new, **{c: xp.full(m, val) for c, val in cols.items()})
            key = "treg_recruited" if cols.get("is_treg", False) else f"{k}_recruited"
            ev[key] = ev[key] + m
        # Priming: antigen from dying tumour cells raises it (logistic to 1); it relaxes slowly without antigen.
        im = self.config.immune
        antigen = float(self.backend.to_host(xp.asarray(ev["antigen_released"])))
        p = self.priming
        p += im.priming_per_antigen * antigen * (1.0 - p)
        p -= im.priming_decay_per_min * self.dt_min * p
        self.priming = float(min(max(p, 0.0), 1.0))

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
        if self.immune_enabled:
            values.update(self._immune_values())
        values.update(self._events)
        names = list(values)
        host = self.backend.to_host(xp.stack([xp.asarray(values[k], dtype=np.float64) for k in names]))
        out = {"time_min": float(self.time_min)}
        out.update({k: float(v) for k, v in zip(names, host)})
        for k in ("tumour_deaths_apoptosis", "tumour_deaths_necrosis", "tumour_births", "necrotic_cleared"):
            out.setdefault(k, 0.0)
        out["hypoxic_fraction"] = out["tumour_hypoxic"] / out["tumour_cells"] if out["tumour_cells"] else 0.0
        if self.immune_enabled:
            self._immune_readouts(out)
        lesion_voxels = out["tumour_cells"] + out["necrotic_voxels"]
        volume = lesion_voxels * self.spacing_um**self.ndim
        if self.ndim == 2:
            out["tumour_diameter_um"] = 2.0 * float(np.sqrt(volume / np.pi))
        else:
            out["tumour_diameter_um"] = 2.0 * float(np.cbrt(3.0 * volume / (4.0 * np.pi)))
        return out

    def tumour_regions(self):
        """Masks of tumour core, invasive margin and stroma (bool, lattice shape).

        The lesion is the live plus necrotic tumour voxels. The margin is the band of width
        ``immune.phenotype.margin_um`` centred on the lesion edge (Chebyshev distance, via box dilation and
        erosion); the core is the lesion inside that band (the whole lesion when the band swallows it); the
        stroma is everything else.
        """
        lesion = self.tissue == self.TUMOUR
        lesion |= self.necrotic
        half = int(round(self.config.immune.phenotype.margin_um / 2 / self.spacing_um))
        window = (2 * half + 1) ** self.ndim
        count = box_sum(lesion, half)
        dilated = count > 0
        # Erosion: every voxel of the window lies in the lesion (windows clipped at the lattice edge count as out).
        eroded = count >= window - 0.5
        core = eroded if bool(eroded.any()) else lesion
        margin = dilated & ~core
        stroma = ~dilated
        return core, margin, stroma

    def _immune_values(self) -> dict:
        xp = self.xp
        t, m, c = self.agents["tcell"], self.agents["macrophage"], self.agents["caf"]
        eff = ~t["is_treg"]
        exhausted = eff & (t["exhaustion"] >= 1.0)
        core, margin, stroma = self.tumour_regions()
        cd8 = scatter_count(t["voxel"][eff], self.size).reshape(self.shape)
        lesion = core | margin
        return {
            "tcell_effector": xp.count_nonzero(eff),
            "tcell_treg": xp.count_nonzero(t["is_treg"]),
            "tcell_exhausted": xp.count_nonzero(exhausted),
            "tcell_engaged": xp.count_nonzero(t["engaged"]),
            "macrophage_m0": xp.count_nonzero(m["state"] == macrophage_mod.M0),
            "macrophage_m1": xp.count_nonzero(m["state"] == macrophage_mod.M1),
            "macrophage_m2": xp.count_nonzero(m["state"] == macrophage_mod.M2),
            "caf_cells": xp.asarray(len(c), dtype=np.float64),
            "caf_activation_mean": c["activation"].astype(np.float64).sum() / max(len(c), 1),
            "antigenicity_sum": self.tumour["antigenicity"].astype(np.float64).sum(),
            "pdl1_sum": self.tumour["pdl1"].astype(np.float64).sum(),
            "cd8_core": cd8[core].sum(),
            "cd8_margin": cd8[margin].sum(),
            "cd8_stroma": cd8[stroma].sum(),
            "core_voxels": xp.count_nonzero(core),
            "margin_voxels": xp.count_nonzero(margin),
            "stroma_voxels": xp.count_nonzero(stroma),
            "ecm_mean_tumour": self.ecm[lesion].astype(np.float64).sum() / max(1, int(xp.count_nonzero(lesion))),
            "ecm_mean_stroma": self.ecm[stroma].astype(np.float64).sum() / max(1, int(xp.count_nonzero(stroma))),
            "ifng_max": self.fields["ifng"].data.max(),
            "chemokine_max": self.fields["chemokine"].data.max(),
        }

    def _immune_readouts(self, out: dict) -> None:
        """Derived immune readouts: ratios, fractions, densities (per mm² in 2-D, per mm³ in 3-D), phenotype."""
        n_tumour = out["tumour_cells"]
        out.setdefault("tumour_killed_by_tcell", 0.0)
        out.setdefault("tumour_killed_by_macrophage", 0.0)
        out.setdefault("antigen_released", 0.0)
        out["vessel_voxels"] = float(self._vessel_voxels.shape[0])
        for k in ("tcell_deaths", "macrophage_deaths", "tcell_recruited", "treg_recruited", "macrophage_recruited",
                  "vessels_sprouted"):
            out.setdefault(k, 0.0)
        out["kills"] = out["tumour_killed_by_tcell"] + out["tumour_killed_by_macrophage"]
        out["exhausted_fraction"] = out["tcell_exhausted"] / out["tcell_effector"] if out["tcell_effector"] else 0.0
        out["effector_treg_ratio"] = out["tcell_effector"] / max(out["tcell_treg"], 1.0)
        out["m1_m2_ratio"] = out["macrophage_m1"] / max(out["macrophage_m2"], 1.0)
        out["antigenicity_mean"] = out.pop("antigenicity_sum") / n_tumour if n_tumour else 0.0
        out["pdl1_mean"] = out.pop("pdl1_sum") / n_tumour if n_tumour else 0.0
        out["priming"] = float(self.priming)
        voxel_mm = (self.spacing_um / 1000.0) ** self.ndim
        for region in ("core", "margin", "stroma"):
            n_vox = out.pop(f"{region}_voxels")
            out[f"cd8_density_{region}"] = out[f"cd8_{region}"] / (n_vox * voxel_mm) if n_vox else 0.0
        ph = self.config.immune.phenotype
        if n_tumour == 0:
            code = PHENOTYPE_CODES["no_tumour"]
        elif out["cd8_density_core"] >= ph.inflamed_core_per_mm2:
            code = PHENOTYPE_CODES["inflamed"]
        elif max(out["cd8_density_margin"], out["cd8_density_stroma"]) >= ph.excluded_margin_per_mm2:
            code = PHENOTYPE_CODES["excluded"]
        else:
            code = PHENOTYPE_CODES["desert"]
        out["immune_phenotype_code"] = float(code)

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
                **self._immune_state(h),
            },
        }

    def _immune_state(self, h) -> dict:
        if not self.immune_enabled:
            return {}
        st = {"ecm": h(self.ecm), "priming": float(self.priming)}
        if self.ecm_factors is not None:
            st["ecm_factors"] = h(self.ecm_factors)
        return st

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
        if sim.immune_enabled:
            for key in ("ecm", "priming"):
                if key not in st:
                    raise ValueError(f"snapshot has no immune-layer state '{key}' but immune.enabled is true")
            sim.ecm = xp.asarray(np.asarray(st["ecm"]), dtype=sim.dtype)
            sim.priming = float(st["priming"])
            if "ecm_factors" in st and sim._large_molecule_fields():
                sim.ecm_factors = xp.asarray(np.asarray(st["ecm_factors"]), dtype=sim.dtype)
                sim._apply_large_molecule_diffusivity()
        sim._on_vessels_changed()
        sim._rebuild_tissue()
        return sim
