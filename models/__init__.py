"""Known models (TOML data, one file each); shipped in the wheel as tlite_edge.models."""
