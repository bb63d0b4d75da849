"""Benchmark of `lumpver batch --engine ray` against the local process pool (issue 16, DESIGN.md §12).

Same ACAS Xu suite, same run, same number of parallel slots (``--jobs``): the pool (baseline), then
Ray on an in-process local cluster with ``--jobs`` CPUs. Prints the wall time of each (Ray: with and
without starting and stopping the cluster), the ratio to the pool and whether the answers agree.

    python3 bench/bench_batch_ray.py [--nets 1_1,...] [--props 3,4] [--timeout 30] [--jobs 2]
"""
from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from bench.bench_batch import acas_suite, suite_arguments
    from lumpver.api.batch import run_batch
    from lumpver.api.batch_ray import run_batch_ray

    ap = suite_arguments("1_1,1_2,1_3,1_4,1_5,1_6")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    # a fresh token for this local cluster (Ray's default would write ~/.ray/auth_token)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    tmp, rows = acas_suite(a)
    t0 = time.perf_counter()
    pool = run_batch(tmp / "instances.csv", tmp / "pool", a.jobs)
    pool_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray = run_batch_ray(tmp / "instances.csv", tmp / "ray", a.jobs)
    ray_wall = time.perf_counter() - t0
    same = [o.result for o in pool.outcomes] == [o.result for o in ray.outcomes]
    decided = sum(o.result in ("sat", "unsat") for o in ray.outcomes)
    print(f"{len(rows)} ACAS Xu instances (nets {a.nets}, props {a.props}, timeout {a.timeout:g} s), {a.jobs} slots")
    print(f"pool                 wall {pool_wall:7.1f} s  ratio 1.00")
    print(f"ray local, all       wall {ray_wall:7.1f} s  ratio {ray_wall / pool_wall:5.2f}  (cluster start and stop included)")
    print(f"ray local, run only  wall {ray.wall_seconds:7.1f} s  ratio {ray.wall_seconds / pool_wall:5.2f}")
    print(f"answers identical: {same}; decided {decided}/{len(rows)}; "
          f"sum of instance times pool {sum(o.seconds for o in pool.outcomes):.1f} s, "
          f"ray {sum(o.seconds for o in ray.outcomes):.1f} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
