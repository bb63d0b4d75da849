"""VNN-LIB reader for the subset public verification benchmarks use (DESIGN.md §3 input sets, §5).

Supported: ``declare-const X_i Real`` / ``Y_j Real``; ``assert``; ``and``; ``or``; the atoms
``(<= a b)`` and ``(>= a b)`` where ``a`` and ``b`` are each a declared variable or a constant
(decimal or scientific notation, or the SMT-LIB negation ``(- c)``), so constants may stand on
either side and two variables of the same kind may be compared (``(<= Y_0 Y_1)``); comments
(``;`` to end of line); statements over several lines. The harmless SMT-LIB commands
``set-logic``, ``set-info``, ``set-option``, ``check-sat``, ``get-model`` and ``exit`` are ignored.

Documented choices
------------------
* Strict ``<`` / ``>`` are read as ``<=`` / ``>=`` (their closure) and counted in
  :attr:`VnnlibSpec.strict_relaxed`. Input and unsafe sets only grow, so a proof that no input
  reaches the unsafe set stays sound; a counterexample found exactly on such a boundary must be
  checked against the strict atom by the caller (``verify`` replays counterexamples anyway).
* An atom comparing an input with an output (``(<= X_0 Y_0)``) is not in the subset: error.
* Semantics (VNN-LIB convention): the conjunction of all assertions describes the *unsafe* set.
  It is brought into the form ``OR_k (x in R_k and y in U_k)`` where each ``U_k`` is itself a
  disjunction of polytopes; disjuncts with the same input part are grouped into one
  :class:`Case`, so "input box AND (or over output conjunctions)" gives one case with several
  output disjuncts and ``(or (and X.. Y..) (and X.. Y..))`` gives one case per input region.
  Assertions are combined by factors (input-only, output-only, mixed), never by expanding the
  whole formula, and the expansion is capped at :data:`MAX_DISJUNCTS`.
* A case whose input region is empty is dropped (it adds nothing to a union); if every case is
  empty the file is rejected ("empty input set").

Implementation: two paths with one semantics. :mod:`lumpver.specs.vnnlib_fast` handles the shapes
public benchmarks use (declarations, ``(assert atom)``, ``(assert (and ...))``, ``(assert (or
(and ...) ...))``, comments and line breaks anywhere) in bulk: a numpy tokenizer over the bytes,
vectorised recognition of atoms and variables, one ``float`` per constant. Anything else, and every
malformed file, goes to the exact scanner (:mod:`lumpver.specs.vnnlib_parser`), which gives the
result or the precise message; the types both share are in :mod:`lumpver.specs.vnnlib_ast`.
The exact scanner: one compiled regular expression scans the whole text (no recursion); atoms
and ``(assert atom)`` statements are single tokens, and single-variable input bounds go straight
into per-variable bound tables. Both feed the same ``build`` step; line and column are computed
only when an error is reported.
"""
from __future__ import annotations

import gzip
import os

from lumpver.errors import InputError
from lumpver.specs.vnnlib_ast import Case, VnnlibSpec
from lumpver.specs.vnnlib_fast import fast_parse
from lumpver.specs.vnnlib_parser import Parser

__all__ = ["Case", "VnnlibSpec", "check_dims", "parse_vnnlib", "read_vnnlib"]


def read_vnnlib(path: str | os.PathLike, n_inputs: int | None = None, n_outputs: int | None = None) -> VnnlibSpec:
    """Parse a ``.vnnlib`` (or gzip-compressed ``.vnnlib.gz``) file; check its dimensions against a model's when given.

    Raises :class:`InputError` (``file:line:col: what was expected``) on malformed input.
    """
    name = str(path)
    try:
        opener = gzip.open if name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", name) from None
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read: {getattr(e, 'strerror', None) or e}", name) from None
    spec = parse_vnnlib(text, name)
    check_dims(spec, n_inputs, n_outputs)
    return spec


def check_dims(spec: VnnlibSpec, n_inputs: int | None, n_outputs: int | None) -> None:
    """InputError naming the file when the declared sizes differ from the model's."""
    if n_inputs is not None and spec.n_inputs != n_inputs:
        raise InputError(f"declares {spec.n_inputs} inputs X_0..X_{spec.n_inputs - 1}, the model has {n_inputs}", spec.path)
    if n_outputs is not None and spec.n_outputs == 0:
        raise InputError("declares no output variable Y_0: it is an input set, not a property "
                         "(add (declare-const Y_0 Real) ... and the unsafe output constraints)", spec.path)
    if n_outputs is not None and spec.n_outputs != n_outputs:
        raise InputError(f"declares {spec.n_outputs} outputs Y_0..Y_{spec.n_outputs - 1}, the model has {n_outputs}", spec.path)


def parse_vnnlib(text: str, path: str = "<string>", exact: bool = False) -> VnnlibSpec:
    """Parse VNN-LIB text (see the module docstring for the subset and the semantics).

    Tries the bulk fast path (:mod:`lumpver.specs.vnnlib_fast`) first; anything it does not handle,
    and every malformed file, goes through the exact scanner, which gives the same result and the
    precise ``file:line:col`` message. ``exact=True`` uses the exact scanner only (tests).
    """
    if not exact:
        spec = fast_parse(text, path)
        if spec is not None:
            return spec
    return Parser(text, path).parse()
