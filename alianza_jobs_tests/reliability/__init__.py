"""The reliability and security suite (issue #9).

The promise it proves: every queued item ends in exactly one correct state, no email is delivered
twice, no secret leaks, and every bad input gets a clear error. Each test records what it tried
(fault, runs, items, lost, duplicated) through the ``outcome`` fixture; the session writes them to
``test-artifacts/reliability/results.json`` and ``python -m alianza_jobs_tests.reliability.summary`` renders the table that
``docs/reliability.md`` carries.
"""
