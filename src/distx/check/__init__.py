"""Validation that needs no MPI: every check `distx validate` and each run make before
anything is written (schema beyond the text, kernels, data, ranks, coordination)."""
