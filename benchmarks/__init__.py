"""eetjit's benchmark harness (source tree only): `python -m benchmarks.run SUITE` or `eetjit bench SUITE`.

Each suite runs eetjit side by side with its peers in one process, on the same weights and inputs, and
writes benchmarks/out/SUITE.json (git-ignored) and benchmarks/out/SUITE.png. See benchmarks/README.md.
"""
