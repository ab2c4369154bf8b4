"""The tuneflow domain: settings, contracts, naming, dataset preparation, TTLs, flow records and
the ML backend interface. Nothing heavy is imported at module top (the Functions worker imports
every function at cold start)."""
