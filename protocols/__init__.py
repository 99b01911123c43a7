"""The treatment-protocol domain: models, versioning rules, terminology and the curated catalog.

Nothing in this package imports Flask: services take and return plain Python values and own their
transaction boundaries, so the CLI, the HTTP API, tests and benchmarks all share one code path.
"""
