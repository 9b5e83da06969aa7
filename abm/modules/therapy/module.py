"""The therapy module: drugs from config, their PK, delivery through vessels and ECM, and target occupancy.

Per drug ``<name>`` (a table ``[therapy.<name>]``):

- **PK** (systemic phase): a one- or two-compartment model (optionally with an absorption depot) advanced with its
  exact propagator (:mod:`kernels.pk`), the step split at every dose and infusion boundary; doses in mg/kg
  times ``patient.body_weight_kg`` or flat mg. Plasma level ``C_p = central amount / V1`` (mg/L), in nM
  ``C_p 1e3 / MW[kDa]``.
- **Delivery** (exchange phase): the drug field ``<name>`` (nM) exchanges with plasma at every vessel voxel,
  ``dc/dt = P (S/V) perfusion (f_u C_p - c)``, through the vasculature's implicit ``supply`` (the mechanism
  oxygen uses); it diffuses with the drug's own ``D`` (lowered by ECM for large molecules) and is cleared
  locally at ``ln 2 / t½``. Lattice faces are no-flux: drug enters through vessels only.
- **Occupancy** (signal phase): one lattice per target bound by any drug, competitive,
  ``θ = Σ(Cᵢ/Kdᵢ) / (1 + Σ Cᵢ/Kdᵢ)`` (a bispecific enters two sums), written as the layer
  ``occupancy_<slug>``; CTLA-4 also gets the plasma occupancy (lymph node), ``world.systemic``.
- **Nanoparticle carriers** (``kind = "nanoparticle"``, :mod:`abm.modules.therapy.carrier`): the carrier's PK with
  its encapsulated and released payloads in one exact system; in tissue a carrier field and one encapsulated field
  per payload (size-dependent extravasation, diffusion and ECM hindrance, uptake by cells) release into each
  payload's own drug field, which binds its targets like any drug (docs/THERAPIES.md §5).
- **Cell effects** (behaviour phase): anti-CTLA-4 depletes Tregs (Fc-mediated) at a rate rising with occupancy;
  FAP-targeting kills CAFs. Every other target acts where its mechanism lives, through
  :func:`abm.modules.common.blocked` (docs/THERAPIES.md lists the read points).
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np

from abm.config import ConfigError
from abm.engine.module import DeathCause, Declaration, FieldSpec, LayerSpec, Readout, rule
from abm.modules.base import BaseModule, Params
from abm.modules.common import lesion_regions, probability
from abm.modules.therapy.carrier import (
    Account,
    Carrier,
    carrier_commit,
    carrier_exchange,
    ecm_hindrance,
    pct_injected_dose,
)
from abm.modules.therapy.carrier_config import CarrierConfig
from abm.modules.therapy.config import target_slug
from abm.modules.vasculature.module import supply
from kernels.pk import advance_with_doses, compartment_model

__all__ = ["TherapyModule", "dose_events"]

_NOFLUX = SimpleNamespace(default="noflux", value=0.0, faces={})

#: Absolute floor of the drug and carrier field solves (nM or mg/L): far below one molecule per 20-µm voxel
#: (2e-4 nM). A short-lived drug decays toward 1e-20 nM within days of its dose, where float32 round-off stops the
#: solver's iteration; the floor lets it stop there instead of failing.
_NEGLIGIBLE = 1e-9


def dose_events(drug, body_weight_kg: float) -> list[tuple[float, float, float]]:
    """``(start_min, mg, duration_min)`` of every dose of ``drug`` (a resolved ``DrugConfig``), sorted."""
    sch = drug.schedule
    mg = sch.dose_mg if sch.dose_mg is not None else sch.dose_mg_per_kg * body_weight_kg
    return [(t, mg, sch.infusion_min) for t in sch.dose_times_min()]


def carrier_fields(params) -> list[FieldSpec]:
    """Per carrier: the carrier (mg/L), per payload the encapsulated (``_loaded``) and the released payload (nM).

    The carrier and its encapsulated payloads diffuse alike (Stokes-Einstein D, size-dependent ECM hindrance, local
    clearance); a released payload is a drug field with the payload's own transport.
    """
    out = []
    for name, c in params.carriers.items():
        tc = c.cfg.transport
        spec = dict(diffusivity_um2_per_min=c.diffusivity,
                    decay_per_min=math.log(2.0) / tc.tissue_clearance_half_life_min, initial=0.0, boundary=_NOFLUX,
                    ecm_hindered=True, solver="exact", absolute_tolerance=_NEGLIGIBLE,
                    ecm_hindrance=ecm_hindrance(c.radius_nm, params.ecm_hindrance, tc.ecm_fibre_radius_nm))
        out.append(FieldSpec(name=name, unit="mg/L", **spec))
        for p in c.payloads:
            out.append(FieldSpec(name=p.loaded, unit="nM", **spec))
            t = p.cfg.tissue
            out.append(FieldSpec(p.name, "nM", t.free_diffusivity_um2_per_min,
                                 math.log(2.0) / t.tissue_clearance_half_life_min, 0.0, _NOFLUX,
                                 ecm_hindered=t.ecm_hindered, solver=t.solver, absolute_tolerance=_NEGLIGIBLE))
    return out


def carrier_readouts(params) -> list[Readout]:
    """Readouts of every carrier and of its released payloads."""
    out = []
    for name, c in params.carriers.items():
        out += [Readout(f"plasma_{name}_mg_per_L", "mg/L", "level", f"plasma concentration of carrier {name}"),
                Readout(f"doses_{name}", "doses", "event", f"doses of {name} started in the step"),
                Readout(f"tumour_{name}_pct_id", "%", "level",
                        f"{name} in the reference tumour (free and internalised), % of the injected dose"),
                Readout(f"released_triggered_{name}", "-", "ratio",
                        f"share of the payload released in tissue by {name} where its trigger is >= 1/2")]
        for p in c.payloads:
            out += [Readout(f"plasma_{p.name}_mg_per_L", "mg/L", "level",
                            f"plasma {p.cfg.preset} released from {name}"),
                    Readout(f"tumour_{p.name}_nM", "nM", "level", f"mean {p.name} over tumour cells"),
                    Readout(f"exposure_ratio_{p.name}", "-", "ratio",
                            f"AUC of {p.name} over tumour cells / AUC of unbound {p.name} in plasma, so far")]
    return out


class _Drug:
    """Host-side PK state of one drug."""

    def __init__(self, name, cfg, body_weight_kg):
        self.name, self.cfg = name, cfg
        pk = cfg.pk
        self.model = compartment_model(pk.model, pk.clearance_L_per_day, pk.central_volume_L, pk.peripheral_volume_L,
                                       pk.intercompartmental_clearance_L_per_day, pk.absorption_per_day)
        self.doses = dose_events(cfg, body_weight_kg)
        self.bioavailability = pk.bioavailability if self.model.dosing != self.model.central else 1.0
        self.amounts = np.zeros(self.model.size)
        self.doses_given = 0
        self.nM_per_mg_per_L = 1e3 / cfg.molecular_weight_kda

    @property
    def plasma_mg_per_L(self) -> float:
        return float(self.amounts[self.model.central] / self.model.central_volume_L)

    @property
    def plasma_nM(self) -> float:
        return self.plasma_mg_per_L * self.nM_per_mg_per_L

    def advance(self, t0: float, t1: float) -> int:
        """Advance the compartments from ``t0`` to ``t1`` (min) exactly; return the doses started in between."""
        self.amounts, started = advance_with_doses(self.model, self.amounts, self.doses, t0, t1, self.bioavailability)
        self.doses_given += started
        return started


@rule("pharmacokinetics", "systemic")
def pharmacokinetics(world, params, rng, intents) -> None:
    """Advance every drug's compartments over the step (doses and infusions on their exact times)."""
    t0 = world.time_min
    for d in [*params.drugs.values(), *params.carriers.values()]:
        params.doses_this_step[d.name] = d.advance(t0, t0 + world.dt_min)
    for slug, binders in params.plasma_binders.items():
        s = sum(d.plasma_nM * d.cfg.fraction_unbound / kd for d, kd in binders)
        world.systemic[f"occupancy_{slug}_plasma"] = s / (1.0 + s)


@rule("delivery", "exchange")
def delivery(world, params, rng, intents) -> None:
    """Drug exchange between plasma and tissue at vessel voxels (permeability x surface x perfusion)."""
    for d in params.drugs.values():
        t = d.cfg.tissue
        supply(world, d.name, t.vascular_permeability_um_per_min * t.vessel_surface_per_volume_per_um,
               d.plasma_nM * d.cfg.fraction_unbound)


@rule("carrier_delivery", "exchange")
def carrier_delivery(world, params, rng, intents) -> None:
    """Nanoparticle carriers: extravasation, uptake by cells, payload release and released-payload exchange."""
    carrier_exchange(world, params)


@rule("occupancy", "signal")
def occupancy(world, params, rng, intents) -> None:
    """Competitive occupancy of every bound target: θ = Σ(C/Kd) / (1 + Σ C/Kd), one lattice per target."""
    xp = world.xp
    for slug, binders in params.tissue_binders.items():
        s = xp.zeros(world.shape, dtype=world.dtype)
        for name, kd in binders:
            s += world.fields[name].data * world.dtype.type(1.0 / kd)
        layer = world.layers[f"occupancy_{slug}"]
        xp.divide(s, s + world.dtype.type(1.0), out=layer)


@rule("treg_depletion", "behaviour", needs=("table:tcell", "layer:occupancy_ctla4"))
def treg_depletion(world, params, rng, intents) -> None:
    """Anti-CTLA-4 depletes intratumoral Tregs (Fc-mediated) at ``r θ`` (θ: CTLA-4 occupancy at the Treg)."""
    t = world.tables["tcell"]
    rows = world.xp.nonzero(t["is_treg"])[0]
    if rows.shape[0] == 0:
        return
    theta = world.layers["occupancy_ctla4"].reshape(-1).take(t["voxel"][rows]).astype(np.float64)
    rate = params.effects.ctla4.treg_depletion_per_day / 1440.0 * theta
    die = rng.random(rows.shape[0]) < probability(rate, world.dt_min, world.xp)
    intents.kill("tcell", rows[die], "depleted")


@rule("caf_depletion", "behaviour", needs=("table:caf", "layer:occupancy_fap"))
def caf_depletion(world, params, rng, intents) -> None:
    """FAP-targeting kills CAFs at ``r θ`` (θ: FAP occupancy at the CAF)."""
    c = world.tables["caf"]
    if len(c) == 0:
        return
    theta = world.layers["occupancy_fap"].reshape(-1).take(c["voxel"]).astype(np.float64)
    rate = params.effects.fap.caf_depletion_per_day / 1440.0 * theta
    die = rng.random(len(c)) < probability(rate, world.dt_min, world.xp)
    intents.kill("caf", die, "depleted")


RULES = {r.name: r for r in (pharmacokinetics, delivery, carrier_delivery, occupancy, treg_depletion, caf_depletion)}


class TherapyModule(BaseModule):
    """Every ``[therapy.<name>]`` of the config."""

    name = "therapy"
    seed_order = 4

    @classmethod
    def from_config(cls, config, namespaced: bool = True) -> TherapyModule:
        """The module with the sections of ``config`` it reads."""
        bw = config.patient.body_weight_kg
        drugs = {name: _Drug(name, d, bw) for name, d in config.therapy.items() if not isinstance(d, CarrierConfig)}
        carriers = {name: Carrier(name, d, dose_events(d, bw)) for name, d in config.therapy.items()
                    if isinstance(d, CarrierConfig)}
        payloads = {p.name: p for c in carriers.values() for p in c.payloads}
        tissue_binders: dict[str, list] = {}
        plasma_binders: dict[str, list] = {}
        for name, d in [*drugs.items(), *payloads.items()]:
            for tg in d.cfg.targets:
                slug = target_slug(tg.target)
                tissue_binders.setdefault(slug, []).append((name, tg.kd_nM))
                if slug == "ctla4":  # CTLA-4 acts in the lymph node: plasma occupancy too
                    plasma_binders.setdefault(slug, []).append((d, tg.kd_nM))
        params = Params(drugs=drugs, carriers=carriers, payloads=payloads, accounts={},
                        tissue_binders=tissue_binders, plasma_binders=plasma_binders,
                        effects=config.effects, margin_um=config.immune.phenotype.margin_um,
                        ecm_hindrance=config.immune.ecm.diffusion_hindrance, body_weight_kg=bw,
                        doses_this_step={n: 0 for n in [*drugs, *carriers]}, configs=config.therapy,
                        namespaced=namespaced)
        rules = [r for r in RULES if r != "carrier_delivery" or carriers]
        return cls(params, rules)

    def declare(self) -> Declaration:
        """One field per drug, one occupancy layer per bound target, Treg and CAF depletion, readouts."""
        p = self.params
        fields = []
        for name, d in p.drugs.items():
            t = d.cfg.tissue
            fields.append(FieldSpec(name, "nM", t.free_diffusivity_um2_per_min,
                                    math.log(2.0) / t.tissue_clearance_half_life_min, 0.0, _NOFLUX,
                                    ecm_hindered=t.ecm_hindered, solver=t.solver, absolute_tolerance=_NEGLIGIBLE))
        fields += carrier_fields(p)
        readouts = []
        for name in p.drugs:
            readouts += [Readout(f"plasma_{name}_mg_per_L", "mg/L", "level", f"plasma concentration of {name}"),
                         Readout(f"tumour_{name}_nM", "nM", "level", f"mean {name} over tumour cells"),
                         Readout(f"doses_{name}", "doses", "event", f"doses of {name} started in the step")]
        readouts += carrier_readouts(p)
        for slug in p.tissue_binders:
            readouts += [Readout(f"occupancy_{slug}_{region}", "-", "ratio", f"mean {slug} occupancy in the {region}")
                         for region in ("core", "margin", "stroma")]
        for slug in p.plasma_binders:
            readouts.append(Readout(f"occupancy_{slug}_plasma", "-", "ratio", f"{slug} occupancy in plasma"))
        return Declaration(
            fields=fields,
            layers=[LayerSpec(f"occupancy_{slug}", "-", "float", 0.0, as_field=True) for slug in p.tissue_binders],
            death_causes=[DeathCause("tcell", "depleted", 3, "treg_depleted"),
                          DeathCause("caf", "depleted", 1, "caf_depleted")],
            rules=[pharmacokinetics, delivery, *([carrier_delivery] if p.carriers else []),
                   dataclasses.replace(occupancy, writes=tuple(f"layer:occupancy_{s}" for s in p.tissue_binders)),
                   treg_depletion, caf_depletion],
            readouts=readouts + [Readout("treg_depleted", "cells", "event", "Tregs depleted by anti-CTLA-4"),
                                 Readout("caf_depleted", "cells", "event", "CAFs killed by FAP-targeting")],
        )

    def seed(self, world, rng) -> None:
        """Nothing in tissue at the start; doses follow their schedules."""
        self.params.accounts = {name: Account(world, c) for name, c in self.params.carriers.items()}

    def commit(self, world, record, intents, events: dict) -> None:
        """Doses of the step as events; carriers' internalised pool and exposure integrals."""
        for name, n in self.params.doses_this_step.items():
            events[f"doses_{name}"] = world.xp.asarray(float(n))
        if self.params.carriers:
            carrier_commit(world, self.params)

    def measure(self, world) -> dict:
        """Tumour-mean drug levels and regional occupancy (backend scalars); plasma levels are host floats."""
        xp = world.xp
        out = {}
        vox = world.tables["tumour"]["voxel"]
        n = max(int(vox.shape[0]), 1)
        for name, d in [*self.params.drugs.items(), *self.params.payloads.items()]:
            out[f"plasma_{name}_mg_per_L"] = xp.asarray(d.plasma_mg_per_L)
            out[f"tumour_{name}_nM"] = world.fields[name].data.reshape(-1).take(vox).astype(np.float64).sum() / n
        for name, c in self.params.carriers.items():
            acc = self.params.accounts[name]
            out[f"plasma_{name}_mg_per_L"] = xp.asarray(c.plasma_mg_per_L)
            out[f"tumour_{name}_pct_id"] = pct_injected_dose(world, c, acc, self.params.body_weight_kg)
            out[f"released_triggered_{name}"] = acc.released_triggered / xp.maximum(acc.released, 1e-300)
            for pl in c.payloads:
                auc_p = acc.auc_plasma[pl.name]
                out[f"exposure_ratio_{pl.name}"] = acc.auc_tumour[pl.name] / auc_p if auc_p > 0 else xp.zeros(())
        if self.params.tissue_binders:
            regions = lesion_regions(world, self.params.margin_um)
            for slug in self.params.tissue_binders:
                layer = world.layers[f"occupancy_{slug}"]
                for region, mask in zip(("core", "margin", "stroma"), regions):
                    count = xp.count_nonzero(mask)
                    out[f"occupancy_{slug}_{region}"] = layer[mask].astype(np.float64).sum() / xp.maximum(count, 1)
        for slug in self.params.plasma_binders:
            out[f"occupancy_{slug}_plasma"] = xp.asarray(world.systemic.get(f"occupancy_{slug}_plasma", 0.0))
        return out

    def state(self, world) -> dict:
        """Per drug: compartment amounts (mg), doses given, and the start times of the doses still to come."""
        out = {}
        for name, d in self.params.drugs.items():
            pending = [s for s, _, _ in d.doses if s >= world.time_min]
            out[name] = {"amounts_mg": d.amounts.copy(), "compartments": ",".join(d.model.names),
                         "doses_given": d.doses_given, "pending_dose_times_min": np.asarray(pending, np.float64)}
        for name, c in self.params.carriers.items():
            pending = [s for s, _, _ in c.doses if s >= world.time_min]
            out[name] = {"amounts_mg": c.amounts.copy(), "compartments": ",".join(c.model.names),
                         "doses_given": c.doses_given, "pending_dose_times_min": np.asarray(pending, np.float64),
                         **self.params.accounts[name].state(world)}
        return out

    def load_state(self, world, state: dict | None) -> None:
        """Restore the compartments; a drug new at a branch starts empty and may not have doses before it."""
        if not self.params.accounts:
            self.params.accounts = {name: Account(world, c) for name, c in self.params.carriers.items()}
        for name, d in [*self.params.drugs.items(), *self.params.carriers.items()]:
            own = (state or {}).get(name)
            if own is not None:
                d.amounts = np.asarray(own["amounts_mg"], dtype=np.float64).copy()
                d.doses_given = int(own["doses_given"])
                if name in self.params.accounts:
                    self.params.accounts[name].load(world, own)
                continue
            past = [s for s, _, _ in d.doses if s < world.time_min]
            if past:
                raise ConfigError([f"therapy.{name}.schedule: a dose at day {past[0] / 1440:g} lies before the "
                                   f"branch at day {world.time_min / 1440:g}; a therapy added at a branch starts at "
                                   "or after it"])
