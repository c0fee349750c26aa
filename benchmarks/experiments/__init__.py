"""Proposed changes to code outside ``benchmarks/``, tried without editing it.

A module here patches the package in the measured child when named in ``ALIANZA_BENCH_PRELOAD``
(see ``benchmarks.child``), so a proposal's "after" numbers come from the same harness, data and
emulator as the "before" ones. Nothing here is imported by the package or the suite.
"""
