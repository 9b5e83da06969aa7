"""What every model module shares: its parameters and the default (empty) hooks of the module protocol."""

from __future__ import annotations

from types import SimpleNamespace

from abm.engine.module import Declaration

__all__ = ["BaseModule", "Params"]


class Params(SimpleNamespace):
    """A module's parameters: the config sections it reads, and nothing else.

    Rules receive it as their ``params`` argument. :meth:`stream` names the module's extra random streams.
    """

    def stream(self, purpose: str) -> str:
        """Name of the module's random stream ``purpose`` (``module/purpose``)."""
        return f"{self.module_name}/{purpose}" if self.namespaced else purpose


class BaseModule:
    """Default hooks of :class:`abm.engine.module.Module`; subclasses override what they need.

    Attributes
    ----------
    name : str
        Module name (``state/<name>/`` in snapshots, the prefix of its random streams).
    seed_order : int
        Modules seed the initial condition in increasing ``seed_order`` (vessels before tumour cells, the tumour
        before the stroma around it).
    """

    name = "module"
    seed_order = 0

    def __init__(self, params: Params, rules: list[str]):
        params.module_name = self.name
        params.__dict__.setdefault("namespaced", True)
        self.params = params
        self.enabled_rules = list(rules)

    def rules(self, registry: dict) -> list:
        """The switched-on rules, in the module's canonical order (the order of ``registry``)."""
        return [r for name, r in registry.items() if name in self.enabled_rules]

    def declare(self) -> Declaration:
        """Everything the module owns."""
        return Declaration()

    def seed(self, world, rng) -> None:
        """Initial condition (nothing by default)."""

    def attach(self, world) -> None:
        """Register factors and derived indices on the world after seeding or loading (nothing by default)."""

    def commit(self, world, record, intents, events: dict) -> None:
        """Bookkeeping after the generic commit (nothing by default)."""

    def measure(self, world) -> dict:
        """Readout values as backend scalars (none by default)."""
        return {}

    def derive(self, values: dict) -> None:
        """Derived readouts on the host values (none by default)."""

    def state(self, world) -> dict:
        """Restart state beyond fields, tables and layers (none by default)."""
        return {}

    def load_state(self, world, state: dict | None) -> None:
        """Restore :meth:`state` (nothing by default)."""
