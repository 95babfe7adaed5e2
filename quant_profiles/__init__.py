"""Built-in quantization profiles (TOML data); shipped in the wheel as tlite_edge.quant_profiles."""
