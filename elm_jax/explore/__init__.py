"""Which per-layer allocation is best for a budget: schedule families, exact costs, matched-cost
solving, sweeps and the analysis of their runs (arithmetic without jax; training via ``runner``)."""
