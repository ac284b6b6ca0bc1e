"""`distx bench`: distx against raw mpi4py, mpi4py.futures and numpy (not the product)."""
