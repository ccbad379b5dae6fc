"""``difflab serve`` under load, on a real uvicorn server and a trained run: does the event loop
stay free while a generation runs, how fast do jobs go, what does a burst of 20 requests get,
and how soon do cancel and a client that leaves free the worker?

Goals (exit status 1 when missed): requests answered while a generation runs in under a tenth
of the job's time (p95; a blocked event loop would hold them until the job ends; the CPU is
shared, so they are slower than idle, which is shown too); a burst of 20 generation requests all
answered, at most 1 + queue size accepted, every refusal a 503 with Retry-After; a cancel or a
dropped event stream ends the running job within two sampler steps (+ 0.2 s).

    OMP_NUM_THREADS=2 python benchmarks/bench_serve.py --run runs/bench-class
    python benchmarks/bench_serve.py --screenshot docs/serve.png    # also the README's picture
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import exit_on_missed, load_report, machine_report
from difflab.serve.app import create_app
from difflab.serve.models import load_models

FINAL = ("done", "failed", "cancelled")
CLIENT = httpx.Client(timeout=60)  # one connection pool, as a page keeps (thread-safe)


def start(runs: list[str], queue_size: int) -> tuple[str, uvicorn.Server, threading.Thread]:
    app = create_app(load_models(runs, "cpu"), queue_size)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server, thread


def wait(base: str, job: str, until: tuple[str, ...] = FINAL, timeout: float = 600) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = CLIENT.get(f"{base}/api/jobs/{job}").json()
        if s["state"] in until:
            return s
        time.sleep(0.005)
    raise SystemExit(f"job {job} never reached {until}")


def submit(base: str, **body: Any) -> dict[str, Any]:
    r = CLIENT.post(f"{base}/api/generate", json=body)
    r.raise_for_status()
    return r.json()


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/bench-class", help="a trained run (default: runs/bench-class)")
    ap.add_argument("--queue-size", type=int, default=4, help="jobs waiting per model (default: 4)")
    ap.add_argument("--steps", type=int, default=10, help="sampler steps per job (default: 10)")
    ap.add_argument("--screenshot", type=Path, help="also save the page, after a generation, here")
    args = ap.parse_args()
    machine_report(torch.device("cpu"))
    base, server, thread = start([args.run], args.queue_size)
    model = CLIENT.get(f"{base}/api/models").json()["models"][0]
    name, label = model["name"], ("3" if model["kind"] == "class" else None)
    extra = {"label": label} if label else {}
    missed: list[str] = []
    rows = []

    # 1. jobs alone: seconds per job and images/s
    for n in (1, 16):
        times = []
        for seed in range(3):
            s = wait(base, submit(base, model=name, n=n, steps=args.steps, seed=seed, **extra)["id"])
            times.append(s["seconds"])
        med = statistics.median(times)
        rows.append(f"| job of {n} image{'s' if n > 1 else ''}, {args.steps} steps | {med:.3f} s | "
                    f"{n / med:.1f} images/s |")

    # 2. the event loop while a generation runs: model listings, against the same with the server idle
    def listing() -> float:
        t0 = time.perf_counter()
        CLIENT.get(f"{base}/api/models")
        return time.perf_counter() - t0

    idle = [listing() for _ in range(30)]
    job = submit(base, model=name, n=16, steps=args.steps * 4, **extra)["id"]
    wait(base, job, ("running",))
    busy = []
    while CLIENT.get(f"{base}/api/jobs/{job}").json()["state"] == "running":
        busy.append(listing())
    took = wait(base, job)["seconds"]
    for what, polls in (("idle", idle), ("while a 16-image job runs", busy)):
        rows.append(f"| `GET /api/models` {what} ({len(polls)} requests) | "
                    f"p50 {pct(polls, 0.5) * 1e3:.1f} ms | p95 {pct(polls, 0.95) * 1e3:.1f} ms |")
    if pct(busy, 0.95) >= took / 10:
        missed.append(f"listing p95 {pct(busy, 0.95):.2f} s while generating: over a tenth of the "
                      f"job's {took:.1f} s")

    # 3. a burst of 20 concurrent generation requests
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def post(i: int) -> None:
        body = {"model": name, "seed": i, "steps": args.steps, **extra}
        r = CLIENT.post(f"{base}/api/generate", json=body)
        with lock:
            answers.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    burst = time.perf_counter() - t0
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 503]
    retry = sorted({a.headers.get("Retry-After") for a in refused})
    t1 = time.perf_counter()
    for j in accepted:
        wait(base, j)
    drained = time.perf_counter() - t1
    rows.append(f"| burst of 20 `POST /api/generate`, queue {args.queue_size} | {len(answers)} answered in "
                f"{burst * 1e3:.0f} ms ({len(answers) / burst:.0f} requests/s): {len(accepted)} accepted, "
                f"{len(refused)} refused 503 (Retry-After {', '.join(map(str, retry))} s) | "
                f"accepted drained in {drained:.2f} s |")
    if len(answers) != 20 or len(accepted) + len(refused) != 20 or len(accepted) > 1 + args.queue_size:
        missed.append(f"burst: {len(answers)} answered, {len(accepted)} accepted, {len(refused)} refused")
    if any(not a.headers.get("Retry-After") for a in refused):
        missed.append("a 503 without Retry-After")

    # 4. cancel and a client that leaves the event stream, while the job is mid-way
    for how in ("cancel", "disconnect"):
        job = submit(base, model=name, n=16, steps=args.steps * 4, **extra)
        seen: dict[int, float] = {}  # step -> when it was first seen
        if how == "cancel":
            wait(base, job["id"], ("running",))
            while (step := CLIENT.get(f"{base}/api/jobs/{job['id']}").json()["step"]) < 3:
                seen.setdefault(step, time.perf_counter())
                time.sleep(0.002)
            t0 = time.perf_counter()
            CLIENT.post(f"{base}/api/jobs/{job['id']}/cancel")
        else:
            with CLIENT.stream("GET", f"{base}{job['events']}") as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        seen.setdefault(step := json.loads(line[5:])["step"], time.perf_counter())
                        if step >= 3:
                            break
            t0 = time.perf_counter()
        s = wait(base, job["id"])
        took = time.perf_counter() - t0
        step_s = seen[3] - seen[2] if 2 in seen and 3 in seen else med / args.steps
        rows.append(f"| {how} at step 3 of {args.steps * 4} (16 images) | {s['state']} after "
                    f"{took * 1e3:.0f} ms | that job's step before: {step_s * 1e3:.0f} ms |")
        if s["state"] != "cancelled" or took > 2 * step_s + 0.2:
            missed.append(f"{how}: {s['state']} after {took:.2f} s")

    print(f"\n## difflab serve: {args.run}, {args.steps} sampler steps, queue size {args.queue_size}\n")
    print("| what | measured | |\n|---|---|---|")
    print("\n".join(rows))

    if args.screenshot:
        screenshot(base, args.screenshot, label)
        print(f"\nwrote {args.screenshot}")
    print(load_report("at the end"))
    server.should_exit = True
    thread.join(10)
    exit_on_missed(missed, "difflab serve goals missed")


def screenshot(base: str, path: Path, label: str | None) -> None:
    """The page after generating 8 images, in headless Chromium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                 "--window-size=1280,820", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(base + "/")
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        if label is not None:
            driver.find_element(By.CSS_SELECTOR, f"#gen-label option[value='{label}']").click()
        n = driver.find_element(By.ID, "gen-n")
        n.clear()
        n.send_keys("8")
        driver.find_element(By.ID, "generate-btn").click()
        wait.until(lambda d: d.find_element(By.ID, "progress-text").text.startswith("done"))
        time.sleep(0.5)
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
