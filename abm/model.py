"""The tme-abm model: the engine with the modules a config switches on.

:class:`Simulation` is :class:`abm.engine.Simulation` assembled from a :class:`abm.config.Config`: the tumour and
vasculature modules always, the stroma and immune modules with ``immune.enabled``, the therapy module when the
config has a ``[therapy.<name>]``, ``[radiotherapy.<name>]``, ``[cell_therapy.<name>]``, ``[vaccine.<name>]``
or ``[virus.<name>]`` table. Rules run in the registry order :data:`MODULE_ORDER`, then each module's canonical
rule order.
"""

from __future__ import annotations

from abm.engine import Simulation as _EngineSimulation
from abm.modules.immune.module import PHENOTYPE_CODES, ImmuneModule
from abm.modules.stroma.module import StromaModule
from abm.modules.therapy.module import TherapyModule
from abm.modules.tumour.module import TumourModule
from abm.modules.vasculature.module import VasculatureModule

__all__ = ["MODULE_ORDER", "PHENOTYPE_CODES", "Simulation", "build_modules"]

#: Registry order of the modules: within a phase their rules run in this order.
MODULE_ORDER = ("tumour", "stroma", "immune", "vasculature", "therapy")

_MODULES = {"tumour": TumourModule, "stroma": StromaModule, "immune": ImmuneModule,
            "vasculature": VasculatureModule, "therapy": TherapyModule}


def enabled_modules(config) -> list[str]:
    """Names of the modules ``config`` switches on, in registry order."""
    on = {"tumour", "vasculature"} | ({"stroma", "immune"} if config.immune.enabled else set())
    if config.therapy or config.radiotherapy or config.cell_therapy or config.vaccine or config.virus:
        on.add("therapy")
    return [name for name in MODULE_ORDER if name in on]


def build_modules(config, namespaced: bool = True) -> list:
    """Fresh module instances for ``config``, in registry order."""
    return [_MODULES[name].from_config(config, namespaced) for name in enabled_modules(config)]


class Simulation(_EngineSimulation):
    """A tumour-microenvironment simulation built from a config.

    Parameters
    ----------
    config : Config
        Validated run configuration.
    backend : Backend, optional
        Array backend; default from ``config.backend``.
    initialise : bool
        Seed the initial condition (False when the state will be loaded from a snapshot).
    """

    def __init__(self, config, backend=None, initialise: bool = True, namespaced_streams: bool = True):
        super().__init__(config, build_modules(config, namespaced_streams), backend, initialise, namespaced_streams)

    @classmethod
    def from_state(cls, config, state: dict, backend=None, namespaced_streams: bool = True) -> Simulation:
        """Rebuild from :meth:`state` output; modules and fields the snapshot lacks start fresh (see ``added``)."""
        return cls.restore(config, build_modules(config, namespaced_streams), state, backend,
                           namespaced_streams=namespaced_streams)

    # ------------------------------------------------------------------------------------------------------
    # Convenience views for interactive use and tests (the engine's world holds the data)
    @property
    def tumour(self):
        """The tumour-cell table."""
        return self.world.tables["tumour"]

    @property
    def necrotic(self):
        """Necrotic voxel mask (bool, lattice shape)."""
        return self.world.layers["necrotic"]

    @property
    def vessels(self):
        """Vessel voxel mask (bool, lattice shape)."""
        return self.world.layers["vessels"]

    @property
    def ecm(self):
        """ECM density (0..1, lattice shape); only with the stroma module."""
        return self.world.layers["ecm"]

    @property
    def tissue(self):
        """Tissue index (uint8 codes, lattice shape): see :meth:`abm.engine.World.code`."""
        return self.world.tissue

    @property
    def priming(self) -> float:
        """Lymph-node priming (0..1); only with the immune module."""
        return float(self.module("immune").params.priming)

    def tumour_regions(self):
        """Core, margin and stroma masks of the immune readouts (see ``ImmuneModule.regions``)."""
        return self.module("immune").regions(self.world)

    def vessel_perfusion(self, voxels=None):
        """Perfusion factor (0..1] at ``voxels`` (default every vessel voxel)."""
        voxels = self.world.indices["vessel_voxels"] if voxels is None else voxels
        return self.world.factor("perfusion", voxels)
