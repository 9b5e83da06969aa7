"""Nanoparticle carriers: size laws, systemic state, extravasation, uptake and triggered release.

The laws (docs/THERAPIES.md section 8):

- **Diffusivity** (Stokes–Einstein): ``D = k_B T / (6 π η r)``, r = diameter/2, T = 310.15 K, η the medium
  viscosity.
- **ECM hindrance** (Ogston-type size dependence, linear in ECM like every hindered field): ``D(x) = D (1 - h E(x))``
  with ``h = 1 - (1 - h_IgG)^((r + r_f)/(r_IgG + r_f))``: the IgG value ``h_IgG`` (``immune.ecm.diffusion_hindrance``)
  at the IgG Stokes radius, more for larger particles.
- **Extravasation** at vessel voxels, one way (no back-flux into blood): ``dc/dt = (S/V) π (P_active +
  P_pore Φ(r / r_pore)) C_p`` with π the perfusion factor, Φ the Renkin hindrance of a sphere in a cylindrical pore
  and the pore radius ``r_pore = r_norm + (r_abn - r_norm) a``, ``a = 1 - π`` the VEGF-driven abnormality of the
  vessel (normalisation shrinks the pores: Chauhan 2012).
- **Uptake** by cells: a first-order sink, rate ``k_T`` where a tumour cell sits plus ``k_M`` per macrophage.
- **Release** of every payload: ``k = k_base + k_trig T(x)`` with the trigger T of the voxel (hypoxia, low pH or
  MMP activity), from the encapsulated-payload field into the payload's own drug field.
"""

from __future__ import annotations

import math

import numpy as np

from abm.modules.common import hill
from abm.modules.therapy.carrier_config import payload_field
from abm.modules.vasculature.module import supply
from kernels.lattice import box_sum
from kernels.pk import advance_with_doses, carrier_model, compartment_model

__all__ = ["BODY_TEMPERATURE_K", "IGG_STOKES_RADIUS_NM", "ecm_hindrance", "extravasation_per_min", "release_rate",
           "renkin_hindrance", "stokes_einstein_um2_per_min", "tissue_ph", "trigger"]

BOLTZMANN_J_PER_K = 1.380649e-23
#: Body temperature, K (37 °C).
BODY_TEMPERATURE_K = 310.15
#: Stokes radius of IgG, nm (~5.5 nm; the size the antibody ECM hindrance refers to, library defaults).
IGG_STOKES_RADIUS_NM = 5.5


def stokes_einstein_um2_per_min(diameter_nm: float, viscosity_mPa_s: float,
                                temperature_K: float = BODY_TEMPERATURE_K) -> float:
    """Free diffusivity of a sphere, ``k_B T / (6 π η r)``, in µm²/min (100 nm at 0.69 mPa·s: 6.6 µm²/s)."""
    r_m = diameter_nm * 0.5e-9
    d_m2_per_s = BOLTZMANN_J_PER_K * temperature_K / (6.0 * math.pi * viscosity_mPa_s * 1e-3 * r_m)
    return d_m2_per_s * 1e12 * 60.0


def ecm_hindrance(radius_nm: float, reference_hindrance: float, fibre_radius_nm: float,
                  reference_radius_nm: float = IGG_STOKES_RADIUS_NM) -> float:
    """ECM hindrance ``h`` of a particle of ``radius_nm``: ``1 - (1 - h_ref)^((r + r_f)/(r_ref + r_f))``.

    The Ogston remaining fraction ``exp(-sqrt(φ) (r + r_f)/r_f)`` with ``sqrt(φ)/r_f`` fixed by the reference
    hindrance at the reference radius (IgG), so an IgG-sized particle gets exactly the antibodies' hindrance.
    """
    remaining = (1.0 - reference_hindrance) ** ((radius_nm + fibre_radius_nm) / (reference_radius_nm
                                                                                 + fibre_radius_nm))
    return 1.0 - remaining


def renkin_hindrance(ratio, xp):
    """Renkin 1954 hindrance of a sphere in a cylindrical pore, ``λ = r_particle / r_pore``; 0 for ``λ >= 1``.

    ``Φ(λ) = (1 - λ)² (1 - 2.104 λ + 2.09 λ³ - 0.95 λ⁵)``: steric partition times hindered diffusion.
    """
    lam = xp.clip(ratio, 0.0, 1.0)
    return (1.0 - lam) ** 2 * (1.0 - 2.104 * lam + 2.09 * lam**3 - 0.95 * lam**5)


def extravasation_per_min(world, tc, radius_nm: float, vessels):
    """Exchange rate ``(S/V) π (P_active + P_pore Φ)`` of a carrier at ``vessels`` (1/min, float64)."""
    perfusion = world.factor("perfusion", vessels)
    pore_nm = tc.pore_radius_normalised_nm + (tc.pore_radius_abnormal_nm - tc.pore_radius_normalised_nm) * (
        1.0 - perfusion)
    permeability = tc.active_permeability_um_per_min + tc.pore_permeability_um_per_min * renkin_hindrance(
        radius_nm / pore_nm, world.xp)
    return tc.vessel_surface_per_volume_per_um * perfusion * permeability


def _tumour_density(world):
    """Fraction of the Moore neighbourhood (itself included) holding a tumour cell (flat, float64)."""
    tumour = world.tissue == world.code("tumour")
    return box_sum(tumour, 1).reshape(-1) / 3.0**world.ndim


def _hypoxia(world, rel):
    """``1 - Hill(pO2; K, n)``: 1 in anoxic, 0 in well-oxygenated voxels (flat, float64)."""
    o2 = world.fields["oxygen"].data.reshape(-1).astype(np.float64)
    return 1.0 - hill(o2, rel.hypoxia_half_max_mmHg, rel.hypoxia_hill, world.xp)


def tissue_ph(world, rel):
    """Extracellular pH: ``pH_normal - Δ_tumour ρ_T - Δ_hypoxia (1 - Hill(pO2))`` (flat, float64).

    ``ρ_T`` is the tumour-cell fraction of the Moore neighbourhood: glycolytic tumour cells acidify their
    surroundings, hypoxic ones more.
    """
    return rel.ph_normal - rel.ph_drop_tumour * _tumour_density(world) - rel.ph_drop_hypoxia * _hypoxia(world, rel)


def trigger(world, rel):
    """The release trigger T (0..1) of every voxel (flat, float64), or ``None`` for ``trigger = "none"``."""
    xp = world.xp
    if rel.trigger == "none":
        return None
    if rel.trigger == "hypoxia":
        return _hypoxia(world, rel)
    if rel.trigger == "ph":
        return 1.0 / (1.0 + 10.0 ** (rel.ph_steepness * (tissue_ph(world, rel) - rel.ph_half)))
    activity = _tumour_density(world)  # "mmp": tumour cells and macrophages of the Moore neighbourhood
    m = world.tables.get("macrophage")
    if m is not None and len(m) and rel.mmp_macrophage_weight > 0:
        count = xp.bincount(m["voxel"], minlength=world.size).astype(np.float64).reshape(world.shape)
        activity = activity + rel.mmp_macrophage_weight * box_sum(count, 1).reshape(-1) / 3.0**world.ndim
    return activity / (activity + rel.mmp_half_max)


def release_rate(world, rel, t=None):
    """Release rate of the payloads in every voxel, ``k_base + k_trig T`` (flat, float64, 1/min).

    ``t`` is the trigger lattice when the caller has it already (:func:`trigger`), else it is computed.
    """
    t = trigger(world, rel) if t is None else t
    base = rel.base_per_day / 1440.0
    if t is None:
        return world.xp.full(world.size, base, dtype=np.float64)
    return base + rel.triggered_per_day / 1440.0 * t


class Payload:
    """A released payload: a drug field fed by release and by its own plasma level (the carrier's state)."""

    def __init__(self, carrier: Carrier, index: int, cfg):
        self.carrier, self.index, self.cfg = carrier, index, cfg
        self.name = payload_field(carrier.name, cfg.preset)
        self.loaded = self.name + "_loaded"
        self.nM_per_mg_per_L = 1e3 / cfg.molecular_weight_kda

    @property
    def _free_central(self) -> int:
        return self.carrier.free_centrals[self.index]

    @property
    def plasma_mg_per_L(self) -> float:
        """Free (released) payload in plasma, mg/L."""
        return float(self.carrier.amounts[self._free_central] / self.carrier.free_volumes[self.index])

    @property
    def plasma_nM(self) -> float:
        """Free (released) payload in plasma, nM."""
        return self.plasma_mg_per_L * self.nM_per_mg_per_L

    @property
    def loaded_plasma_nM(self) -> float:
        """Payload still encapsulated in circulating carriers, nM of plasma."""
        c = self.carrier
        return float(c.amounts[c.loaded_centrals[self.index]] / c.model.central_volume_L) * self.nM_per_mg_per_L


class Carrier:
    """Host-side systemic state of one carrier: carrier, encapsulated and free payload amounts (mg)."""

    def __init__(self, name, cfg, doses):
        self.name, self.cfg = name, cfg
        pk = cfg.pk
        own = compartment_model(pk.model, pk.clearance_L_per_day, pk.central_volume_L, pk.peripheral_volume_L,
                                pk.intercompartmental_clearance_L_per_day)
        free = [compartment_model(p.pk.model, p.pk.clearance_L_per_day, p.pk.central_volume_L,
                                  p.pk.peripheral_volume_L, p.pk.intercompartmental_clearance_L_per_day)
                for p in cfg.payloads]
        self.model = carrier_model(own, free, [p.loading_mg_per_mg for p in cfg.payloads], cfg.release.base_per_day)
        n = own.size
        self.loaded_centrals = [n * (1 + j) + own.central for j in range(len(free))]
        starts = np.cumsum([n * (1 + len(free))] + [m.size for m in free])
        self.free_centrals = [int(s) + m.central for s, m in zip(starts, free)]
        self.free_volumes = [m.central_volume_L for m in free]
        self.doses = doses  # (start_min, mg carrier, duration_min)
        self.amounts = np.zeros(self.model.size)
        self.doses_given = 0
        self.payloads = [Payload(self, j, p) for j, p in enumerate(cfg.payloads)]
        tc = cfg.transport
        self.radius_nm = cfg.diameter_nm / 2.0
        self.diffusivity = stokes_einstein_um2_per_min(cfg.diameter_nm, tc.medium_viscosity_mPa_s)

    @property
    def plasma_mg_per_L(self) -> float:
        """Carrier in plasma, mg/L."""
        return float(self.amounts[self.model.central] / self.model.central_volume_L)

    def dosed_mg(self) -> float:
        """Carrier mass given so far, mg."""
        return float(sum(mg for _, mg, _ in self.doses[:self.doses_given]))

    def advance(self, t0: float, t1: float) -> int:
        """Advance every amount from ``t0`` to ``t1`` (min) exactly; return the doses started in between."""
        self.amounts, started = advance_with_doses(self.model, self.amounts, self.doses, t0, t1)
        self.doses_given += started
        return started


class Account:
    """Per-carrier tissue bookkeeping: internalised carriers and cumulative release and exposure (restart state)."""

    def __init__(self, world, carrier: Carrier):
        xp = world.xp
        self.internal = xp.zeros(world.size, dtype=np.float64)  # mg/L of carrier inside cells
        self.released = xp.zeros((), dtype=np.float64)  # mg/L x voxels of payload released in tissue
        self.released_triggered = xp.zeros((), dtype=np.float64)  # the part released where T >= 1/2
        self.auc_tumour = {p.name: xp.zeros((), dtype=np.float64) for p in carrier.payloads}  # nM day
        self.auc_plasma = {p.name: 0.0 for p in carrier.payloads}  # nM day, unbound
        self.uptake = None  # this step's uptake rate (1/min, flat), from the exchange to the commit

    def state(self, world) -> dict:
        """Host copies of everything :meth:`load` restores."""
        h = world.backend.to_host
        out = {"internal_mg_per_L": h(self.internal.reshape(world.shape)), "released": h(self.released),
               "released_triggered": h(self.released_triggered)}
        for name in self.auc_tumour:
            out[f"auc_tumour_{name}_nM_day"] = h(self.auc_tumour[name])
            out[f"auc_plasma_{name}_nM_day"] = np.float64(self.auc_plasma[name])
        return out

    def load(self, world, state: dict) -> None:
        """Restore from :meth:`state`."""
        xp = world.xp
        self.internal = xp.asarray(np.asarray(state["internal_mg_per_L"], dtype=np.float64).reshape(-1))
        self.released = xp.asarray(np.asarray(state["released"], dtype=np.float64))
        self.released_triggered = xp.asarray(np.asarray(state["released_triggered"], dtype=np.float64))
        for name in self.auc_tumour:
            self.auc_tumour[name] = xp.asarray(np.asarray(state[f"auc_tumour_{name}_nM_day"], dtype=np.float64))
            self.auc_plasma[name] = float(np.asarray(state[f"auc_plasma_{name}_nM_day"]))


def uptake_per_min(world, tc):
    """Uptake rate of carriers by cells (flat, float64, 1/min): ``k_T`` at tumour cells + ``k_M`` per macrophage."""
    xp = world.xp
    rate = (world.tissue == world.code("tumour")).reshape(-1) * (tc.tumour_uptake_per_day / 1440.0)
    m = world.tables.get("macrophage")
    if m is not None and len(m) and tc.macrophage_uptake_per_day > 0:
        per_voxel = xp.zeros(world.size, dtype=np.int64)  # a scatter-add: bincount is two host syncs on a GPU
        xp.add.at(per_voxel, m["voxel"], 1)
        rate = rate + per_voxel * (tc.macrophage_uptake_per_day / 1440.0)
    return rate


def carrier_exchange(world, params) -> None:
    """Extravasation of carriers, exchange of the released payloads, uptake by cells and payload release.

    Written into the fields' sinks and sources (solved implicitly with diffusion). Release uses the encapsulated
    payload at the start of the step (explicit; ``k Δt`` is ~1e-2 at the default rates).
    """
    dtype = world.dtype
    vessels = world.indices["vessel_voxels"]
    for c in params.carriers.values():
        tc, acc = c.cfg.transport, params.accounts[c.name]
        if vessels.shape[0]:
            k = extravasation_per_min(world, tc, c.radius_nm, vessels)
            world.fields[c.name].source.reshape(-1)[vessels] += (k * c.plasma_mg_per_L).astype(dtype)
            for p in c.payloads:
                world.fields[p.loaded].source.reshape(-1)[vessels] += (k * p.loaded_plasma_nM).astype(dtype)
        for p in c.payloads:
            t = p.cfg.tissue
            supply(world, p.name, t.vascular_permeability_um_per_min * t.vessel_surface_per_volume_per_um,
                   p.plasma_nM * p.cfg.fraction_unbound)
        acc.uptake = uptake_per_min(world, tc)
        uptake = acc.uptake.reshape(world.shape).astype(dtype)
        world.fields[c.name].sink += uptake
        t_on = trigger(world, c.cfg.release)
        rate = release_rate(world, c.cfg.release, t_on)
        for p in c.payloads:
            loaded = world.fields[p.loaded]
            loaded.sink += uptake + rate.reshape(world.shape).astype(dtype)
            released = rate * loaded.data.reshape(-1).astype(np.float64)  # nM/min
            world.fields[p.name].source += released.reshape(world.shape).astype(dtype)
            mass = released * (world.dt_min * p.cfg.molecular_weight_kda * 1e-3)  # mg/L released this step
            acc.released = acc.released + mass.sum()
            if t_on is not None:
                acc.released_triggered = acc.released_triggered + mass[t_on >= 0.5].sum()


def carrier_commit(world, params) -> None:
    """Internalised carriers (uptake of the step, lysosomal loss) and the exposure integrals, after the step."""
    dt = world.dt_min
    vox = world.tables["tumour"]["voxel"]
    n = max(int(vox.shape[0]), 1)
    for c in params.carriers.values():
        acc, tc = params.accounts[c.name], c.cfg.transport
        if acc.uptake is not None:
            keep = math.exp(-math.log(2.0) / tc.internal_degradation_half_life_min * dt)
            field = world.fields[c.name].data.reshape(-1).astype(np.float64)
            acc.internal = acc.internal * keep + acc.uptake * field * dt
            acc.uptake = None
        for p in c.payloads:
            mean = world.fields[p.name].data.reshape(-1).take(vox).astype(np.float64).sum() / n
            acc.auc_tumour[p.name] = acc.auc_tumour[p.name] + mean * (dt / 1440.0)
            acc.auc_plasma[p.name] += p.plasma_nM * p.cfg.fraction_unbound * dt / 1440.0


def pct_injected_dose(world, carrier: Carrier, account: Account, body_weight_kg: float):
    """%ID of the reference tumour: ``100 c̄ f_T BW / dose`` (backend scalar, %).

    ``c̄`` is the mean carrier (free and internalised, mg/L ~ mg/kg) over the lesion (live and necrotic tumour
    voxels), ``f_T`` the reference tumour mass fraction, ``BW`` the body weight (kg), ``dose`` the carrier mass
    given so far (mg); 0 before the first dose.
    """
    xp = world.xp
    dose = carrier.dosed_mg()
    lesion = ((world.tissue == world.code("tumour")) | world.layers["necrotic"]).reshape(-1)
    count = xp.count_nonzero(lesion)
    if dose <= 0:
        return xp.zeros((), dtype=np.float64)
    total = world.fields[carrier.name].data.reshape(-1).astype(np.float64) + account.internal
    mean = total[lesion].sum() / xp.maximum(count, 1)
    return mean * (100.0 * carrier.cfg.reference_tumour_mass_fraction * body_weight_kg / dose)
