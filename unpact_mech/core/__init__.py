"""The bottom layer: one error type (``errors``), registries, logging, atomic file writes, option parsing, memory
metering, statistics (Wilson, Newcombe, bootstrap) and display helpers. It imports nothing else of the toolkit."""
