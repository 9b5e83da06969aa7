"""The module protocol: what a model module declares and the hooks the engine calls.

A module (tumour, vasculature, immune, stroma, therapy) owns fields, non-diffusing layers, agent tables, death
causes, rules and readouts, and says so in one :class:`Declaration`. The engine builds the world from the
declarations of the modules a config switches on, checks them (unique names, one writer per column, every
``needs`` met), and runs the rules in a fixed phase schedule:

=============  ===========================================================================================
phase          who writes what
=============  ===========================================================================================
``systemic``   host or 0-d state (dose events, PK, priming)
``exchange``   uptake, secretion and supply into field buffers only
(fields)       the engine advances every field
``signal``     derived lattices and factors (target occupancy); never agents
``update``     per-agent state relaxations; each column has one declared writer
``behaviour``  intents (kill, divide, move, recruit, layer changes); bookkeeping of the rule's own columns
(commit)       generic commit of intents, module commit hooks, occupancy indices refreshed once
=============  ===========================================================================================

Within a phase rules run in registry order: module order (``abm.modules.MODULE_ORDER``), then each module's
canonical rule order. Config switches rules on and off; it never orders them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "PHASES",
    "DeathCause",
    "Declaration",
    "FieldSpec",
    "LayerSpec",
    "Module",
    "Phase",
    "Readout",
    "Rule",
    "TableSpec",
]

Phase = Literal["systemic", "exchange", "signal", "update", "behaviour"]
PHASES: tuple[str, ...] = ("systemic", "exchange", "signal", "update", "behaviour")
READOUT_KINDS = ("count", "event", "level", "ratio", "code")


@dataclass(frozen=True)
class Rule:
    """A named model rule.

    Attributes
    ----------
    name : str
        Name used in config and, as ``module/name``, as the key of the rule's own random stream.
    phase : str
        One of :data:`PHASES`.
    fn : callable
        ``fn(world, params, rng, intents) -> None``; ``params`` is the owning module's parameters.
    writes : tuple of str
        Agent columns (``"table.column"``) and layers (``"layer:name"``) the rule changes in place. Each may
        have one writer only; checked when the simulation is built.
    needs : tuple of str
        What must exist for the rule to run: ``"field:<name>"``, ``"layer:<name>"``, ``"table:<name>"``.
        A rule whose needs are not met is left out of the schedule (and listed in ``Simulation.inactive``).
    """

    name: str
    phase: str
    fn: Callable[..., None]
    writes: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"rule '{self.name}': phase '{self.phase}' is not one of {', '.join(PHASES)}")


def rule(name: str, phase: str, writes: tuple[str, ...] = (), needs: tuple[str, ...] = ()):
    """Decorate ``fn(world, params, rng, intents)`` as a :class:`Rule`."""

    def wrap(fn) -> Rule:
        return Rule(name, phase, fn, tuple(writes), tuple(needs))

    return wrap


@dataclass(frozen=True)
class FieldSpec:
    """A diffusing field a module owns.

    Attributes
    ----------
    name, unit : str
        Field name (HDF5 dataset name) and concentration unit.
    diffusivity_um2_per_min, decay_per_min, initial : float
        Free diffusion coefficient (µm²/min), first-order decay (1/min), initial value (field unit).
    boundary : object
        A boundary section with ``default``, ``value`` and ``faces`` (see ``abm.config.BoundaryConfig``).
    substeps : int
        LOD sub-steps per agent step.
    ecm_hindered : bool
        Whether the ECM layer lowers this field's diffusivity (large molecules); the module owning the ECM
        refreshes every such field.
    ecm_hindrance : float or None
        The field's own hindrance ``h`` in ``D (1 - h ECM)`` (size-dependent, nanoparticle carriers); ``None``
        takes the ECM module's value.
    solver : str
        ``"lod"`` (operator-split, fast) or ``"exact"`` (the unsplit implicit system, to ``tolerance``).
    tolerance : float
        Relative residual the exact solve stops at.
    absolute_tolerance : float
        Error (field unit) below which the exact solve counts as converged whatever the relative residual; for
        fields that wash out over many decades (drugs), where float32 round-off stalls the relative criterion.
    """

    name: str
    unit: str
    diffusivity_um2_per_min: float
    decay_per_min: float
    initial: float
    boundary: Any
    substeps: int = 1
    ecm_hindered: bool = False
    solver: str = "lod"
    tolerance: float = 1e-4
    ecm_hindrance: float | None = None
    absolute_tolerance: float = 0.0


@dataclass(frozen=True)
class LayerSpec:
    """A non-diffusing lattice (necrotic mask, vessel mask, ECM density).

    Attributes
    ----------
    name, unit, dtype : str
        Layer name, unit (``"flag"`` for masks) and dtype.
    initial : float
        Value everywhere before the owning module seeds it.
    tissue_mark : bool
        Whether set voxels count as taken in the exclusive tissue layer (necrotic and vessel voxels do).
    as_field : bool
        Whether snapshots write the layer under ``fields/`` (the ECM) rather than under ``state/<module>/``.
    """

    name: str
    unit: str
    dtype: str
    initial: float = 0
    tissue_mark: bool = False
    as_field: bool = False


@dataclass(frozen=True)
class TableSpec:
    """An agent table a module owns.

    Attributes
    ----------
    name : str
        Table (agent type) name.
    columns : dict of str to Column
        The schema; every table has an int64 ``voxel`` column.
    layer : {"tissue", "immune"}
        The occupancy layer: ``tissue`` is exclusive (one agent per voxel, divisions resolved by random
        priority); ``immune`` holds up to the immune capacity per voxel (moves and recruitment admitted
        against free places).
    row_index : bool
        Keep a lattice of the table row at each voxel (tissue tables only), refreshed after every commit.
    age_column : str or None
        A float column advanced by ``dt`` in every update phase.
    deaths_readout, births_readout : str or None
        Event readouts counting all deaths and all births (divisions) of the table per step.
    on_divide : callable or None
        ``fn(world, params, table, parents, daughters)``: adjust the parents' columns and the daughters'
        column dict before daughters are appended.
    """

    name: str
    columns: dict
    layer: str = "tissue"
    row_index: bool = False
    age_column: str | None = None
    deaths_readout: str | None = None
    births_readout: str | None = None
    on_divide: Callable[..., None] | None = None


@dataclass(frozen=True)
class DeathCause:
    """A cause of death of one table's agents.

    When several rules kill one agent in a step, the cause of highest ``priority`` is recorded, so the
    outcome never depends on rule order. Priorities of one table are unique. ``immunogenicity`` is a weight the
    modules may read per cause (``World.death_immunogenicity``): the immune module counts it as extra antigen of
    an immunogenic death (dimensionless; 0 for an ordinary death).
    """

    table: str
    name: str
    priority: int
    readout: str | None = None
    immunogenicity: float = 0.0


@dataclass(frozen=True)
class Readout:
    """A time-series readout.

    Attributes
    ----------
    name, unit : str
        Dataset name and unit.
    kind : {"count", "event", "level", "ratio", "code"}
        ``count`` a population, ``event`` what happened during the step, ``level`` a concentration or size,
        ``ratio`` a dimensionless ratio or fraction, ``code`` a categorical code.
    description : str
        What it measures.
    """

    name: str
    unit: str
    kind: str
    description: str = ""

    def __post_init__(self):
        if self.kind not in READOUT_KINDS:
            raise ValueError(f"readout '{self.name}': kind '{self.kind}' is not one of {', '.join(READOUT_KINDS)}")


@dataclass
class Declaration:
    """Everything a module owns and the rules it brings."""

    fields: list[FieldSpec] = field(default_factory=list)
    layers: list[LayerSpec] = field(default_factory=list)
    tables: list[TableSpec] = field(default_factory=list)
    death_causes: list[DeathCause] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    readouts: list[Readout] = field(default_factory=list)
    occupancy: dict = field(default_factory=dict)  # capacity layers this module defines: name -> places per voxel


class Module(Protocol):
    """What a model module provides (see ``abm/modules``)."""

    name: str
    params: Any

    def declare(self) -> Declaration:
        """Fields, layers, tables, death causes, the switched-on rules and readouts."""

    def seed(self, world, rng) -> None:
        """Initial condition of what the module owns."""

    def commit(self, world, record, events: dict) -> None:
        """Module bookkeeping after the generic commit (necrotic marks, sprouts, priming); add events."""

    def measure(self, world) -> dict:
        """Readout values of the current state as backend scalars (gathered in one host transfer)."""

    def derive(self, values: dict) -> None:
        """Derived readouts from the host values of every module (ratios, densities), in place."""

    def state(self, world) -> dict:
        """Restart state beyond fields, tables and layers, stored under ``state/<module>/``."""

    def load_state(self, world, state: dict | None) -> None:
        """Restore from :meth:`state`; ``None`` means the module is new at this branch."""
