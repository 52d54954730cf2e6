"""Load test of ``difflab serve`` (loopback only, bounded in time).

    python benchmarks/serve_load.py                       # 200 jobs, 8 clients, queue 4, 4 steps
    python benchmarks/serve_load.py --jobs 50 --clients 4 # quicker

Starts a real server (``difflab serve`` in its own process, the bundled model) on a free loopback port;
``--clients`` threads each submit a job, follow its event stream (as the browser UI does) to the end
and submit the next, until ``--jobs``
jobs have finished. A full queue answers 429: the client counts the refusal, waits 0.1 s and tries
again. Reported: every job's state, every HTTP status seen (a 5xx fails the run), latency from the
first submit attempt to the finished state (p50/p95), throughput, and the server's resident memory
(RSS from /proc) after the first tenth of the jobs and at the end: a leak shows as growth. Beside it,
the same generation called in-process one after another (before the server starts): the ratio is
what the server's HTTP, queue, previews and PNG writing cost.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(outputs: str, queue_size: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "difflab", "serve", "--port", str(port), "--outputs", outputs,
                               "--queue-size", str(queue_size)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
    raise RuntimeError("the server did not start within 120 s")


class Load:
    def __init__(self, url: str, jobs: int, steps: int, deadline: float):
        self.url, self.jobs, self.steps, self.deadline = url, jobs, steps, deadline
        self.lock = threading.Lock()
        self.started = 0
        self.latencies, self.states, self.statuses = [], Counter(), Counter()
        self.finished = threading.Event()
        self.tenth = threading.Event()

    def take(self) -> int | None:
        with self.lock:
            if self.started >= self.jobs or time.monotonic() > self.deadline:
                return None
            self.started += 1
            return self.started

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while (n := self.take()) is not None:
                self.one(http, n)

    def one(self, http: httpx.Client, n: int) -> None:
        body = {"prompt": "a red circle above a blue square", "steps": self.steps, "seed": n, "sampler": "euler"}
        begin = time.monotonic()
        while True:
            response = http.post("/api/v1/jobs", json=body)
            self.count(response.status_code)
            if response.status_code != 429 or time.monotonic() > self.deadline:
                break
            time.sleep(0.1)
        if response.status_code != 202:
            return
        job_id = response.json()["id"]
        state = None
        with http.stream("GET", f"/api/v1/jobs/{job_id}/events") as events:  # as the browser UI follows a job
            self.count(events.status_code)
            event = None
            for line in events.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "state":
                    state = json.loads(line[6:])["state"]
        if state not in ("succeeded", "failed", "cancelled"):
            return
        with self.lock:
            self.states[state] += 1
            self.latencies.append(time.monotonic() - begin)
            if sum(self.states.values()) >= self.jobs // 10:
                self.tenth.set()

    def count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1


def direct_rate(steps: int, n: int = 20) -> float:
    """Jobs/s of the same generation called in-process, one after another: the server's ceiling."""
    from difflab.pipelines import Pipeline
    pipe = Pipeline.from_pretrained()
    pipe("a red circle above a blue square", steps=steps, seed=0, sampler="euler")  # warm-up
    begin = time.monotonic()
    for seed in range(n):
        pipe("a red circle above a blue square", steps=steps, seed=seed, sampler="euler")
    return n / (time.monotonic() - begin)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--queue-size", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=600, help="seconds for the whole load")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    ceiling = direct_rate(args.steps)  # before the server starts: the two never share the cores
    with tempfile.TemporaryDirectory() as outputs:
        server, url = start_server(outputs, args.queue_size)
        try:
            idle_rss, server_cpu, client_cpu = rss_mb(server.pid), cpu_seconds(server.pid), time.process_time()
            load = Load(url, args.jobs, args.steps, time.monotonic() + args.time_limit)
            threads = [threading.Thread(target=load.client) for _ in range(args.clients)]
            begin = time.monotonic()
            for thread in threads:
                thread.start()
            while not load.tenth.wait(0.5) and any(thread.is_alive() for thread in threads):
                pass
            early_rss = rss_mb(server.pid)
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - begin
            end_rss = rss_mb(server.pid)
            server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
            alive = server.poll() is None and httpx.get(f"{url}/api/v1/health").status_code == 200
        finally:
            server.terminate()
            server.wait(30)
    latencies = sorted(load.latencies)
    result = {
        "jobs": args.jobs, "clients": args.clients, "steps": args.steps, "queue_size": args.queue_size,
        "states": dict(load.states), "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "server_errors": sum(v for k, v in load.statuses.items() if k >= 500), "server_alive_after": alive,
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
        "throughput_jobs_per_s": round(len(latencies) / elapsed, 2), "elapsed_s": round(elapsed, 1),
        "direct_calls_per_s": round(ceiling, 2), "throughput_vs_direct": round(len(latencies) / elapsed / ceiling, 2),
        "cpu_s": {"server": round(server_cpu, 1), "clients": round(client_cpu, 1)},
        "rss_mb": {"idle": round(idle_rss), "after_first_tenth": round(early_rss), "end": round(end_rss)},
        "cpu": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = result["server_errors"] == 0 and alive and load.states.get("succeeded", 0) == args.jobs
    if not ok:
        print("FAILED: a 5xx, a job that did not succeed, or a server that did not survive", file=sys.stderr)
    return result if ok else sys.exit(1)


if __name__ == "__main__":
    main()
