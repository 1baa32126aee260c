"""Tests of nfpi.fpi, one file per module (tests/fpi/test_<module>.py for nfpi/fpi/<module>.py)."""
