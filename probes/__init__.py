"""The probe library: one module per probe, each returning a `Measurement` and never raising."""

from .measurement import RESULT_CODES, RESULTS, Measurement

__all__ = ["Measurement", "RESULTS", "RESULT_CODES"]
