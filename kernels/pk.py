"""Linear compartment pharmacokinetics advanced with the exact propagator.

A compartment model is ``dx/dt = A x + b u(t)``: ``x`` the drug amounts (mg) in the compartments, ``A`` the
rate matrix (1/day), ``u`` an infusion rate (mg/day) entering the compartment ``b`` points at. Over an interval
in which ``u`` is constant the solution is exact:

    ``x(t + h) = e^{A h} x(t) + (∫_0^h e^{A s} ds) b u``,

both terms read off one matrix exponential of the augmented matrix ``[[A, b], [0, 0]] h`` (Van Loan), so plasma
levels agree with the analytic curves at any step length. Bolus doses are jumps of ``x`` applied between
intervals. Models:

``one_compartment``
    central only: elimination ``CL/V1``.
``two_compartment``
    central and peripheral: elimination ``CL/V1``, distribution ``Q/V1`` out and ``Q/V2`` back.

Either may have a depot (first-order absorption ``ka``, oral and subcutaneous routes) in front of the central
compartment. These are host-side functions on tiny arrays; no GPU is involved.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm

__all__ = ["CompartmentModel", "advance_with_doses", "carrier_model", "compartment_model", "propagate"]


class CompartmentModel:
    """Rate matrix and layout of a linear compartment model.

    Attributes
    ----------
    matrix : float64 array, shape ``(n, n)``
        Rate matrix ``A`` (1/day).
    names : tuple of str
        Compartment names in state order (``depot``, ``central``, ``peripheral`` as present).
    central : int
        Index of the central compartment.
    dosing : int
        Compartment bolus doses and infusions enter (the depot where there is one).
    dose_vector : float64 array, shape ``(n,)``
        Amount each compartment receives per mg dosed: 1 at ``dosing`` and 0 elsewhere, unless a carrier model
        (:func:`carrier_model`) spreads a dose over the carrier and its encapsulated payloads.
    central_volume_L : float
        Volume of the central compartment (L): plasma concentration (mg/L) = amount / volume.
    """

    def __init__(self, matrix, names, central_volume_L, dose_vector=None):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.names = tuple(names)
        self.central = self.names.index("central")
        self.dosing = 0 if self.names[0] == "depot" else self.central
        if dose_vector is None:
            dose_vector = np.zeros(len(self.names))
            dose_vector[self.dosing] = 1.0
        self.dose_vector = np.asarray(dose_vector, dtype=np.float64)
        self.central_volume_L = float(central_volume_L)
        self._cache: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def size(self) -> int:
        """Number of compartments."""
        return len(self.names)

    def propagators(self, h_day: float) -> tuple[np.ndarray, np.ndarray]:
        """``(e^{A h}, ∫_0^h e^{A s} ds b)`` for an interval of ``h_day`` days (cached per length)."""
        key = float(h_day)
        hit = self._cache.get(key)
        if hit is None:
            n = self.size
            aug = np.zeros((n + 1, n + 1))
            aug[:n, :n] = self.matrix
            aug[:n, n] = self.dose_vector
            e = expm(aug * key)
            hit = (e[:n, :n], e[:n, n])
            if len(self._cache) < 64:
                self._cache[key] = hit
        return hit


def compartment_model(model: str, clearance_L_per_day: float, central_volume_L: float,
                      peripheral_volume_L: float | None = None,
                      intercompartmental_clearance_L_per_day: float | None = None,
                      absorption_per_day: float | None = None) -> CompartmentModel:
    """Build the rate matrix of a one- or two-compartment model, with a depot when ``absorption_per_day`` > 0.

    Parameters
    ----------
    model : {"one_compartment", "two_compartment"}
    clearance_L_per_day, central_volume_L : float
        Elimination clearance (L/day) and central volume (L).
    peripheral_volume_L, intercompartmental_clearance_L_per_day : float, optional
        Peripheral volume (L) and distribution clearance (L/day); two-compartment only.
    absorption_per_day : float, optional
        First-order absorption rate from the depot (1/day); none or 0 for intravenous dosing.

    Returns
    -------
    CompartmentModel
    """
    if clearance_L_per_day < 0 or central_volume_L <= 0:
        raise ValueError(f"clearance must be >= 0 and the central volume > 0, got {clearance_L_per_day} and "
                         f"{central_volume_L}")
    names = ["central"]
    if model == "two_compartment":
        if not peripheral_volume_L or peripheral_volume_L <= 0 or intercompartmental_clearance_L_per_day is None \
                or intercompartmental_clearance_L_per_day < 0:
            raise ValueError("a two-compartment model needs peripheral_volume_L > 0 and "
                             "intercompartmental_clearance_L_per_day >= 0")
        names.append("peripheral")
    elif model != "one_compartment":
        raise ValueError(f"unknown PK model '{model}', expected one_compartment or two_compartment")
    depot = bool(absorption_per_day and absorption_per_day > 0)
    if depot:
        names.insert(0, "depot")
    n = len(names)
    a = np.zeros((n, n))
    c = names.index("central")
    a[c, c] -= clearance_L_per_day / central_volume_L
    if model == "two_compartment":
        p = names.index("peripheral")
        q = intercompartmental_clearance_L_per_day
        a[c, c] -= q / central_volume_L
        a[p, c] += q / central_volume_L
        a[p, p] -= q / peripheral_volume_L
        a[c, p] += q / peripheral_volume_L
    if depot:
        a[0, 0] -= absorption_per_day
        a[c, 0] += absorption_per_day
    return CompartmentModel(a, names, central_volume_L)


def carrier_model(carrier: CompartmentModel, payloads: list[CompartmentModel], loadings, release_per_day: float
                  ) -> CompartmentModel:
    """One linear system for a drug carrier, its encapsulated payloads and the payloads released from it.

    State, in order: the carrier's compartments (mg carrier), then per payload ``j`` the payload still encapsulated
    in the carrier's compartments (mg, the carrier's layout), then per payload its free compartments (mg, its own
    model). Encapsulated payload moves with the carrier (the carrier's rate matrix) and leaks at
    ``release_per_day`` into the central compartment of its free model, whose own matrix then applies. A dose of
    1 mg of carrier puts 1 mg into the carrier's dosing compartment and ``loadings[j]`` mg of payload ``j`` into
    the same compartment of its encapsulated block.

    Parameters
    ----------
    carrier : CompartmentModel
        The carrier's model (no depot: carriers are given intravenously).
    payloads : list of CompartmentModel
        Each payload's free model (no depot: released payload is already systemic).
    loadings : sequence of float
        Payload per carrier, mg/mg.
    release_per_day : float
        First-order release of encapsulated payload in the circulation, 1/day.

    Returns
    -------
    CompartmentModel
        ``central`` is the carrier's central compartment; ``central_volume_L`` the carrier's.
    """
    nc = carrier.size
    sizes = [nc] * len(payloads) + [p.size for p in payloads]
    n = nc + sum(sizes)
    a = np.zeros((n, n))
    a[:nc, :nc] = carrier.matrix
    names = list(carrier.names)
    dose = np.zeros(n)
    dose[carrier.dosing] = 1.0
    free_start = nc * (1 + len(payloads))
    offset = free_start
    for j, (p, load) in enumerate(zip(payloads, loadings)):
        e = nc * (1 + j)
        a[e:e + nc, e:e + nc] = carrier.matrix - release_per_day * np.eye(nc)
        a[offset:offset + p.size, offset:offset + p.size] = p.matrix
        a[offset + p.central, e:e + nc] += release_per_day
        dose[e + carrier.dosing] = float(load)
        names += [f"payload{j + 1}_loaded_{c}" for c in carrier.names]
        offset += p.size
    for j, p in enumerate(payloads):
        names += [f"payload{j + 1}_free_{c}" for c in p.names]
    return CompartmentModel(a, names, carrier.central_volume_L, dose)


def propagate(model: CompartmentModel, amounts, h_day: float, infusion_mg_per_day: float = 0.0) -> np.ndarray:
    """Amounts (mg) after ``h_day`` days from ``amounts``, with a constant infusion into the dosing compartment.

    Exact for any ``h_day`` (see the module docstring).
    """
    if h_day < 0:
        raise ValueError(f"cannot propagate by a negative interval ({h_day} day)")
    if h_day == 0:
        return np.asarray(amounts, dtype=np.float64).copy()
    e, g = model.propagators(h_day)
    return e @ np.asarray(amounts, dtype=np.float64) + g * infusion_mg_per_day


def advance_with_doses(model: CompartmentModel, amounts, doses, t0_min: float, t1_min: float,
                       bioavailability: float = 1.0) -> tuple[np.ndarray, int]:
    """Advance ``amounts`` (mg) from ``t0_min`` to ``t1_min`` exactly, with the doses that fall in between.

    ``doses`` are ``(start_min, mg, duration_min)``; a bolus (duration 0) adds ``mg x F`` times the model's dose
    vector at its start, an infusion adds ``mg x F / duration`` per unit time while it runs. The interval is cut at
    every dose start and infusion end inside it and each piece propagated exactly.

    Returns
    -------
    amounts : float64 array
        Amounts at ``t1_min``.
    started : int
        Doses whose start lies in ``[t0_min, t1_min)``.
    """
    starts = [(s, mg, d) for s, mg, d in doses if t0_min <= s < t1_min]
    cuts = {t0_min, t1_min}
    for s, _, d in doses:
        for edge in (s, s + d):
            if t0_min < edge < t1_min:
                cuts.add(edge)
    points = sorted(cuts)
    x = np.asarray(amounts, dtype=np.float64)
    for a, b in zip(points[:-1], points[1:]):
        for s, mg, d in starts:
            if s == a and d == 0:
                x = x + (mg * bioavailability) * model.dose_vector
        rate = sum(mg / d * 1440.0 * bioavailability for s, mg, d in doses if d > 0 and s <= a < s + d)
        x = propagate(model, x, (b - a) / 1440.0, rate)
    return x, len(starts)
