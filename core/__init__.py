"""The shared core: the data types that flow through the product and the general machinery every package uses.

`core` imports nothing else from the project (only the standard library and third-party packages); probes,
agent, collector, alerts and the command line build on it (docs/architecture.md).
"""
