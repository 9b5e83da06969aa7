"""Many runs from one description.

Parameter sweeps (:mod:`abm.cohort.sweep`, :mod:`abm.cohort.batch`), virtual trials, and the executors that run
them (:mod:`abm.cohort.executors`: serial, a local process pool, Dask, SLURM).
"""
