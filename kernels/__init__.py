"""Pure array kernels for tme-abm: diffusion, lattice neighbourhoods, conflict resolution, Philox random bits.

Nothing in this package knows about the model. Every function takes arrays and scalars and returns arrays (or
fills an ``out=`` buffer); the array namespace (NumPy or CuPy) is taken from the arrays themselves, or, where no
array goes in (the random bits of :mod:`kernels.philox`), is passed as ``xp``.
"""

from kernels._xp import array_namespace

__all__ = ["array_namespace"]
