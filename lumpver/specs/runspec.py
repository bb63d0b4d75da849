"""lumpver spec files (TOML): one file declaring a whole run (CONTRACT.md ``lumpver run``).

Schema (every key is checked; unknown keys are errors, to catch typos)::

    description = "..."                 # optional
    model = "net.onnx"                  # required; relative to the spec file
    [input_set]                         # optional (needed by on-set / approx / certified prune, quantize)
    type = "box"        lower, upper    # arrays, or scalars broadcast to `dim` (or to the model's inputs)
    type = "linf_ball"  center, radius  # center: array or a path to a .npy; optional clip = [lo, hi]
    type = "polytope"   A, b            # A x <= b; optional lower/upper: a bounding box (DESIGN.md §3)
    type = "vnnlib"     path            # the input regions of a VNN-LIB file (a union)
    [tolerance]         norm = linf|l1|l2|top1, epsilon >= 0   (DESIGN.md §4)
    [[reductions]]      method = exact|on-set|approx|prune|quantize  + method options
    [[backends]]        name = interval|smt|sdp|falsify|marabou, timeout (seconds) (DESIGN.md §5)
    [output]            dir (relative to the spec file), reports = subset of ["md", "html", "json"]

Messages name the file and the TOML key path, tables of arrays counted from 1 in file order:
``demo.toml: [[reductions]][1].bits: expected 4 or 8, got 3``; TOML syntax errors carry the
line and column tomllib reports: ``demo.toml:3:9: ...``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lumpver.errors import InputError
from lumpver.specs.inputset import Box, InputSet, Polytope
from lumpver.specs.norms import NORMS
from lumpver.specs.vnnlib import read_vnnlib

METHODS = ("exact", "on-set", "approx", "prune", "quantize")
PRUNE_METHODS = ("magnitude", "coreset", "confident")
BACKENDS = ("interval", "smt", "sdp", "falsify", "marabou")
REPORTS = ("md", "html", "json")
INPUT_SET_TYPES = ("box", "linf_ball", "polytope", "vnnlib")

#: Options each reduction method accepts (besides ``method``).
METHOD_OPTIONS = {
    "exact": ("tolerance",),
    "on-set": ("tolerance",),
    "approx": ("tolerance",),
    "prune": ("prune_method", "keep", "calibration", "alpha", "delta", "granularity"),
    "quantize": ("bits", "per_channel"),
}


@dataclass
class InputSetSpec:
    """The ``[input_set]`` table, validated; :meth:`build` makes the :class:`InputSet`."""

    type: str
    lower: np.ndarray | None = None  # box / polytope bounding box (None: scalars pending `dim`)
    upper: np.ndarray | None = None
    scalar_bounds: tuple[float, float] | None = None  # box given as scalars without `dim`
    center: np.ndarray | None = None
    radius: float | None = None
    clip: tuple[float, float] | None = None
    A: np.ndarray | None = None
    b: np.ndarray | None = None
    path: Path | None = None  # vnnlib
    source: str | None = None  # the spec file, for messages and certificates

    @property
    def dim(self) -> int | None:
        for a in (self.lower, self.center):
            if a is not None:
                return int(a.size)
        if self.A is not None:
            return int(self.A.shape[1])
        return None

    def build(self, n_inputs: int | None = None) -> InputSet:
        """The input set; checks its dimension against ``n_inputs`` (the model's) when given."""
        if self.type == "vnnlib":
            return read_vnnlib(self.path, n_inputs=n_inputs).input_set()
        if self.scalar_bounds is not None and self.lower is None:
            if n_inputs is None:
                raise InputError("[input_set].dim: needed to broadcast scalar bounds (or give the model's size)", self.source)
            lo, hi = self.scalar_bounds
            return InputSet([Box(np.full(n_inputs, lo), np.full(n_inputs, hi))], self.source)
        if n_inputs is not None and self.dim != n_inputs:
            raise InputError(f"[input_set]: has dimension {self.dim}, the model has {n_inputs} inputs", self.source)
        if self.type == "box":
            return InputSet([Box(self.lower, self.upper)], self.source)
        if self.type == "linf_ball":
            lo, hi = self.center - self.radius, self.center + self.radius
            if self.clip is not None:
                lo, hi = np.maximum(lo, self.clip[0]), np.minimum(hi, self.clip[1])
            return InputSet([Box(lo, hi)], self.source)
        bb = Box(self.lower, self.upper) if self.lower is not None else None
        return InputSet([Polytope(self.A, self.b, bb)], self.source)


@dataclass
class ToleranceSpec:
    norm: str = "linf"
    epsilon: float = 0.0


@dataclass
class ReductionStep:
    """One ``[[reductions]]`` entry; options not given stay None (the command's default)."""

    method: str
    tolerance: float | None = None
    prune_method: str | None = None
    keep: float | None = None
    calibration: Path | None = None
    alpha: float | None = None
    delta: float | None = None
    bits: int | None = None
    per_channel: bool | None = None
    granularity: str | None = None  # prune: weight|neuron|channel (magnitude), weight|channel (confident)


@dataclass
class BackendSpec:
    name: str
    timeout: float = 60.0


@dataclass
class OutputSpec:
    dir: Path
    reports: list[str] = field(default_factory=lambda: ["md", "json"])


@dataclass
class Spec:
    """A validated spec file. Paths are resolved against the spec file's folder."""

    path: Path
    model: Path
    input_set_spec: InputSetSpec | None
    tolerance: ToleranceSpec | None
    reductions: list[ReductionStep]
    backends: list[BackendSpec]
    output: OutputSpec
    description: str = ""

    def input_set(self, n_inputs: int | None = None) -> InputSet:
        """The declared input set (InputError when the spec has none or the dimension differs)."""
        if self.input_set_spec is None:
            raise InputError("[input_set]: missing (this run needs an input set)", str(self.path))
        return self.input_set_spec.build(n_inputs)


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate a spec file; InputError naming the file and key path on any problem."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", name) from None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", name) from None
    except tomllib.TOMLDecodeError as e:
        raise _syntax_error(e, name, data.decode("utf-8")) from None
    return _Reader(name, Path(path).resolve().parent).spec(doc)


def _syntax_error(e: Exception, name: str, text: str) -> InputError:
    """``file:line:col: TOML syntax error: ...`` from tomllib's ``(at line L, column C)``."""
    msg = str(e)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
    if m:
        return InputError(f"TOML syntax error: {msg[: m.start()]}", name, f"{m.group(1)}:{m.group(2)}")
    m = re.search(r"\s*\(at end of document\)$", msg)
    if m:
        line = text.count("\n") + 1
        col = len(text) - (text.rfind("\n") + 1) + 1
        return InputError(f"TOML syntax error: {msg[: m.start()]} (at end of file)", name, f"{line}:{col}")
    return InputError(f"TOML syntax error: {msg}", name)


class _Reader:
    """Validation helpers; every failure names the file and the key path."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.base = base

    def fail(self, key: str, message: str) -> InputError:
        return InputError(f"{key}: {message}", self.name)

    # generic checks ---------------------------------------------------------------------------
    def table(self, d: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(d, dict):
            raise self.fail(key, f"expected a table, got {_kind(d)}")
        for k in d:
            if k not in allowed:
                raise self.fail(_join(key, k), f"unknown key (allowed here: {', '.join(allowed)})")
        for k in required:
            if k not in d:
                raise self.fail(_join(key, k), "missing (required)")
        return d

    def choice(self, v: Any, key: str, options: tuple) -> Any:
        if v not in options or isinstance(v, bool):
            expected = " or ".join(str(o) for o in options) if len(options) <= 2 else "one of " + ", ".join(str(o) for o in options)
            raise self.fail(key, f"expected {expected}, got {v!r}")
        return v

    def number(self, v: Any, key: str, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False,
               open_hi: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(key, f"expected a finite number, got {v!r}")
        if v < lo or v > hi or (open_lo and v == lo) or (open_hi and v == hi):
            raise self.fail(key, f"expected a number in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}, got {v!r}")
        return float(v)

    def boolean(self, v: Any, key: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {v!r}")
        return v

    def string(self, v: Any, key: str) -> str:
        if not isinstance(v, str):
            raise self.fail(key, f"expected a string, got {_kind(v)}")
        return v

    def file(self, v: Any, key: str, suffixes: tuple[str, ...] = ()) -> Path:
        p = (self.base / self.string(v, key)).resolve()
        if suffixes and p.suffix.lower() not in suffixes:
            raise self.fail(key, f"expected a {' or '.join(suffixes)} file, got {v!r}")
        if not p.is_file():
            raise self.fail(key, f"file not found: {p}")
        return p

    def vector(self, v: Any, key: str, length: int | None = None) -> np.ndarray:
        if not isinstance(v, list) or not v:
            raise self.fail(key, f"expected a non-empty array of numbers, got {_kind(v)}")
        for i, x in enumerate(v):
            self.number(x, f"{key}[{i}]")
        if length is not None and len(v) != length:
            raise self.fail(key, f"expected {length} numbers, got {len(v)}")
        return np.asarray(v, dtype=np.float64)

    # sections ---------------------------------------------------------------------------------
    def spec(self, doc: dict) -> Spec:
        top = ("description", "model", "input_set", "tolerance", "reductions", "backends", "output")
        self.table(doc, "(top level)", top, ("model",))
        model = self.file(doc["model"], "model", (".onnx",))
        input_set = self.input_set(doc["input_set"]) if "input_set" in doc else None
        tol = self.tolerance(doc["tolerance"]) if "tolerance" in doc else None
        reductions = [self.reduction(r, f"[[reductions]][{k}]") for k, r in enumerate(self.array(doc, "reductions"), 1)]
        backends = [self.backend(b, f"[[backends]][{k}]") for k, b in enumerate(self.array(doc, "backends"), 1)]
        output = self.output(doc.get("output", {}))
        spec = Spec(Path(self.name), model, input_set, tol, reductions, backends, output,
                    self.string(doc.get("description", ""), "description"))
        self.consistency(spec)
        return spec

    def array(self, doc: dict, key: str) -> list:
        v = doc.get(key, [])
        if not isinstance(v, list):
            raise self.fail(key, f"expected an array of tables [[{key}]], got {_kind(v)}")
        return v

    def input_set(self, d: Any) -> InputSetSpec:
        key = "[input_set]"
        t = self.choice(self.table(d, key, ("type",) + _INPUT_KEYS, ("type",))["type"], f"{key}.type", INPUT_SET_TYPES)
        allowed = {"box": ("lower", "upper", "dim"), "linf_ball": ("center", "radius", "clip"),
                   "polytope": ("A", "b", "lower", "upper"), "vnnlib": ("path",)}[t]
        self.table(d, key, ("type",) + allowed, {"box": ("lower", "upper"), "linf_ball": ("center", "radius"),
                                                 "polytope": ("A", "b"), "vnnlib": ("path",)}[t])
        spec = InputSetSpec(t, source=self.name)
        if t == "box":
            self.box_bounds(d, key, spec, self.dim(d.get("dim"), f"{key}.dim") if "dim" in d else None)
        elif t == "linf_ball":
            spec.center = self.center(d["center"], f"{key}.center")
            spec.radius = self.number(d["radius"], f"{key}.radius", 0.0)
            if "clip" in d:
                c = self.vector(d["clip"], f"{key}.clip", 2)
                if c[0] > c[1]:
                    raise self.fail(f"{key}.clip", f"expected [lo, hi] with lo <= hi, got {d['clip']!r}")
                spec.clip = (float(c[0]), float(c[1]))
        elif t == "polytope":
            spec.A = self.matrix(d["A"], f"{key}.A")
            spec.b = self.vector(d["b"], f"{key}.b", spec.A.shape[0])
            if ("lower" in d) != ("upper" in d):
                raise self.fail(f"{key}.{'upper' if 'lower' in d else 'lower'}", "missing (a bounding box needs both lower and upper)")
            if "lower" in d:
                self.box_bounds(d, key, spec, spec.A.shape[1])
        else:
            spec.path = self.file(d["path"], f"{key}.path", (".vnnlib",))
            read_vnnlib(spec.path)  # malformed property files fail at load time, with their own line:col
        return spec

    def dim(self, v: Any, key: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise self.fail(key, f"expected a positive integer, got {v!r}")
        return v

    def box_bounds(self, d: dict, key: str, spec: InputSetSpec, dim: int | None) -> None:
        lo, hi = d["lower"], d["upper"]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            lo, hi = self.number(lo, f"{key}.lower"), self.number(hi, f"{key}.upper")
            if lo > hi:
                raise self.fail(f"{key}.lower", f"lower {lo!r} exceeds upper {hi!r} (empty box)")
            if dim is None:
                spec.scalar_bounds = (lo, hi)
                return
            spec.lower, spec.upper = np.full(dim, lo), np.full(dim, hi)
            return
        if isinstance(lo, (int, float)) and not isinstance(lo, bool):
            hi_v = self.vector(hi, f"{key}.upper", dim)
            lo_v = np.full(hi_v.size, self.number(lo, f"{key}.lower"))
        else:
            lo_v = self.vector(lo, f"{key}.lower", dim)
            hi_v = (np.full(lo_v.size, self.number(hi, f"{key}.upper")) if isinstance(hi, (int, float))
                    and not isinstance(hi, bool) else self.vector(hi, f"{key}.upper", lo_v.size))
        bad = np.flatnonzero(lo_v > hi_v)
        if bad.size:
            i = int(bad[0])
            raise self.fail(f"{key}.lower[{i}]", f"lower {float(lo_v[i])!r} exceeds upper {float(hi_v[i])!r} (empty box)")
        spec.lower, spec.upper = lo_v, hi_v

    def center(self, v: Any, key: str) -> np.ndarray:
        if isinstance(v, str):
            p = self.file(v, key, (".npy",))
            try:
                arr = np.load(p, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise self.fail(key, f"cannot read {p}: {e}") from None
            if arr.dtype.kind not in "fiu" or arr.size == 0 or not np.all(np.isfinite(arr)):
                raise self.fail(key, f"{p}: expected a non-empty array of finite numbers")
            return arr.astype(np.float64).reshape(-1)  # row-major flattening, like X_i of VNN-LIB
        return self.vector(v, key)

    def matrix(self, v: Any, key: str) -> np.ndarray:
        if not isinstance(v, list) or not v or not all(isinstance(r, list) for r in v):
            raise self.fail(key, "expected a non-empty array of rows (arrays of numbers)")
        rows = [self.vector(r, f"{key}[{i}]", len(v[0])) for i, r in enumerate(v)]
        return np.vstack(rows)

    def tolerance(self, d: Any) -> ToleranceSpec:
        key = "[tolerance]"
        self.table(d, key, ("norm", "epsilon"))
        norm = self.choice(d.get("norm", "linf"), f"{key}.norm", NORMS)
        eps = self.number(d.get("epsilon", 0.0), f"{key}.epsilon", 0.0)
        return ToleranceSpec(norm, eps)

    def reduction(self, d: Any, key: str) -> ReductionStep:
        if not isinstance(d, dict):
            raise self.fail(key, f"expected a table, got {_kind(d)}")
        if "method" not in d:
            raise self.fail(f"{key}.method", f"missing (required: one of {', '.join(METHODS)})")
        method = self.choice(d["method"], f"{key}.method", METHODS)
        self.table(d, key, ("method",) + METHOD_OPTIONS[method])
        step = ReductionStep(method)
        if "tolerance" in d:
            step.tolerance = self.number(d["tolerance"], f"{key}.tolerance", 0.0)
        if method == "quantize":
            if "bits" not in d:
                raise self.fail(f"{key}.bits", "missing (required: 4 or 8)")
            step.bits = self.choice(d["bits"], f"{key}.bits", (4, 8))
            if "per_channel" in d:
                step.per_channel = self.boolean(d["per_channel"], f"{key}.per_channel")
        if method == "prune":
            self.prune(d, key, step)
        return step

    def prune(self, d: dict, key: str, step: ReductionStep) -> None:
        step.prune_method = self.choice(d.get("prune_method", "magnitude"), f"{key}.prune_method", PRUNE_METHODS)
        needed = ("calibration", "alpha", "delta") if step.prune_method == "confident" else ("keep",)
        for k in ("keep", "calibration", "alpha", "delta"):
            if k in d and k not in needed:
                raise self.fail(f"{key}.{k}", f"not an option of prune_method = {step.prune_method!r}")
            if k not in d and k in needed:
                raise self.fail(f"{key}.{k}", f"missing (required by prune_method = {step.prune_method!r})")
        if "granularity" in d:
            if step.prune_method == "coreset":
                raise self.fail(f"{key}.granularity", "not an option of prune_method = 'coreset' (it samples "
                                                      "neurons or filters)")
            options = ("weight", "channel") + (("neuron",) if step.prune_method == "magnitude" else ())
            step.granularity = self.choice(d["granularity"], f"{key}.granularity", options)
        if "keep" in d:
            step.keep = self.number(d["keep"], f"{key}.keep", 0.0, 1.0, open_lo=True)
        if "calibration" in d:
            step.calibration = self.file(d["calibration"], f"{key}.calibration", (".npz",))
            step.alpha = self.number(d["alpha"], f"{key}.alpha", 0.0, 1.0, open_lo=True, open_hi=True)
            step.delta = self.number(d["delta"], f"{key}.delta", 0.0, 1.0, open_lo=True, open_hi=True)

    def backend(self, d: Any, key: str) -> BackendSpec:
        self.table(d, key, ("name", "timeout"), ("name",))
        name = self.choice(d["name"], f"{key}.name", BACKENDS)
        timeout = self.number(d.get("timeout", 60.0), f"{key}.timeout", 0.0, open_lo=True)
        return BackendSpec(name, timeout)

    def output(self, d: Any) -> OutputSpec:
        key = "[output]"
        self.table(d, key, ("dir", "reports"))
        out_dir = self.base / self.string(d.get("dir", "lumpver-out"), f"{key}.dir")
        reports = d.get("reports", ["md", "json"])
        if not isinstance(reports, list):
            raise self.fail(f"{key}.reports", f"expected an array such as [\"md\", \"json\"], got {_kind(reports)}")
        for i, r in enumerate(reports):
            self.choice(r, f"{key}.reports[{i}]", REPORTS)
        return OutputSpec(out_dir, list(dict.fromkeys(reports)))

    def consistency(self, spec: Spec) -> None:
        """Cross-field rules: what each reduction needs from the rest of the file."""
        for k, step in enumerate(spec.reductions, 1):
            key = f"[[reductions]][{k}].method"
            if step.method in ("on-set", "approx") and spec.input_set_spec is None:
                raise self.fail(key, f"{step.method!r} needs an [input_set]")
            if step.method == "approx" and spec.tolerance is None:
                raise self.fail(key, "'approx' needs a [tolerance] (norm and epsilon)")


_INPUT_KEYS = ("lower", "upper", "dim", "center", "radius", "clip", "A", "b", "path")


def _join(key: str, sub: str) -> str:
    return sub if key == "(top level)" else f"{key}.{sub}"


def _kind(v: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean"}.get(type(v), repr(v))
