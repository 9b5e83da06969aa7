"""Small laws and geometry shared by the model modules."""

from __future__ import annotations

from abm.engine.module import FieldSpec
from kernels.lattice import box_sum

__all__ = ["blocked", "hill", "immunogenic_antigen", "initial_region", "innate_agonism",
           "innate_chemokine_factor", "lesion_regions", "probability", "ramp", "region_sizes", "solute_spec"]


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


def blocked(world, slug: str, voxels):
    """Occupancy (0..1, float64) of target ``slug`` at ``voxels``, or ``None`` when no drug binds it.

    The one way biological rules read a therapy: each mechanism multiplies its drive by ``1 - occupancy`` (or uses
    it in its documented law) at one fixed point (docs/THERAPIES.md). ``None`` lets a run without the target skip
    the work.
    """
    layer = world.layers.get(f"occupancy_{slug}")
    if layer is None:
        return None
    return layer.reshape(-1).take(voxels).astype("float64")


def innate_agonism(world, innate, voxels) -> list:
    """``(strengths, θ)`` of every innate-immune agonist target bound in this run, θ its occupancy at ``voxels``.

    The one mechanism of STING, TLR7/8 and any further agonist target: ``innate`` is ``effects.innate``, one table of
    strengths per target slug (its fields name the targets); a target no drug binds is left out, so a run without
    agonists gets an empty list and skips the work. Each read point composes the strengths its own way
    (docs/THERAPIES.md, 2.4): macrophage repolarisation, chemokine secretion, priming.
    """
    out = []
    for slug in type(innate).model_fields:
        theta = blocked(world, slug, voxels)
        if theta is not None:
            out.append((getattr(innate, slug), theta))
    return out


def innate_chemokine_factor(world, innate, voxels):
    """Chemokine secretion factor ``1 + Σ b θ`` over the bound innate agonists at ``voxels``, or ``None`` without any.

    Type-I interferon and NF-κB signalling induce CXCL9/10-like chemokines in tumour cells and macrophages; ``b`` is
    each target's ``chemokine_boost``.
    """
    terms = innate_agonism(world, innate, voxels)
    if not terms:
        return None
    return 1.0 + sum(s.chemokine_boost * theta for s, theta in terms)


def immunogenic_antigen(world, dead):
    """Extra antigen of the tumour cells that died an immunogenic death this step, or ``None`` when no cause is one.

    ``A_ICD = Σ q_i s(c_i)`` over the dead tumour cells, with ``q_i`` a cell's antigenicity and ``s(c_i)`` the
    ``immunogenicity`` of the cause it died of (``DeathCause``; chemotherapy and radiation, docs/THERAPIES.md).

    Parameters
    ----------
    world : abm.engine.World
    dead : (codes, columns) or None
        ``record.dead["tumour"]`` of the commit.

    Returns
    -------
    float64 backend scalar, or None
    """
    strengths = world.death_immunogenicity.get("tumour")
    if not strengths:
        return None
    xp = world.xp
    if dead is None:
        return xp.zeros((), dtype="float64")
    codes, columns = dead
    weight = xp.zeros(codes.shape[0], dtype="float64")
    for code, s in strengths.items():
        weight += (codes == code) * s
    return (columns["antigenicity"].astype("float64") * weight).sum()


def lesion_regions(world, margin_um: float):
    """Masks of tumour core, invasive margin and stroma (bool, lattice shape).

    The lesion is the live plus necrotic tumour voxels. The margin is the band of width ``margin_um`` centred on
    the lesion edge (Chebyshev distance, via box dilation and erosion); the core is the lesion inside that band
    (the whole lesion when the band swallows it); the stroma is everything else. Computed once per step however
    many modules read it.
    """
    return world.memo(("lesion_regions", float(margin_um)), lambda: _lesion_regions(world, margin_um))


def _lesion_regions(world, margin_um: float):
    lesion = world.tissue == world.code("tumour")
    lesion |= world.layers["necrotic"]
    half = int(round(margin_um / 2 / world.spacing_um))
    window = (2 * half + 1) ** world.ndim
    count = box_sum(lesion, half)
    dilated = count > 0
    # Erosion: every voxel of the window lies in the lesion (windows clipped at the lattice edge count as out).
    eroded = count >= window - 0.5
    core = world.xp.where(eroded.any(), eroded, lesion)  # no branch on the device's answer (a host sync)
    return core, dilated & ~core, ~dilated


def region_sizes(world, margin_um: float) -> tuple[int, int, int]:
    """Voxels in the core, margin and stroma of :func:`lesion_regions`, read on the host in one copy (memoised)."""
    def read():
        xp = world.xp
        counts = xp.stack([xp.count_nonzero(r) for r in lesion_regions(world, margin_um)])
        return tuple(int(n) for n in world.backend.to_host(counts))

    return world.memo(("region_sizes", float(margin_um)), read)
