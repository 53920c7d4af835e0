"""Benchmarks behind `synpref bench`; each module registers its own subcommand."""
