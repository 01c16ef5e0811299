"""Lookalike's benchmarks: ``python -m bench.NAME`` runs one, ``python -m bench --quick`` runs them all.

:mod:`bench.registry` lists them; :mod:`bench.common` is the harness they share and :mod:`bench.datasets` the data
they use. ``docs/benchmarks.md`` says how to add one.
"""
