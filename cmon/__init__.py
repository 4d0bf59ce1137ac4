"""The `cmon` command line and the service installers: the only package that sees every other one.

`cmon.cli.main` is the console script; `agent_commands`, `collector_commands` and `service/` add their
subcommands. agent/ and collector/ never import this package (docs/architecture.md).
"""
