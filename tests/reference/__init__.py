"""Frozen verbatim copies of the two bound engines before the merge (issue 11), kept as
references for tests/test_bound_engine.py. Only import paths were rewritten."""
