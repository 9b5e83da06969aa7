"""The simulation: modules assembled on a world and advanced by one fixed schedule.

:meth:`Simulation.step` reads top to bottom:

1. the field buffers are cleared; ``systemic`` and ``exchange`` rules run (PK, uptake, secretion, supply);
2. every field advances (diffusion, decay, sinks and sources, implicitly);
3. ``signal`` rules derive lattices and factors; ``update`` rules relax per-agent state (age columns advance
   first); ``behaviour`` rules record intents;
4. the intents are committed at once (:func:`abm.engine.commit.commit_agents`), then each module's commit hook
   runs, then the occupancy indices are refreshed, once;
5. time advances.

Nothing else advances time. Rules run in registry order within each phase; the config only switches them on and
off, so permuting a config's rule list never changes a result. The engine never opens a file and never imports
a model module: the modules are handed in (``abm.model.Simulation`` assembles the default ones from a config).
"""

from __future__ import annotations

import numpy as np

from abm.backend import Backend, get_backend
from abm.engine.agents import AgentTable
from abm.engine.commit import commit_agents
from abm.engine.fields import DiffusingField, face_boundaries
from abm.engine.intents import Intents
from abm.engine.module import PHASES, Readout
from abm.engine.world import World

__all__ = ["BuildError", "Simulation"]


class BuildError(ValueError):
    """The modules' declarations do not fit together (a duplicate name, two writers of one column, ...)."""


class Simulation:
    """A set of modules on one world.

    Parameters
    ----------
    config : abm.config.Config
        Validated run configuration (grid, time, dtype, seed, backend, random are read here; modules read their
        own).
    modules : sequence of Module
        In registry order (the order rules run in within a phase).
    backend : Backend, optional
        Array backend; default from ``config.backend``.
    initialise : bool
        Seed the initial condition (False when the state will be loaded from a snapshot).
    namespaced_streams : bool
        Name each rule's random stream ``module/rule`` (True) rather than by the bare rule name.
    """

    def __init__(self, config, modules, backend: Backend | None = None, initialise: bool = True,
                 namespaced_streams: bool = True):
        self.config = config
        self.backend = backend or get_backend(config.backend)
        world = self.world = World(self.backend, config.grid.shape, config.grid.spacing_um, config.time.dt_min,
                                   config.dtype, config.seed, self.backend.resolve_random(config.random))
        self.modules = list(modules)
        self.added: dict[str, list[str]] = {"modules": [], "fields": []}
        self.inactive: dict[str, str] = {}
        self._declare(namespaced_streams)
        self._events: dict = {}
        self.intents = Intents(world)
        if initialise:
            for m in sorted(self.modules, key=lambda m: m.seed_order):
                m.seed(world, world.initial_rng(m.name))
                world.refresh_occupancy()
        for m in self.modules:
            m.attach(world)
        world.refresh_occupancy()

    # ------------------------------------------------------------------------------------------------------
    # Build
    def _declare(self, namespaced: bool) -> None:
        world, xp = self.world, self.world.xp
        self.declarations = {m.name: m.declare() for m in self.modules}
        owner: dict[str, str] = {}
        self.readout_specs: dict = {}

        def claim(kind: str, name: str, module: str) -> None:
            key = f"{kind}:{name}"
            if key in owner:
                raise BuildError(f"{kind} '{name}' is declared by both '{owner[key]}' and '{module}'")
            owner[key] = module

        self.params_of: dict = {}
        self.owner_of_layer: dict[str, str] = {}
        self.owner_of_table: dict[str, str] = {}
        for m in self.modules:
            d = self.declarations[m.name]
            for layer, capacity in d.occupancy.items():
                claim("occupancy layer", layer, m.name)
                world.capacity[layer] = int(capacity)
            for spec in d.fields:
                claim("field", spec.name, m.name)
                bc = face_boundaries(world.ndim, spec.boundary.default, spec.boundary.value, spec.boundary.faces)
                world.fields[spec.name] = DiffusingField(
                    spec.name, spec.unit, xp, world.shape, world.spacing_um, world.dt_min,
                    spec.diffusivity_um2_per_min, spec.decay_per_min, bc, spec.initial, world.dtype, spec.substeps,
                    solver=spec.solver, tolerance=spec.tolerance, absolute_tolerance=spec.absolute_tolerance,
                )
                world.field_specs[spec.name] = spec
                if spec.solver == "exact":
                    for r in (Readout(f"{spec.name}_solver_iterations", "iterations", "level",
                                      f"iterations of the exact {spec.name} solve in the step"),
                              Readout(f"{spec.name}_solver_residual", "-", "ratio",
                                      f"estimated relative max error of the {spec.name} solve")):
                        claim("readout", r.name, m.name)
                        self.readout_specs[r.name] = r
            for spec in d.layers:
                claim("layer", spec.name, m.name)
                dtype = world.dtype if spec.dtype == "float" else np.dtype(spec.dtype)
                world.layers[spec.name] = xp.full(world.shape, spec.initial, dtype=dtype)
                world.layer_specs[spec.name] = spec
                self.owner_of_layer[spec.name] = m.name
                if spec.tissue_mark:
                    world.add_tissue_code(spec.name)
            for spec in d.tables:
                claim("table", spec.name, m.name)
                world.tables[spec.name] = AgentTable(xp, spec.columns)
                world.table_specs[spec.name] = spec
                world.death_codes[spec.name] = {}
                self.params_of[spec.name] = m.params
                self.owner_of_table[spec.name] = m.name
                if spec.layer == "tissue":
                    world.add_tissue_code(spec.name)
            for r in d.readouts:
                claim("readout", r.name, m.name)
                self.readout_specs[r.name] = r
        world.death_readouts = {t: {} for t in world.tables}
        for m in self.modules:
            for cause in self.declarations[m.name].death_causes:
                if cause.table not in world.tables:
                    continue  # a cause for a table of a module that is switched off
                codes = world.death_codes[cause.table]
                if cause.name in codes or cause.priority in codes.values():
                    raise BuildError(f"death cause '{cause.name}' of '{cause.table}' (priority {cause.priority}) "
                                     "is not unique")
                if not 0 < cause.priority < 128:
                    raise BuildError(f"death cause '{cause.name}': priority must lie in 1..127")
                codes[cause.name] = cause.priority
                world.death_readouts[cause.table][cause.name] = cause.readout
                if cause.immunogenicity:
                    world.death_immunogenicity.setdefault(cause.table, {})[cause.priority] = float(cause.immunogenicity)
        for name, spec in world.table_specs.items():
            if spec.layer != "tissue" and spec.layer not in world.capacity:
                raise BuildError(f"table '{name}' lives on occupancy layer '{spec.layer}', which no module declares")

        # Rules: needs, one writer per column, unique streams, phases.
        self.schedule: dict[str, list] = {p: [] for p in PHASES}
        writers: dict[str, str] = {}
        streams: set[str] = set()
        for m in self.modules:
            for r in self.declarations[m.name].rules:
                qualified = f"{m.name}/{r.name}"
                missing = [n for n in r.needs if not world.has(n)]
                if missing:
                    self.inactive[qualified] = f"needs {', '.join(missing)}"
                    continue
                for w in r.writes:
                    self._check_target(qualified, w)
                    if w in writers:
                        raise BuildError(f"'{w}' is written by both '{writers[w]}' and '{qualified}'; "
                                         "each column and layer has one writer")
                    writers[w] = qualified
                stream = qualified if namespaced else r.name
                if stream in streams:
                    raise BuildError(f"random stream '{stream}' is used by two rules")
                streams.add(stream)
                self.schedule[r.phase].append((m, r, stream))
        self.writers = writers

    def _check_target(self, rule: str, target: str) -> None:
        world = self.world
        if target.startswith("layer:"):
            ok = target[6:] in world.layers
        else:
            table, _, column = target.partition(".")
            ok = table in world.tables and column in world.table_specs[table].columns
        if not ok:
            raise BuildError(f"rule '{rule}' declares it writes '{target}', which does not exist")

    # ------------------------------------------------------------------------------------------------------
    @property
    def xp(self):
        """Array namespace of the backend."""
        return self.world.xp

    @property
    def step_index(self) -> int:
        """Steps taken since t = 0."""
        return self.world.step_index

    @property
    def time_min(self) -> float:
        """Simulated time (min)."""
        return self.world.time_min

    @property
    def dt_min(self) -> float:
        """Time step (min)."""
        return self.world.dt_min

    @property
    def shape(self) -> tuple:
        """Lattice shape."""
        return self.world.shape

    @property
    def spacing_um(self) -> float:
        """Voxel edge (µm)."""
        return self.world.spacing_um

    @property
    def fields(self) -> dict:
        """The diffusing fields by name."""
        return self.world.fields

    @property
    def agents(self) -> dict:
        """The agent tables by name."""
        return self.world.tables

    @property
    def layers(self) -> dict:
        """The non-diffusing layers by name."""
        return self.world.layers

    def module(self, name: str):
        """The module called ``name``."""
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"no module '{name}' (modules: {', '.join(m.name for m in self.modules)})")

    def rule_names(self) -> list[str]:
        """Qualified names ``module/rule`` of the scheduled rules, in the order they run."""
        return [f"{m.name}/{r.name}" for p in PHASES for m, r, _ in self.schedule[p]]

    # ------------------------------------------------------------------------------------------------------
    # The schedule
    def _run(self, phase: str) -> None:
        world, intents = self.world, self.intents
        for m, r, stream in self.schedule[phase]:
            r.fn(world, m.params, world.rng(stream), intents)

    def step(self) -> None:
        """Advance one time step (see the module docstring for the order)."""
        world = self.world
        self.intents = Intents(world)
        for f in world.fields.values():
            f.clear_sources()
        self._run("systemic")
        self._run("exchange")
        for f in world.fields.values():
            f.advance()
        self._run("signal")
        dt = np.float32(world.dt_min)
        for name, spec in world.table_specs.items():
            if spec.age_column:
                table = world.tables[name]
                table[spec.age_column] = table[spec.age_column] + dt
        self._run("update")
        self._run("behaviour")
        record = commit_agents(world, self.intents, self.params_of)
        events = record.events
        for m in self.modules:
            m.commit(world, record, self.intents, events)
        world.refresh_occupancy()
        world.step_index += 1
        self._events = events

    # ------------------------------------------------------------------------------------------------------
    # Readouts
    def readout_declarations(self) -> dict[str, tuple[str, str]]:
        """Every readout the modules declare: name -> (unit, kind)."""
        return {name: (r.unit, r.kind) for name, r in self.readout_specs.items()}

    def field_units(self) -> dict[str, str]:
        """Unit of every dataset written under ``fields/`` (diffusing fields and field-like layers)."""
        units = {name: f.unit for name, f in self.world.fields.items()}
        units.update({name: s.unit for name, s in self.world.layer_specs.items() if s.as_field})
        return units

    def readouts(self) -> dict[str, float]:
        """Readouts of the current state and the events of the last step, in one host transfer.

        Returns
        -------
        dict of str to float
            ``time_min`` and every declared readout (events of a step not yet taken are 0).
        """
        xp, world = self.xp, self.world
        values: dict = {}
        for m in self.modules:
            values.update(m.measure(world))
        values.update(self._events)
        names = list(values)
        out = {"time_min": float(world.time_min)}
        if names:
            host = self.backend.to_host(xp.stack([xp.asarray(values[k], dtype=np.float64) for k in names]))
            out.update({k: float(v) for k, v in zip(names, host)})
        for name, spec in self.readout_specs.items():
            if spec.kind == "event":
                out.setdefault(name, 0.0)
        for name, f in world.fields.items():
            if f.solver == "exact":
                out[f"{name}_solver_iterations"] = float(f.last_iterations)
                out[f"{name}_solver_residual"] = float(f.last_residual)
        for m in self.modules:
            m.derive(out)
        undeclared = set(out) - set(self.readout_specs) - {"time_min"}
        if undeclared:
            raise BuildError(f"readouts {', '.join(sorted(undeclared))} are measured but not declared")
        return out

    metrics = readouts  # the name the runner and older code use

    # ------------------------------------------------------------------------------------------------------
    # Snapshot state
    def state(self) -> dict:
        """Everything a restart needs, as host arrays.

        Returns
        -------
        dict
            ``{"fields": {name: array}, "agents": {table: {column: array}}, "state": {...}}``; ``state`` holds
            ``step`` and ``time_min`` and one mapping per module (its layers and its own state).
        """
        h, world = self.backend.to_host, self.world
        fields = {name: h(f.data) for name, f in world.fields.items()}
        st: dict = {"step": world.step_index, "time_min": float(world.time_min)}
        for m in self.modules:
            own = {}
            for name, spec in world.layer_specs.items():
                if self.owner_of_layer[name] != m.name:
                    continue
                if spec.as_field:
                    fields[name] = h(world.layers[name])
                else:
                    own[name] = h(world.layers[name])
            own.update(m.state(world))
            st[m.name] = own
        return {"fields": fields, "agents": {name: t.to_host(h) for name, t in world.tables.items()}, "state": st}

    @classmethod
    def restore(cls, config, modules, state: dict, backend: Backend | None = None, **kwargs) -> Simulation:
        """Rebuild a simulation from :meth:`state` output; modules and fields missing from it start fresh.

        A module absent from the snapshot (switched on at a branch) is seeded at the branch time; a field or
        layer absent from it (a drug on a new target) starts at its initial value. Both are listed in
        :attr:`added`.

        Raises
        ------
        ValueError
            If the state does not fit the config (grid shape, agent columns).
        """
        sim = cls.__new__(cls)
        Simulation.__init__(sim, config, modules, backend, initialise=False, **kwargs)
        world, xp = sim.world, sim.world.xp
        st = _upgrade_v1_state(state)
        world.step_index = int(st["state"]["step"])
        module_state = st["state"]
        for name, f in world.fields.items():
            if name not in st["fields"]:
                sim.added["fields"].append(name)
                continue
            data = np.asarray(st["fields"][name])
            if data.shape != world.shape:
                raise ValueError(f"snapshot field '{name}' has shape {data.shape}, the config's grid is {world.shape}")
            f.data = xp.asarray(data, dtype=world.dtype)
        new_modules = [m for m in sim.modules if m.name not in module_state]
        for m in sim.modules:
            if m in new_modules:
                continue
            own = module_state[m.name]
            for name, spec in world.layer_specs.items():
                if sim.owner_of_layer[name] != m.name:
                    continue
                src = st["fields"] if spec.as_field else own
                if name not in src:  # new at the branch (a drug on a new target): starts at its initial value
                    sim.added["fields"].append(name)
                    continue
                data = np.asarray(src[name])
                if data.shape != world.shape:
                    raise ValueError(f"snapshot layer '{name}' has shape {data.shape}, the config's grid is "
                                     f"{world.shape}")
                world.layers[name] = xp.asarray(data, dtype=world.layers[name].dtype)
            for name in world.table_specs:
                if sim.owner_of_table[name] == m.name:
                    if name not in st["agents"]:
                        raise ValueError(f"snapshot has no agent table '{name}'")
                    world.tables[name].load(st["agents"][name])
            m.load_state(world, own)
        world.refresh_occupancy()
        for m in sorted(new_modules, key=lambda m: m.seed_order):
            m.seed(world, world.initial_rng(m.name))
            m.load_state(world, None)
            world.refresh_occupancy()
            sim.added["modules"].append(m.name)
        for m in sim.modules:
            m.attach(world)
        world.refresh_occupancy()
        return sim


#: Where format-version-1 snapshots kept what now lives under ``state/<module>/`` or ``fields/``.
_V1_STATE = {"necrotic": ("tumour", None), "vessels": ("vasculature", None), "priming": ("immune", None),
             "ecm_factors": ("stroma", None), "ecm": (None, "ecm")}


def _upgrade_v1_state(state: dict) -> dict:
    """Move the flat ``state/`` entries of a version-1 snapshot to their modules (a no-op for version 2)."""
    st = state["state"]
    if "necrotic" not in st:
        return state
    fields = dict(state["fields"])
    new = {"step": st["step"], "time_min": st["time_min"]}
    for key, value in st.items():
        if key in ("step", "time_min"):
            continue
        module, field_name = _V1_STATE.get(key, (None, None))
        if field_name:
            fields[field_name] = value
        elif module:
            new.setdefault(module, {})[key] = value
    if "ecm" in st:  # the immune and stromal layer was on
        new.setdefault("immune", {})
        new.setdefault("stroma", {})
    return {"fields": fields, "agents": state["agents"], "state": new}
