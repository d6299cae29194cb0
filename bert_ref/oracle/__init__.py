"""The conformance oracle: output keys, statistics (plain and blocked), tolerances, the report, running
the oracle with its floors, reading candidates, the cache of reference runs, and the pytest helper."""
