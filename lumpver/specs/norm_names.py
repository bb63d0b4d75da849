"""The names of the norms a difference ``f(x) - g(x)`` is measured in (CONTRACT.md ``--norm``).

Kept apart from :mod:`lumpver.specs.norms` (the arithmetic) so that building the command line
parser imports no numpy.
"""

#: every norm a tolerance may use; ``top1`` is argmax disagreement
NORMS = ("linf", "l1", "l2", "top1")
#: the vector norms (what ``bound`` can bound)
VECTOR_NORMS = ("linf", "l1", "l2")
