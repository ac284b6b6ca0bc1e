"""distx: distributed experiments on MPI, described in one YAML script, results in one HDF5 file."""

__version__ = "0.1.0"
