"""OpenBLAS thread control for the batched bound loops (DESIGN.md §11).

The batched bounds (:mod:`lumpver.bounds.batched`, :mod:`lumpver.bounds.diff_batched`) are small
matrix products and elementwise passes, where a second BLAS thread costs more than it gives on a
shared machine: 1_1 prop_3 in ``bab``, paired runs on the loaded machine: CPU 3.8-4.0 s with one
thread vs 10.9 s with two, wall 19-24 s vs 37-44 s; mnist-net_256x2: CPU 0.9-1.0 s vs 1.4-2.7 s;
``bab_diff`` on 48 ACAS Xu leaf boxes: 0.51 s vs 1.73 s. A forked worker inherits numpy's pool of
one thread per core, so N workers would oversubscribe the cores.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional


def _openblas() -> list:
    """``(set, get)`` thread-count functions of every OpenBLAS loaded in this process (best effort:
    empty when none is found)."""
    import ctypes

    try:
        libs = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()}
    except OSError:
        return []
    names = [(f"{p}set_num_threads{x}", f"{p}get_num_threads{x}") for x in ("64_", "") for p in ("scipy_openblas_", "openblas_")]
    out = []
    for path in libs:
        lib = ctypes.CDLL(path)
        found = [(getattr(lib, s), getattr(lib, g)) for s, g in names if hasattr(lib, s) and hasattr(lib, g)]
        out.extend(found[:1])
    return out


def one_blas_thread() -> None:
    """One OpenBLAS thread from now on (a forked worker's initializer)."""
    for set_fn, _ in _openblas():
        set_fn(1)


@contextmanager
def blas_single_thread():
    """One OpenBLAS thread inside the block, the previous counts restored after."""
    fns = _openblas()
    before = [get_fn() for _, get_fn in fns]
    for set_fn, _ in fns:
        set_fn(1)
    try:
        yield
    finally:
        for (set_fn, _), n in zip(fns, before):
            set_fn(n)


@contextmanager
def fork_pool(workers: int, initializer: Optional[Callable[..., None]] = None, initargs: tuple = ()):
    """A pool of ``workers`` forked processes with one OpenBLAS thread each and SIGINT ignored (the parent
    handles Ctrl-C), ``initializer(*initargs)`` run in each (fork: the arguments are inherited, not pickled);
    terminated when the block ends, by an exception or Ctrl-C too (no orphan workers). DESIGN.md §11."""
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init,
                                                    initargs=(initializer, initargs))
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def _worker_init(initializer: Optional[Callable[..., None]], initargs: tuple) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    one_blas_thread()
    if initializer is not None:
        initializer(*initargs)
