"""The script: YAML with line numbers, the schema, the script model, keyfield grids,
variable expansion, safe expressions and the ranks of each role. Needs no MPI."""
