"""``lumpver run SPEC.toml [--out DIR]``: everything a spec file declares, with certificates and reports."""
from __future__ import annotations

import argparse

from lumpver.commands import argtypes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the spec file (.toml)")
    p.add_argument("--out", help="output folder (default: the spec's [output] dir, else ./lumpver-out beside it)")
    p.add_argument("--no-recheck", action="store_true",
                   help="skip the independent re-check of each certificate (faster; the report says 'not run')")


def run(args: argparse.Namespace) -> int:
    from lumpver.api.run import run_spec

    res = run_spec(args.spec, args.out, quiet=args.quiet, recheck=not args.no_recheck,
                   command=argtypes.command_line(args))
    doc = res.document
    for s in doc["steps"]:
        st = s["stats"]
        print(f"step {s['index']} {s['method']}: hidden neurons {st['neurons_before']} -> {st['neurons_after']}"
              + (f"; certificate {res.out_dir / s['certificate_path']}" if s.get("certificate_path") else "; no certificate"))
    for b in doc["backends"]:
        print(f"back-end {b['backend']}: {b['verdict']}")
    print(f"wrote {len(res.files)} file(s) into {res.out_dir}: " + ", ".join(p.name for p in res.files))
    print(summary_line(doc, res.exit_code))
    return res.exit_code


def summary_line(doc: dict, exit_code: int) -> str:
    """The last stdout line: the guarantee kind first (scripts read the first word), then the size,
    the composed bound, the re-check and the back-ends' verdicts."""
    from lumpver.reports.facts import num, num_up

    ov, steps = doc["overall"], doc["steps"]
    parts = [("check failed" if exit_code else (ov.get("kind") or "no guarantee")) + ":"]
    if steps:
        n0, n1 = steps[0]["stats"]["neurons_before"], steps[-1]["stats"]["neurons_after"]
        parts.append(f"hidden neurons {n0} -> {n1} ({100.0 * n1 / max(1, n0):.1f} % kept);")
    if ov.get("bound_on_set") is not None:
        parts.append(f"max_i |f_i - g_i| <= {num_up(ov['bound_on_set'])} on the input set;")
    elif ov.get("a") is not None:
        where = "for every input" if ov.get("kind") == "exact" else "on the input set"
        parts.append(f"max_i |f_i - g_i| <= {num_up(ov['a'])}" + (f" + {num_up(ov['b'])} * ||x||_inf" if ov.get("b") else "")
                     + f" {where};")
    holds = {True: "every certificate re-checked: holds", False: "a certificate DOES NOT re-check",
             None: "re-check not run"}[ov.get("holds")]
    parts.append(holds + ";" if doc["backends"] else holds)
    if doc["backends"]:
        parts.append("back-ends: " + ", ".join(
            f"{b['backend']} {b['verdict']}" + (f" (lower bound {num(b['lower_bound'])})"
                                                  if b["backend"] == "falsify" and b.get("lower_bound") is not None else "")
            for b in doc["backends"]))
    return " ".join(parts)
