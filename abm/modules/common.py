"""Small laws and geometry shared by the model modules."""

from __future__ import annotations

from abm.engine.module import FieldSpec

__all__ = ["hill", "initial_region", "probability", "ramp", "solute_spec"]


def hill(x, half_max, n, xp):
    """Hill activation ``x^n / (x^n + K^n)`` for ``x >= 0`` (0 at 0, 1/2 at ``K``)."""
    x = xp.maximum(x, 0.0)
    xn = x**n
    return xn / (xn + float(half_max) ** n)


def probability(rate_per_min, dt_min, xp):
    """Probability of at least one event in ``dt_min`` at ``rate_per_min``: ``1 - exp(-rate dt)``."""
    return 1.0 - xp.exp(-rate_per_min * dt_min)


def ramp(x, x0, x1, xp):
    """Linear ramp from 0 at ``x0`` to 1 at ``x1`` (either direction), clipped to [0, 1]."""
    return xp.clip((x - x0) / (x1 - x0), 0.0, 1.0)


def initial_region(world, initial_tumour):
    """The seeded nodule: which voxels lie inside it and each voxel's distance from its centre.

    Parameters
    ----------
    world : abm.engine.World
    initial_tumour : InitialTumourConfig
        ``radius_um`` and ``center_um`` (default the lattice centre).

    Returns
    -------
    inside : bool array, shape ``(size,)``
    distance_um : float64 array, shape ``(size,)``
    """
    xp = world.xp
    centre = initial_tumour.center_um or [n * world.spacing_um / 2 for n in world.shape]
    r2 = sum((c - c0) ** 2 for c, c0 in zip(world.voxel_centres_um(), centre))
    return (r2 <= initial_tumour.radius_um**2).reshape(-1), xp.sqrt(r2).reshape(-1)


def solute_spec(name: str, section) -> FieldSpec:
    """The :class:`FieldSpec` of a solute field from its ``[fields.<name>]`` section (``abm.schema.SoluteConfig``)."""
    return FieldSpec(name, section.unit, section.diffusivity_um2_per_min, section.decay_per_min, section.initial,
                     section.boundary, section.substeps, ecm_hindered=section.large_molecule, solver=section.solver,
                     tolerance=section.tolerance)
