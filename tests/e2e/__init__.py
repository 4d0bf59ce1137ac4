"""End-to-end tests: agent, collector and VictoriaMetrics as real processes (tests/e2e/harness.py)."""
