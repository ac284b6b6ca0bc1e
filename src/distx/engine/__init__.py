"""The engine: transport, the rank core, the coordinator, holders, sweeps, data, kernels
and the task catalogue."""
