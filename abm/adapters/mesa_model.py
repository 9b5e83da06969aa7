"""Mesa adapter: :class:`TMEModel`, a ``mesa.Model`` that runs the vectorised tme-abm engine.

Mesa's tools (``DataCollector``, ``batch_run``, property layers, the visualisation) can drive a tme-abm run
without the engine knowing about Mesa: the engine never imports this module. Needs
``pip install 'tme-abm[mesa]'`` (Mesa 3.x: tested with 3.3.1 and 3.5.1, and 3.1.5, which has no property
layers).

::

    import mesa
    from abm.adapters.mesa_model import TMEModel

    model = TMEModel("configs/quickstart.toml", rng=7, **{"immune.tcell.kill_rate_per_day": 2.0})
    model.run_model()                                    # the configured 14 days
    series = model.datacollector.get_model_vars_dataframe()
    tcells = model.agents_frame("tcell")                 # pandas, one row per T cell

What maps onto what
-------------------
* ``step()`` advances the engine by one time step (``time.dt_min``); ``running`` turns False once the engine
  has taken ``config.n_steps`` steps (``time.duration_min``), so ``run_model()`` runs the configured course.
* Readouts (counts per cell type and state, burden, the immune phenotype code, drug levels, ...) are model-level
  reporters: :meth:`TMEModel.readout` reads one, :meth:`TMEModel.model_reporters` gives ``{name: callable}`` for
  ``mesa.DataCollector``. ``model.datacollector`` is ready-made with every readout (or the ``reporters`` named)
  and collects at step 0 and after every step, as Mesa's examples do.
* Agents stay in the engine's structure-of-arrays tables; there are no Mesa ``Agent`` objects (a per-agent
  Python object would turn the vectorised engine into a loop). :meth:`TMEModel.agents_frame` gives one table
  as a pandas DataFrame on request; its ``voxel`` column is the flat lattice index
  (``numpy.unravel_index(voxel, model.simulation.shape)`` gives grid coordinates).
* Diffusing fields and layers: :meth:`TMEModel.field` returns a read-only NumPy view of the engine's array (a
  host copy on the CuPy backend); :meth:`TMEModel.property_layer` returns a ``mesa.discrete_space.PropertyLayer``
  where the installed Mesa has one (a read-only copy, refreshed after every step once requested, so it can be
  added to a Mesa grid or drawn), else the read-only view.

Configuration and parameters
----------------------------
``config`` is a TOML path, a :class:`abm.config.Config` or a mapping (default: every key at its documented
default). Parameters override it by dotted key, exactly like ``tme run --set`` but with Python values: in
``overrides={"immune.tcell.kill_rate_per_day": 2.0}``, or as keywords. Dotted names are not Python identifiers,
so keywords may spell the dots as double underscores: ``TMEModel(path, immune__tcell__kill_rate_per_day=2.0)``
and ``**{"immune.tcell.kill_rate_per_day": 2.0}`` are the same override. Every override is validated with the
config, and an unknown key is reported with the nearest valid one.

Seeding
-------
A run has one random stream, derived from ``config.seed`` (the engine's streams are ``(seed, step, purpose)``).
Mesa's ``rng`` keyword (an int, a ``SeedSequence``, a sequence of ints, a ``numpy.random.Generator`` or a
``BitGenerator``) is turned into that root seed: an int is used as it is, the others give a 63-bit integer (a
generator is drawn from once). ``seed`` is the config key and may be passed as a keyword too; Mesa's rule that
``seed`` and ``rng`` exclude each other holds. Unlike a plain ``mesa.Model``, no ``rng`` means the config's seed,
not fresh entropy, so a model built from a config reproduces ``tme run`` on that config. ``model.random`` and
``model.rng`` (Mesa's own generators) are seeded from the same root for the user's code; the engine never draws
from them.

``mesa.batch_run``
------------------
``batch_run`` builds each run as ``TMEModel(**kwargs)`` with one value per parameter, so give the config as a
path string, or wrap a dict or ``Config`` in a one-element list (``batch_run`` iterates over any other
iterable)::

    mesa.batch_run(TMEModel, parameters={"config": "configs/quickstart.toml",
                                         "immune__tcell__kill_rate_per_day": [1.0, 2.0],
                                         "seed": [1, 2]},
                   max_steps=240, data_collection_period=24, display_progress=False)

Replicates need different seeds. Mesa 3.3 passes no seed, so sweep ``seed`` as a parameter as above (every
``iteration`` of one parameter set otherwise repeats the same run); Mesa 3.4 and later pass each of
``batch_run(..., rng=[1, 2, 3])`` as ``rng`` (and overwrite nothing else). A run stops at the configured end or
at ``max_steps`` (Mesa 3.3: ``max_steps + 1``), whichever comes first. A row's ``Step`` labels the state after
that many steps; Mesa 3.3 leaves out the row of the last step, Mesa 3.5 includes it.

Memory
------
``batch_run`` keeps every collected row of every run in one Python list (one dict per run and collected step,
with every parameter and reporter), and each run's ``DataCollector`` holds its whole series until the run ends;
nothing is written to disk. A row of the ~55 default reporters takes ~3 kB, so 8 runs of 3,360 steps
collected every step (~27,000 rows) take ~80 MB, and the list grows with runs x steps / period. Keep sweeps
small, raise ``data_collection_period`` or name fewer ``reporters``; for large sweeps, long runs or snapshots
use the project's own batch runner, ``tme batch``, instead. Importing Mesa's batch runner (``import mesa``
does) sets the process-wide ``multiprocessing`` start method to ``spawn``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import mesa
import numpy as np
import pandas as pd

from abm.config import Config, ConfigError, load_config, parse_config
from abm.model import Simulation

try:  # Mesa >= 3.2; earlier 3.x kept property layers under mesa.experimental
    from mesa.discrete_space import PropertyLayer
except ImportError:  # pragma: no cover - depends on the installed Mesa
    PropertyLayer = None

__all__ = ["HAS_PROPERTY_LAYERS", "TMEModel", "resolve_config", "root_seed"]

#: Whether :meth:`TMEModel.property_layer` returns ``mesa.discrete_space.PropertyLayer`` objects.
HAS_PROPERTY_LAYERS = PropertyLayer is not None

_SEED_LIMIT = 2**63  # config.seed is a non-negative 63-bit integer


def root_seed(rng: Any) -> int | None:
    """The run's root seed (``config.seed``) for a Mesa-style ``rng`` value.

    Parameters
    ----------
    rng : int, float, numpy.random.SeedSequence, sequence of int, numpy.random.Generator, BitGenerator or None
        An integer (or integral float) is the seed itself; the others give a 63-bit integer (a generator is
        drawn from once).

    Returns
    -------
    int or None
        The root seed, or None when ``rng`` is None (keep the config's seed).
    """
    if rng is None:
        return None
    if isinstance(rng, bool):
        raise TypeError(f"rng = {rng!r}: expected an integer seed, a SeedSequence or a numpy Generator")
    if isinstance(rng, int | np.integer):
        return int(rng)
    if isinstance(rng, float):
        if not rng.is_integer():
            raise ValueError(f"rng = {rng!r}: a seed must be a whole number")
        return int(rng)
    if isinstance(rng, np.random.BitGenerator):
        rng = np.random.Generator(rng)
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(_SEED_LIMIT))
    if isinstance(rng, np.random.SeedSequence):
        sequence = rng
    elif isinstance(rng, Sequence) and not isinstance(rng, str | bytes):
        sequence = np.random.SeedSequence([int(v) for v in rng])
    else:
        raise TypeError(f"rng = {rng!r}: expected an integer seed, a SeedSequence or a numpy Generator")
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _raw_config(config) -> tuple[dict, str]:
    """The mapping a config source holds (what was written, defaults left out) and a name for error messages."""
    if config is None:
        return {}, "config"
    if isinstance(config, Config):
        return config.model_dump(mode="json", exclude_unset=True), "config"
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), "config"
    if isinstance(config, str | Path):
        # load_config reports a missing or malformed file; the overrides are applied to what the file sets.
        return load_config(config).model_dump(mode="json", exclude_unset=True), str(config)
    raise TypeError(f"config = {config!r}: expected a TOML path, a Config or a mapping")


def _set_dotted(data: dict, key: str, value: Any, problems: list[str]) -> None:
    parts = key.split(".")
    if not all(parts):
        problems.append(f"{key!r}: expected a dotted config key such as immune.tcell.kill_rate_per_day")
        return
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"{key!r}: '{part}' is a value, not a section")
            return
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def resolve_config(config=None, overrides: Mapping[str, Any] | None = None, seed: int | None = None) -> Config:
    """Validate ``config`` with dotted-key ``overrides`` (Python values) and an optional root ``seed``.

    Parameters
    ----------
    config : str, Path, Config, mapping or None
        TOML path, validated config or raw mapping; None for every default.
    overrides : mapping of str to value, optional
        ``{"immune.tcell.kill_rate_per_day": 2.0}``; ``__`` in a key stands for ``.``.
    seed : int, optional
        Replaces ``config.seed`` (after the overrides).

    Raises
    ------
    ConfigError
        Listing every bad override and every validation problem.
    """
    data, source = _raw_config(config)
    problems: list[str] = []
    for key, value in (overrides or {}).items():
        _set_dotted(data, key.replace("__", "."), value, problems)
    if problems:
        raise ConfigError(problems, "overrides")
    if seed is not None:
        data["seed"] = seed
    return parse_config(data, source)


def _read_readout(model: TMEModel, name: str) -> float:
    # A module-level function under functools.partial: DataCollector calls partials with the model, and it
    # pickles for batch_run's worker processes.
    return model.readout(name)


class TMEModel(mesa.Model):
    """A tme-abm simulation as a ``mesa.Model`` (see the module docstring).

    Parameters
    ----------
    config : str, Path, Config, mapping or None
        TOML path, validated config or raw mapping; None for every default.
    overrides : mapping of str to value, optional
        Dotted config keys to values, e.g. ``{"immune.tcell.kill_rate_per_day": 2.0}``.
    reporters : iterable of str, optional
        Readouts ``model.datacollector`` collects; default every readout and ``time_min``; ``()`` for none.
    rng : int, SeedSequence, sequence of int, numpy Generator or BitGenerator, optional
        Mesa-style seed, turned into ``config.seed`` (:func:`root_seed`); default the config's seed.
    **kwargs
        More config overrides as keywords, ``__`` standing for ``.`` (``immune__tcell__kill_rate_per_day=2.0``
        or ``**{"immune.tcell.kill_rate_per_day": 2.0}``); ``seed=`` sets ``config.seed``. (Named ``kwargs``:
        Mesa's ``SolaraViz`` accepts model parameters beyond the named ones only through a catch-all of that name.)

    Attributes
    ----------
    config : Config
        The fully resolved config of this run.
    simulation : abm.model.Simulation
        The engine; its ``world`` holds the fields, layers and agent tables.
    datacollector : mesa.DataCollector
        Collects the ``reporters`` at step 0 and after every step.
    running : bool
        False once the engine has taken ``config.n_steps`` steps.
    """

    def __init__(self, config=None, *, overrides: Mapping[str, Any] | None = None,
                 reporters: Iterable[str] | None = None, rng: Any = None, **kwargs: Any):
        if rng is not None and "seed" in kwargs:
            raise ValueError("pass either rng or seed, not both")  # Mesa's rule
        merged = {**(overrides or {}), **kwargs}
        self.config = resolve_config(config, merged, root_seed(rng))
        # Mesa's own generators get the same root; the engine derives its streams from config.seed alone.
        super().__init__(rng=self.config.seed)
        self.simulation = Simulation(self.config)
        self._readouts: dict[str, float] | None = None
        self._readouts_step = -1
        self._property_layers: dict = {}
        self.running = self.simulation.step_index < self.config.n_steps
        self.datacollector = mesa.DataCollector(model_reporters=self.model_reporters(reporters))
        self.datacollector.collect(self)

    # ------------------------------------------------------------------------------------------------------
    def step(self) -> None:
        """Advance the engine one step (``config.time.dt_min``), then refresh requested layers and collect."""
        self.simulation.step()
        self.running = self.simulation.step_index < self.config.n_steps
        for name, layer in self._property_layers.items():
            self._refresh_layer(name, layer)
        self.datacollector.collect(self)

    @property
    def time_min(self) -> float:
        """Simulated time of the engine (min)."""
        return self.simulation.time_min

    @property
    def step_index(self) -> int:
        """Steps the engine has taken."""
        return self.simulation.step_index

    # ------------------------------------------------------------------------------------------------------
    # Readouts
    def readouts(self) -> dict[str, float]:
        """Every readout of the current step (``time_min`` and the declared readouts); computed once per step."""
        if self._readouts is None or self._readouts_step != self.simulation.step_index:
            self._readouts = self.simulation.readouts()
            self._readouts_step = self.simulation.step_index
        return dict(self._readouts)

    def readout(self, name: str) -> float:
        """One readout of the current step, e.g. ``"tumour_cells"`` (units: :meth:`readout_declarations`)."""
        if self._readouts is None or self._readouts_step != self.simulation.step_index:
            self.readouts()
        try:
            return self._readouts[name]
        except KeyError:
            raise KeyError(f"no readout '{name}' (readouts: {', '.join(self._readouts)})") from None

    def readout_declarations(self) -> dict[str, tuple[str, str]]:
        """Every declared readout: name -> (unit, kind), kind one of count, event, level, ratio, code."""
        return self.simulation.readout_declarations()

    def model_reporters(self, names: Iterable[str] | None = None,
                        kinds: Iterable[str] | None = None) -> dict[str, Any]:
        """Model-level reporters for ``mesa.DataCollector``: ``{name: callable(model) -> float}``.

        Parameters
        ----------
        names : iterable of str, optional
            Readouts to report; default ``time_min`` and every declared readout of this model's config (counts
            per cell type and state, burden, phenotype code, drug levels, ...).
        kinds : iterable of str, optional
            Keep only declared readouts of these kinds (count, event, level, ratio, code), and ``time_min``.

        Returns
        -------
        dict of str to callable
            ``functools.partial`` objects, which ``DataCollector`` calls with the model.
        """
        declared = self.readout_declarations()
        if names is None:
            names = ["time_min", *declared]
        names = list(names)
        unknown = [n for n in names if n != "time_min" and n not in declared]
        if unknown:
            raise KeyError(f"no readout {', '.join(map(repr, unknown))} (readouts: time_min, {', '.join(declared)})")
        if kinds is not None:
            kinds = set(kinds)
            names = [n for n in names if n == "time_min" or declared[n][1] in kinds]
        return {name: partial(_read_readout, name=name) for name in names}

    # ------------------------------------------------------------------------------------------------------
    # Agents, fields and layers
    def agent_tables(self) -> list[str]:
        """Names of the agent tables (one per cell type), e.g. ``["tumour", "caf", "tcell", "macrophage"]``."""
        return list(self.simulation.world.tables)

    def agents_frame(self, table: str) -> pd.DataFrame:
        """One agent table as a pandas DataFrame (a host copy, one row per agent, one column per schema column).

        ``frame.attrs["units"]`` maps each column to its unit; ``voxel`` is the flat lattice index.
        """
        tables = self.simulation.world.tables
        if table not in tables:
            raise KeyError(f"no agent table '{table}' (tables: {', '.join(tables)})")
        t = tables[table]
        frame = pd.DataFrame(t.to_host(self.simulation.backend.to_host), columns=list(t.schema))
        frame.attrs["units"] = {name: col.unit for name, col in t.schema.items()}
        return frame

    def field_names(self) -> list[str]:
        """Diffusing fields, then non-diffusing layers (masks, ECM, ...), by name."""
        world = self.simulation.world
        return [*world.fields, *world.layers]

    def field(self, name: str) -> np.ndarray:
        """A diffusing field or layer as a read-only NumPy array of the lattice's shape.

        On the NumPy backend it is a view of the engine's own buffer (no copy; valid until the engine replaces
        the buffer, so read it again after a step); on CuPy it is a host copy.
        """
        world = self.simulation.world
        if name in world.fields:
            data = world.fields[name].data
        elif name in world.layers:
            data = world.layers[name]
        else:
            raise KeyError(f"no field or layer '{name}' (fields and layers: {', '.join(self.field_names())})")
        view = self.simulation.backend.to_host(data).view()
        view.flags.writeable = False
        return view

    def property_layer(self, name: str):
        """A field or layer as a ``mesa.discrete_space.PropertyLayer`` (or a read-only array without one).

        The layer holds a read-only copy of the engine's array (Mesa's class owns its data); once requested it
        is refreshed after every step, so the same object can sit on a Mesa grid or in a plot.
        """
        if PropertyLayer is None:
            return self.field(name)
        layer = self._property_layers.get(name)
        if layer is None:
            layer = PropertyLayer.from_data(name, np.array(self.field(name)))
            layer.data.flags.writeable = False
            self._property_layers[name] = layer
        return layer

    def _refresh_layer(self, name: str, layer) -> None:
        data = layer.data
        data.flags.writeable = True
        np.copyto(data, self.field(name))
        data.flags.writeable = False
