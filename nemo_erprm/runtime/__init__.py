"""Runtime helpers: the explicit CPU backend and parallel-state initialisation."""
