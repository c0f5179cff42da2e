"""Issue test 5, a SIMULATION: the replicas KEDA's ScaledObject for worker-io would ask for
while a real backlog rises and drains on a real io worker and redis-server. KEDA's Redis
query runs against that Redis; the HPA formula is applied here (no cluster can run here).

"Not under-counting" means: at every poll, desired >= clamp(ceil((waiting + taken) / target)),
where taken counts the io tasks the worker holds (kombu's `unacked` records routed to io, plus
io.taken), read in the same Redis transaction as KEDA's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import clean_env, generate, run
from k8s import named, render

pytestmark = pytest.mark.k8s

SIMULATE = Path(__file__).parent / "keda" / "simulate.py"


def test_io_replicas_count_the_tasks_workers_hold(tmp_path):
    # A small pool, so that a backlog of a few bursts spans several replicas' worth.
    project = generate(tmp_path, io_concurrency="20")
    env = {**clean_env(), "IO_CONCURRENCY": "20"}
    run(["uv", "sync", "--locked", "--quiet"], cwd=project, env=env)
    scaled = named(render(project, "overlays/production"), "ScaledObject")["worker-io"]
    argv = ["uv", "run", "--locked", "python", str(SIMULATE), json.dumps(scaled["spec"])]
    package = next(p.name for p in (project / "src").iterdir() if p.is_dir())
    proc = run([*argv, package], cwd=project, env=env, timeout=400)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    print("\nSIMULATED KEDA/HPA replicas for worker-io (real Redis and worker, no cluster)")
    print(f"{'t s':>6} {'waiting':>8} {'taken':>6} {'needed':>7} {'list only':>10} {'with fix':>9}")
    for r in rows:
        print(f"{r['t']:>6} {r['waiting']:>8} {r['taken']:>6} {r['needed']:>7} {r['queue_only']:>10} {r['with_fix']:>9}")  # fmt: skip
    assert max(r["waiting"] + r["taken"] for r in rows) > 60, "the backlog never rose"
    assert any(r["queue_only"] < r["needed"] for r in rows), "the list alone never under-counted"
    assert all(r["with_fix"] >= r["needed"] for r in rows)
    assert rows[-1]["waiting"] == rows[-1]["taken"] == 0, "the backlog never drained"
