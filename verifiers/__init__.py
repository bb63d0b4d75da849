"""Back-ends that check a reduced network against the original on a declared input set.

All back-ends share one interface (:class:`lumpver.verifiers.base.Backend`) and one verdict type
(:class:`lumpver.verifiers.base.Verdict`); see DESIGN.md §5. Solver packages (z3, cvxpy, maraboupy)
are imported inside the back-end modules only, so importing this package is cheap.
"""
from lumpver.verifiers.base import Backend, Query, Verdict, get_backend

__all__ = ["Backend", "Query", "Verdict", "get_backend"]
