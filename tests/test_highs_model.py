"""lumpver/bounds/highs_model.py: the one-thread HiGHS model still bounds when another HiGHS in the same
process (a user's, a test's MILP) started the shared thread scheduler with more threads (HiGHS 1.16 then
refuses to run a one-thread model: every LP gave no bound). Reference: scipy's linprog."""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from lumpver.bounds.highs_model import SoundLp


def test_sound_lp_bounds_after_another_highs_started_more_threads():
    import highspy

    other = highspy.Highs()
    other.setOptionValue("output_flag", False)
    other.setOptionValue("threads", 2)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = 1, 0
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = np.array([1.0]), np.array([0.0]), np.array([1.0])
    other.passModel(lp)
    other.run()  # the scheduler now has 2 threads
    c = np.array([1.0, 2.0, -0.5])
    A = sparse.csr_matrix(np.array([[-1.0, -1.0, 0.0], [0.0, 1.0, 1.0]]))
    a = np.array([-1.0, 1.5])
    E, e = sparse.csr_matrix((0, 3)), np.zeros(0)
    lb, ub = np.zeros(3), np.ones(3)
    model = SoundLp(E, e, A, a, lb, ub)
    model.set_cost(c)
    got = model.solve().value
    ref = linprog(c, A_ub=A.toarray(), b_ub=a, bounds=list(zip(lb, ub)), method="highs").fun
    assert got is not None and ref - 1e-7 <= got <= ref + 1e-12, (got, ref)
