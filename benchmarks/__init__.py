"""Benchmarks of Alianza Jobs against a faithful rendition of the TypeScript package's code (issue #8).

``python -m benchmarks`` (``make bench``) runs every workload against the Stream and Resend
emulators served on a loopback socket, on SQLite and on Postgres, alternating our jobs with the
baseline on identical data, and writes ``benchmarks/results/latest.json`` and ``latest.md``.
``--smoke`` runs tiny sizes once (CI keeps the code from rotting; no timing assertions).
"""
