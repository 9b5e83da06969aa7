"""The engine: world, module protocol, intents, generic commit and the phase schedule. No biology.

The engine never imports ``abm.modules`` (a test enforces it); model modules are handed to
:class:`Simulation`.
"""

from abm.engine.agents import AgentTable, Column
from abm.engine.commit import CommitRecord, commit_agents
from abm.engine.fields import DiffusingField, face_boundaries
from abm.engine.intents import Intents
from abm.engine.module import (
    PHASES,
    DeathCause,
    Declaration,
    FieldSpec,
    LayerSpec,
    Module,
    Readout,
    Rule,
    TableSpec,
    rule,
)
from abm.engine.simulation import BuildError, Simulation
from abm.engine.world import FREE, World

__all__ = [
    "FREE",
    "PHASES",
    "AgentTable",
    "BuildError",
    "Column",
    "CommitRecord",
    "DeathCause",
    "Declaration",
    "DiffusingField",
    "FieldSpec",
    "Intents",
    "LayerSpec",
    "Module",
    "Readout",
    "Rule",
    "Simulation",
    "TableSpec",
    "World",
    "commit_agents",
    "face_boundaries",
    "rule",
]
