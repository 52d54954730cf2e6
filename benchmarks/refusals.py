"""How fast and how small every refusal of the command line is.

Runs each hostile command line of ``difflab.testing.hostile`` (the table ``tests/test_cli.py``
asserts on) in its own process, one after another, and reports its wall time and peak resident
memory (``ru_maxrss`` of the child), beside a bare ``python -c "import torch"`` for scale.

    python benchmarks/refusals.py [--out outputs/bench/refusals.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from difflab.testing.hostile import HOSTILE, hostile_files


PROBE = ("import resource, subprocess, sys, time\n"
         "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True)\n"
         "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode)")


def measure(command: list, cwd: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *command], cwd=cwd, capture_output=True, text=True)
    seconds, mb, status = out.stdout.split()
    return {"seconds": float(seconds), "peak_mb": float(mb), "status": int(status)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/refusals.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hostile_files(root)
        reference = measure([sys.executable, "-c", "import torch"], root)
        for name, command, _ in HOSTILE:
            row = {"case": name, **measure([sys.executable, "-m", "difflab", *command], root)}
            rows.append(row)
            print(f"{name:<36} {row['seconds']:6.2f} s {row['peak_mb']:7.0f} MB  exit {row['status']}")
    slowest = max(rows, key=lambda r: r["seconds"])
    largest = max(rows, key=lambda r: r["peak_mb"])
    print(f"\n{len(rows)} refusals: slowest {slowest['case']} {slowest['seconds']:.2f} s, largest {largest['case']} "
          f"{largest['peak_mb']:.0f} MB; `python -c 'import torch'` alone: {reference['seconds']:.2f} s, "
          f"{reference['peak_mb']:.0f} MB; all exit 2: {all(r['status'] == 2 for r in rows)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"reference": reference, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
