"""Soak test of ``difflab serve`` against 127.0.0.1 only: fuzzed requests to every endpoint,
bursts of concurrent generation requests, and clients that leave mid-generation.

The server runs in its own process (``python -c SERVER``) on tiny trained runs, with a brake on
every network call that the client sets through a file (``hold`` stops the network, a number slows
each call by that many seconds), so a burst meets a busy worker and a stream is left mid-job.

1. Fuzz: for every route of the app (``app.routes``: a new endpoint is fuzzed the day it lands, or
   the run stops and names the parameter it has no valid value for), the parameters come from the
   OpenAPI document; a request valid but for one or two faults (wrong types, out-of-range, NaN,
   inf and huge numbers, unknown models, samplers and classes, missing and extra fields, bad JSON,
   bad multipart bodies, bad uploads, bad job ids, path traversal, wrong methods) must get a 4xx
   whose body is JSON with a one-line ``detail`` and no traceback; the valid request itself must
   succeed, and a generation must still work afterwards.
2. Bursts: concurrent ``POST /api/generate`` while the worker is held: every request answered,
   202 or 503 with Retry-After, at most queue size + 1 accepted; resident memory after the bursts
   (and the disconnects) within ``--margin-mib`` of the memory after a warm-up burst, and as flat
   over the random fuzzing (after every fault was tried once).
3. Disconnects: the event stream of a running job closed (or the socket reset) mid-job: the job
   is cancelled, the next job starts at once, no job is left running or waiting, and the server
   has no more threads than after the first round.

Goals (exit status 1 when missed): no 5xx, no traceback in a response or the server log, every
fuzzed request 4xx with a one-line JSON message, memory growth under the margin, no leaked job or
thread, the server exits cleanly.

    OMP_NUM_THREADS=1 python benchmarks/soak_serve.py [--requests 30000] [--bursts 100] [--disconnects 300]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import re
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

FINAL = ("done", "failed", "cancelled")
TRACEBACK = ("Traceback", 'File "')
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")

SERVER = r"""
import sys, threading, time
from pathlib import Path
import uvicorn
from difflab.serve.app import create_app
from difflab.serve.models import load_models

queue_size, brake, stop, runs = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
models = load_models(runs, "cpu")

def throttle(module, args):
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            text = brake.read_text().strip()
        except OSError:
            return
        if text != "hold":
            if text:
                time.sleep(float(text))
            return
        time.sleep(0.005)

for m in models:
    m.pipe.net.register_forward_pre_hook(throttle)
server = uvicorn.Server(uvicorn.Config(create_app(models, queue_size), host="127.0.0.1", port=0,
                                       log_level="warning"))

def watch():
    while not server.started:
        time.sleep(0.01)
    print("port", server.servers[0].sockets[0].getsockname()[1], flush=True)
    while not stop.exists():
        time.sleep(0.05)
    server.should_exit = True

threading.Thread(target=watch, daemon=True).start()
server.run()
"""


# ---- the server in its own process -------------------------------------------------------------------
class Served:
    """``difflab serve``'s app on 127.0.0.1 (a free port) in a child process."""

    def __init__(self, runs: list[Path], queue_size: int, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.brake_file, self.log_file = workdir / "brake", workdir / "server.log"
        self.stop_file = workdir / "stop"
        self.stop_file.unlink(missing_ok=True)
        self.brake("")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        self.log = self.log_file.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(queue_size), self.brake_file, self.stop_file, *runs],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("port "):
            self.process.kill()
            raise RuntimeError(f"the server did not start: {self.log_file.read_text()[-2000:]}")
        self.base = f"http://127.0.0.1:{int(line.split()[1])}"
        self.port = int(line.split()[1])
        self.client = httpx.Client(base_url=self.base, timeout=60)
        self.queue_size = queue_size

    def brake(self, value: str) -> None:
        """``hold`` stops every network call; a number slows each by that many seconds; "" frees."""
        tmp = self.brake_file.with_suffix(".tmp")
        tmp.write_text(value)
        os.replace(tmp, self.brake_file)

    def rss_mib(self) -> float:
        """The server's resident memory (psutil where installed, else /proc/PID/statm)."""
        try:
            import psutil

            return psutil.Process(self.process.pid).memory_info().rss / 2**20
        except ImportError:
            pages = int(Path(f"/proc/{self.process.pid}/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def threads(self) -> int:
        """The server process's threads (the operating system's count)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        raise RuntimeError("no thread count in /proc")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, job: str, until: tuple[str, ...] = FINAL, timeout: float = 60) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.client.get(f"/api/jobs/{job}").json()
            if s["state"] in until:
                return s
            time.sleep(0.01)
        raise AssertionError(f"job {job} never reached {until}: {s}")

    def idle(self) -> bool:
        """No job running or waiting on any model."""
        queues = self.client.get("/api/queue").json().values()
        return all(q["running"] is None and q["waiting"] == 0 for q in queues)

    def tracebacks_in_log(self) -> int:
        self.log.flush()
        return self.log_file.read_text().count("Traceback")

    def close(self) -> int | None:
        """Stop the server (uvicorn's graceful shutdown, then the app's: its workers stopped); its
        exit status, None if it had to be killed after 30 s."""
        self.client.close()
        self.stop_file.touch()
        try:
            code: int | None = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = None
        self.log.close()
        return code


def tiny_runs(root: Path) -> list[Path]:
    """A class-conditional 8x8 run and a 16x16 super-resolution run (6 training steps each)."""
    from tests.test_serve import train_tiny

    return [train_tiny(root / "cls", "--cond", "class"),
            train_tiny(root / "sr", "--image-size", "16", "--cond", "lowres", "--factor", "2")]


# ---- uploads ---------------------------------------------------------------------------------------------
def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def bomb(side: int) -> bytes:
    """A side x side one-bit PNG of a few kilobytes that decodes to side^2 pixels."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def uploads() -> dict[str, bytes]:
    from difflab.serve import limits

    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    return {"image": png(np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))), "mask": png(mask),
            "black": png(np.zeros((8, 8), np.uint8)), "bomb": bomb(6000),
            "oversize": b"\x89PNG\r\n\x1a\n" + b"\0" * limits.MAX_UPLOAD_BYTES}


BAD_FILES = {  # name -> (upload key or bytes, what)
    "text": (b"just some text, not a picture", "a text file"),
    "gif": (b"GIF89a" + b"\0" * 64, "a GIF"),
    "truncated": (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "a truncated PNG"),
    "empty": (b"", "an empty file"),
    "bomb": ("bomb", "a decompression bomb (36 megapixels)"),
    "oversize": ("oversize", "a file over the upload limit"),
}


# ---- fuzzed requests -------------------------------------------------------------------------------------
@dataclass
class Request:
    """One request to a route: path values, query, a JSON or form body and files, or raw bytes."""

    route: str
    method: str
    endpoint: str = ""  # "METHOD /route" of the valid request this one was made from
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    body: str | None = None  # "json" or "form"
    fields: dict[str, Any] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)

    def url(self) -> str:
        url = self.route
        for k, v in self.path.items():
            url = url.replace("{" + k + "}", quote(str(v), safe=""))
        return url + ("?" + urlencode(self.query) if self.query else "")

    def send(self, client: httpx.Client) -> httpx.Response:
        if self.content is not None:
            return client.request(self.method, self.url(), content=self.content, headers=self.headers)
        if self.body == "json":
            return client.request(self.method, self.url(), content=json.dumps(self.fields).encode(),
                                  headers={"content-type": "application/json", **self.headers})
        if self.body == "form":
            data = {k: v if isinstance(v, list) else str(v) for k, v in self.fields.items()}
            return client.request(self.method, self.url(), data=data, files=self.files or None)
        return client.request(self.method, self.url())


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path, query, json, form, file
    schema: dict[str, Any]
    required: bool


Fault = tuple[str, Callable[[Request], None]]


def set_value(p: Param, value: Any) -> Callable[[Request], None]:
    def apply(r: Request) -> None:
        if p.where == "path":
            r.path[p.name] = value
        elif p.where == "query":
            r.query[p.name] = value
        elif p.where == "file":
            r.files.pop(p.name, None)
            r.fields[p.name] = value
        else:
            r.fields[p.name] = value
    return apply


def drop(p: Param) -> Callable[[Request], None]:
    def apply(r: Request) -> None:
        {"query": r.query, "file": r.files}.get(p.where, r.fields).pop(p.name, None)
    return apply


def params_of(route: Any, spec: dict[str, Any], method: str) -> list[Param]:
    """The route's parameters from the OpenAPI document (a route outside it must take none)."""
    op = spec["paths"].get(route.path, {}).get(method.lower())
    if op is None:
        d = getattr(route, "dependant", None)
        if d is not None and (d.path_params or d.query_params or d.body_params):
            raise SystemExit(f"{method} {route.path} takes parameters but is not in the OpenAPI document")
        return []
    out = [Param(p["name"], p["in"], p.get("schema", {}), p.get("required", False))
           for p in op.get("parameters", [])]
    for media, content in op.get("requestBody", {}).get("content", {}).items():
        schema = content["schema"]
        if "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        where = "json" if media == "application/json" else "form"
        for name, s in schema.get("properties", {}).items():
            is_file = s.get("format") == "binary" or "contentMediaType" in s
            out.append(Param(name, "file" if is_file else where, s, name in schema.get("required", [])))
    return out


def plain(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The non-null option of a schema and whether null is allowed."""
    options = schema.get("anyOf", [schema])
    kept = [o for o in options if o.get("type") != "null"]
    return (kept[0] if kept else {}), len(kept) < len(options)


def value_faults(p: Param, sizes: dict[str, bytes]) -> list[tuple[str, Any]]:
    """Values of ``p`` that no request may carry: by its schema, then by what it names."""
    s, nullable = plain(p.schema)
    kind, text = s.get("type"), p.where in ("path", "query", "form")
    out: list[tuple[str, Any]] = []
    if p.where == "file":
        out += [(what, sizes[data] if isinstance(data, str) else data) for data, what in BAD_FILES.values()]
        return [(f"{p.name}: {what}", ("upload", data)) for what, data in out] + [
            (f"{p.name}: a text field, not a file", "not a file")]
    if kind in ("integer", "number"):
        lo, hi = s.get("minimum"), s.get("maximum")
        if lo is not None:
            out.append(("below its minimum", int(lo) - 1 if kind == "integer" else lo - 0.5))
        if hi is not None:
            out.append(("above its maximum", int(hi) + 1 if kind == "integer" else hi + 0.5))
            out.append(("huge", 10**30))
            out.append(("inf", "inf" if text else math.inf))
            out.append(("-inf", "-inf" if text else -math.inf))
            out.append(("NaN", "nan" if text else math.nan))
        out += [("not a number", "abc"), ("a list", [1, 2] if not text else "[1, 2]")]
        if kind == "integer":
            out += [("a fraction", 2.5), ("exponent notation", "1e3" if text else 1e30),
                    ("huge digits", "9" * 40)]
    elif kind == "string":
        if "maxLength" in s:
            out.append(("over its maximum length", "x" * (int(s["maxLength"]) + 1)))
        if "pattern" in s:
            out.append(("not its pattern", "nope"))
        if not text:
            out += [("a number, not a string", 123), ("an object", {"a": 1})]
    if not nullable and p.required and p.where in ("json",):
        out.append(("null", None))
    out += [(what, v) for what, v in SEMANTIC.get(p.name, [])
            if not (v == "" and p.where == "form")]  # an empty form field is one not given
    return [(f"{p.name}: {what}", value) for what, value in out]


SEMANTIC: dict[str, list[tuple[str, Any]]] = {
    "model": [("unknown", "nope"), ("path traversal", "../../etc/passwd"), ("an index out of range", "99"),
              ("negative index", "-1"), ("empty", ""), ("a NUL byte", "\x00"), ("non-ASCII", "模型"),
              ("a run's folder", "runs/cls")],
    "sampler": [("unknown", "nope"), ("upper case", "DDIM"), ("empty", ""),
                ("mix (corrupt runs only)", "mix")],
    "label": [("unknown class", "eleven"), ("out of range", "99"), ("negative", "-1"), ("empty", ""),
              ("two classes", "1,2"), ("all classes", "all")],
    "prompt": [("a prompt for a class run", "a cat")],
    "negative_prompt": [("a negative prompt for a class run", "a dog")],
    "guidance": [("guidance without a condition", 2.0)],
    "steps": [("more than the run's T", 60)],
    "t": [("the run's T", 50)],
    "index": [("past the data images", 32)],
    "job_id": [("unknown", "nope"), ("unknown hex", "0" * 32), ("path traversal", "../../etc/passwd"),
               ("dot-dot", ".."), ("over 64 characters", "a" * 65), ("a NUL byte", "\x00"),
               ("non-ASCII", "ジョブ")],
    "k": [("past the job's images", 1)],
}

# required values of a valid request, by parameter name (a route needing one not here stops the run)
VALID: dict[str, Any] = {"model": "cls", "t": 3, "k": 0}
CHEAP = {"steps": 2, "sampler": "ddim"}  # optional values that keep a valid request's job short
MODEL_FOR = {"/api/edit/upscale": "sr"}  # routes whose valid request needs the other run
MISFIT = {"/api/generate": "sr", "/api/explore/trajectory": "sr", "/api/edit/img2img": "sr",  # the run
          "/api/edit/inpaint": "sr", "/api/edit/interpolate": "sr", "/api/edit/upscale": "cls"}  # can't


def whole_faults(route: Any, method: str, params: list[Param], sizes: dict[str, bytes]) -> list[Fault]:
    """Faults of the request as a whole: method, body encoding, missing and extra fields."""
    out: list[Fault] = []
    allowed = set(route.methods) | ({"HEAD"} if "GET" in route.methods else set())
    for m in METHODS:
        if m not in allowed:
            out.append((f"method {m}", lambda r, m=m: setattr(r, "method", m)))
    body = next((p.where for p in params if p.where in ("json", "form")), None)

    def raw(content: bytes, ctype: str | None) -> Callable[[Request], None]:
        def apply(r: Request) -> None:
            r.content, r.headers = content, ({"content-type": ctype} if ctype else {})
        return apply

    if body == "json":
        js = "application/json"
        out += [("bad JSON", raw(b"{not json", js)), ("empty body", raw(b"", js)),
                ("a JSON list", raw(b"[1, 2]", js)), ("JSON null", raw(b"null", js)),
                ("nested 100000 deep", raw(b"[" * 100000, "application/json")),
                ("text/plain body", raw(b'{"model": "cls"}', "text/plain")),
                ("a form, not JSON", raw(b"model=cls", "application/x-www-form-urlencoded")),
                ("invalid UTF-8", raw(b'{"model": "\xff\xfe"}', "application/json")),
                ("extra field", lambda r: r.fields.update(colour="red"))]
    if body == "form":
        out += [("multipart without a boundary", raw(b"garbage", "multipart/form-data")),
                ("garbage multipart", raw(b"garbage", "multipart/form-data; boundary=X")),
                ("truncated multipart",
                 raw(b'--X\r\nContent-Disposition: form-data; name="model"\r\n\r\ncls\r\n--X',
                     "multipart/form-data; boundary=X")),
                ("JSON, not a form", raw(b'{"model": "cls"}', "application/json")),
                ("extra field", lambda r: r.fields.update(colour="red")),
                ("misspelt field", lambda r: r.fields.update(strenght="0.3"))]
    for p in params:
        if p.name == "model" and route.path in MISFIT:
            out.append((f"model: a run that cannot do this ({MISFIT[route.path]})",
                        set_value(p, MISFIT[route.path])))
        if p.required:
            out.append((f"{p.name}: missing", drop(p)) if p.where != "path" else
                       (f"{p.name}: traversal to a file", set_value(p, "..%2F..%2Fconfig.json")))
    return out


@dataclass
class Endpoint:
    route: str
    method: str
    base: Request
    faults: list[Fault]


def endpoints(app: Any, sizes: dict[str, bytes], job_id: Callable[[], str]) -> list[Endpoint]:
    """Every (route, method) of ``app`` with a valid request and the faults to draw from."""
    spec = app.openapi()
    out = []
    for route in app.routes:
        for method in sorted(m for m in getattr(route, "methods", None) or () if m != "HEAD"):
            params = params_of(route, spec, method)
            body = next((p.where for p in params if p.where in ("json", "form", "file")), None)
            base = Request(route.path, method, f"{method} {route.path}",
                           body="form" if body == "file" else body)
            for p in params:
                if p.where == "file" and p.name in sizes:
                    base.files[p.name] = (f"{p.name}.png", sizes[p.name], "image/png")
                elif p.name == "model":
                    set_value(p, MODEL_FOR.get(route.path, VALID["model"]))(base)
                elif p.name == "job_id":
                    set_value(p, job_id())(base)
                elif p.name in VALID:
                    set_value(p, VALID[p.name])(base)
                elif p.name in CHEAP and not p.required:
                    set_value(p, CHEAP[p.name])(base)
                elif p.required:
                    raise SystemExit(f"{method} {route.path}: no valid value known for its parameter "
                                     f"{p.name!r}; add one to VALID in benchmarks/soak_serve.py")
            faults = whole_faults(route, method, params, sizes)
            for p in params:
                for what, value in value_faults(p, sizes):
                    if isinstance(value, tuple) and value[0] == "upload":
                        faults.append((what, lambda r, p=p, v=value[1]: r.files.__setitem__(
                            p.name, (f"{p.name}.png", v, "image/png"))))
                    else:
                        faults.append((what, set_value(p, value)))
            out.append(Endpoint(route.path, method, base, faults))
    return out


def faulty(ep: Endpoint, faults: list[Fault]) -> Request:
    r = deepcopy(ep.base)
    for what, apply in faults:
        apply(r)
        r.faults.append(what)
    return r


def draw(eps: list[Endpoint], n: int, seed: int) -> list[Request]:
    """Every fault of every endpoint alone, in a random order, then ``n`` requests with one or two
    faults drawn at random, the endpoints in turn."""
    rng = random.Random(seed)
    out = [faulty(ep, [f]) for ep in eps for f in ep.faults]
    rng.shuffle(out)
    for i in range(n):
        ep = eps[i % len(eps)]
        out.append(faulty(ep, rng.sample(ep.faults, k=min(len(ep.faults), rng.choice((1, 1, 2))))))
    return out


@dataclass
class Tally:
    tried: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)  # "route status-class"
    problems: list[str] = field(default_factory=list)
    server_errors: int = 0
    tracebacks: int = 0
    memory_mib: tuple[float, float] = (0.0, 0.0)  # after every fault alone, after the random ones


def check_answer(r: Request, resp: httpx.Response, tally: Tally) -> None:
    key = r.endpoint
    tally.tried[key] += 1
    tally.statuses[f"{key} {resp.status_code // 100}xx"] += 1
    what = f"{r.method} {r.url()[:120]} ({'; '.join(r.faults)}) -> {resp.status_code}"
    if resp.status_code >= 500:
        tally.server_errors += 1
    if any(t in resp.text for t in TRACEBACK):
        tally.tracebacks += 1
        tally.problems.append(f"{what}: a traceback in the body")
    if not 400 <= resp.status_code < 500:
        tally.problems.append(f"{what}: not a 4xx: {resp.text[:200]}")
        return
    try:
        detail = resp.json()["detail"]
    except (ValueError, KeyError, TypeError):
        tally.problems.append(f"{what}: not JSON with a detail: {resp.text[:200]}")
        return
    if not isinstance(detail, str) or not detail or "\n" in detail:
        tally.problems.append(f"{what}: not a one-line message: {detail!r}")


def valid_request(served: Served, ep: Endpoint) -> str | None:
    """Send ``ep``'s valid request; a problem, or None. A job it starts is waited for."""
    resp = ep.base.send(served.client)
    if not 200 <= resp.status_code < 300:
        return f"the valid {ep.method} {ep.base.url()} got {resp.status_code}: {resp.text[:200]}"
    if resp.status_code == 202:
        state = served.wait(resp.json()["id"])["state"]
        if state != "done":
            return f"the valid {ep.method} {ep.base.url()} ended {state}"
    return None


def fuzz(served: Served, app: Any, n: int, seed: int) -> Tally:
    """Each endpoint's valid request, every fault alone, ``n`` more fuzzed requests, then a
    generation that must still work."""
    sizes = uploads()
    first = served.client.post("/api/generate", json={"model": "cls", **CHEAP})
    job = served.wait(first.json()["id"])["id"]
    eps = endpoints(app, sizes, lambda: job)
    tally = Tally()
    for ep in eps:
        if problem := valid_request(served, ep):
            tally.problems.append(problem)
    requests = draw(eps, n, seed)
    singles = sum(len(ep.faults) for ep in eps)
    for i, r in enumerate(requests):
        if i == singles:
            tally.memory_mib = (served.rss_mib(), 0.0)
        try:
            resp = r.send(served.client)
        except httpx.HTTPError as err:
            tally.problems.append(f"{r.method} {r.url()[:120]} ({'; '.join(r.faults)}): no answer: {err!r}")
            continue
        check_answer(r, resp, tally)
        if resp.status_code == 202:  # a fault that was not one: let the job end
            served.wait(resp.json()["id"])
    tally.memory_mib = (tally.memory_mib[0] or served.rss_mib(), served.rss_mib())
    after = served.client.post("/api/generate", json={"model": "cls", "steps": 2})
    if after.status_code != 202 or served.wait(after.json()["id"])["state"] != "done":
        tally.problems.append(f"a valid generation after the fuzzing failed: {after.text[:200]}")
    return tally


def app_of(runs: list[Path]) -> Any:
    """The app the server builds, here for its routes and OpenAPI document (no request reaches it)."""
    from difflab.serve.app import create_app
    from difflab.serve.models import load_models

    return create_app(load_models(runs, "cpu"))


# ---- bursts ------------------------------------------------------------------------------------------------
@dataclass
class Burst:
    answered: int
    accepted: int
    refused: int
    other: list[str]
    waiting_max: int


def burst(served: Served, size: int, seed: int = 0) -> Burst:
    """``size`` concurrent generation requests (one connection each) while the worker is held."""
    served.brake("hold")
    answers: list[httpx.Response | Exception] = []
    lock = threading.Lock()
    start = threading.Barrier(size)
    tls = ssl.create_default_context()

    def post(i: int) -> None:
        start.wait()
        try:  # a client (so a connection) each, sharing one TLS context: building one costs ~30 ms
            r: httpx.Response | Exception = httpx.post(f"{served.base}/api/generate", timeout=60, verify=tls,
                                                       json={"model": "cls", "seed": seed + i, **CHEAP})
        except httpx.HTTPError as err:
            r = err
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    waiting = max(q["waiting"] for q in served.client.get("/api/queue").json().values())
    accepted = [a.json()["id"] for a in answers if isinstance(a, httpx.Response) and a.status_code == 202]
    refused = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503]
    other = [repr(a) if isinstance(a, Exception) else f"{a.status_code} {a.text[:100]}" for a in answers
             if not isinstance(a, httpx.Response) or a.status_code not in (202, 503)]
    other += [f"503 without a Retry-After >= 1: {a.headers}" for a in refused
              if not a.headers.get("Retry-After", "").isdigit() or int(a.headers["Retry-After"]) < 1]
    served.brake("")
    for j in accepted:
        served.wait(j)
    return Burst(len(answers), len(accepted), len(refused), other, waiting)


# ---- oversize bodies on a raw socket ----------------------------------------------------------------------
BOUNDARY = "soakboundary"


def multipart_head(name: str = "image") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\ncls\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()


def read_response(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """The status and body of the first response on ``sock`` (0, b"" if none came in time)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, b""
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        while length and len(body) < int(length.group(1)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except (TimeoutError, ConnectionError):
        return 0, b""
    return int(head.split()[1]), body[: int(length.group(1))] if length else body


def chunked_oversize(served: Served, path: str = "/api/edit/img2img", over: int = 256 * 1024,
                     timeout: float = 10.0) -> tuple[int, bytes, int]:
    """A multipart body without a Content-Length (chunked), ``over`` bytes past the server's limit,
    then nothing more (the final chunk never comes): the status and body of the answer and the
    bytes sent. A server that waits for the whole body before refusing it never answers."""
    from difflab.serve.app import MAX_BODY

    with socket.create_connection(("127.0.0.1", served.port), timeout=timeout) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode())
        sent, piece = 0, multipart_head()
        try:
            while sent <= MAX_BODY + over and not select.select([sock], [], [], 0)[0]:  # no answer yet
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
                piece = b"\0" * 65536
        except ConnectionError:  # the server answered and closed while this was still sending
            pass
        status, body = read_response(sock, timeout)
    return status, body, sent


def lying_length(served: Served, path: str = "/api/edit/img2img", claimed: int = 1000,
                 timeout: float = 10.0) -> tuple[int, bytes]:
    """A file over the upload limit in a body whose Content-Length claims only ``claimed`` bytes:
    the server must read what was claimed, and answer for the (cut) form alone."""
    from difflab.serve import limits

    body = multipart_head() + b"\0" * (limits.MAX_UPLOAD_BYTES + 1) + f"\r\n--{BOUNDARY}--\r\n".encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=timeout) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {claimed}\r\n"
                     f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode()
                     + body[:claimed])
        status, answer = read_response(sock, timeout)
        with contextlib.suppress(ConnectionError):  # the rest: taken as the next request, and refused
            sock.sendall(body[claimed:])
    return status, answer


# ---- disconnects ------------------------------------------------------------------------------------------
def leave_stream(served: Served, job: dict[str, Any], reset: bool) -> None:
    """Read ``job``'s event stream until a step is done, then leave: close the stream, or reset
    the connection (SO_LINGER 0: the server sees a dead socket, not a goodbye)."""
    if not reset:
        with served.client.stream("GET", job["events"]) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and json.loads(line[5:]).get("step", 0) >= 1:
                    return
        return
    with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
        sock.sendall(f"GET {job['events']} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        seen = b""
        while not re.search(rb'"step": ?[1-9]', seen):
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen = seen[-4096:] + chunk
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@dataclass
class Leaving:
    rounds: int = 0
    cancelled: int = 0
    slowest_cancel_s: float = 0.0
    slowest_next_start_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    threads_first: int = 0
    threads_last: int = 0


def disconnects(served: Served, rounds: int, step_delay: float = 0.03, steps: int = 40) -> Leaving:
    """``rounds`` jobs left mid-generation (streams closed and connections reset in turn); after
    each, the job must be cancelled, the next job start at once, and no job be left."""
    out = Leaving()
    for i in range(rounds):
        served.brake(str(step_delay))
        job = served.client.post("/api/generate", json={"model": "cls", "steps": steps, "sampler": "ddim",
                                                        "seed": i}).json()
        leave_stream(served, job, reset=i % 2 == 1)
        t0 = time.monotonic()
        s = served.wait(job["id"], timeout=30)
        out.slowest_cancel_s = max(out.slowest_cancel_s, time.monotonic() - t0)
        out.rounds += 1
        if s["state"] == "cancelled" and s["step"] < steps:
            out.cancelled += 1
        else:
            out.problems.append(f"round {i}: the job left mid-way ended {s['state']} at step {s['step']}")
        served.brake("")
        t0 = time.monotonic()
        nxt = served.client.post("/api/generate", json={"model": "cls", **CHEAP}).json()
        served.wait(nxt["id"], ("running", *FINAL), timeout=30)
        out.slowest_next_start_s = max(out.slowest_next_start_s, time.monotonic() - t0)
        if served.wait(nxt["id"])["state"] != "done":
            out.problems.append(f"round {i}: the next job did not finish")
        if not served.idle():
            queue = served.client.get("/api/queue").text
            out.problems.append(f"round {i}: a job is left running or waiting: {queue}")
        if i == 0:
            out.threads_first = served.threads()
    out.threads_last = served.threads()
    return out


# ---- the report ------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30000,
                    help="fuzzed requests after every fault alone (default: 30000)")
    ap.add_argument("--bursts", type=int, default=100, help="bursts after the warm-up one (default: 100)")
    ap.add_argument("--burst-size", type=int, default=100, help="concurrent requests a burst (default: 100)")
    ap.add_argument("--disconnects", type=int, default=300, help="jobs left mid-way (default: 300)")
    ap.add_argument("--queue-size", type=int, default=8, help="jobs waiting per model (default: 8)")
    ap.add_argument("--margin-mib", type=float, default=16.0,
                    help="allowed memory growth over the random fuzzing, and from the warm-up burst to the "
                         "end, MiB (default: 16.0)")
    ap.add_argument("--seed", type=int, default=0, help="the fuzzer's seed (default: 0)")
    args = ap.parse_args()
    import torch

    from bench_common import exit_on_missed, load_report, machine_report

    machine_report(torch.device("cpu"))
    missed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        t_start = time.monotonic()
        runs = tiny_runs(Path(tmp))
        served = Served(runs, args.queue_size, Path(tmp) / "server")
        try:
            t0 = time.monotonic()
            tally = fuzz(served, app_of(runs), args.requests, args.seed)
            fuzz_s, fuzz_mem = time.monotonic() - t0, tally.memory_mib
            t0 = time.monotonic()
            warm = burst(served, args.burst_size)
            mem_warm = served.rss_mib()
            bursts = [burst(served, args.burst_size, seed=1000 * (k + 1)) for k in range(args.bursts)]
            mem_after = served.rss_mib()
            burst_s = time.monotonic() - t0
            t0 = time.monotonic()
            leaving = disconnects(served, args.disconnects)
            leave_s = time.monotonic() - t0
            mem_end = served.rss_mib()
            alive = served.alive()
            log_tracebacks = served.tracebacks_in_log()
        finally:
            code = served.close()
        total_s = time.monotonic() - t_start

    print(f"\n## difflab serve soak: {args.requests} fuzzed requests ({fuzz_s:.0f} s), "
          f"{1 + args.bursts} bursts of {args.burst_size} ({burst_s:.0f} s), {args.disconnects} "
          f"disconnects ({leave_s:.0f} s); {total_s:.0f} s in all\n")
    print("| endpoint | tried | 4xx | 2xx | 5xx |\n|---|---|---|---|---|")
    for key in sorted(tally.tried):
        c = [tally.statuses[f"{key} {k}xx"] for k in (4, 2, 5)]
        print(f"| `{key}` | {tally.tried[key]} | {c[0]} | {c[1]} | {c[2]} |")
    classes = [sum(v for k, v in tally.statuses.items() if k.endswith(f" {c}xx")) for c in (4, 2, 5)]
    print(f"| **all** | **{sum(tally.tried.values())}** | " + " | ".join(f"**{c}**" for c in classes) + " |")
    accepted = [b.accepted for b in [warm, *bursts]]
    print("\n| what | measured | goal |\n|---|---|---|")
    rows = [
        ("fuzzed answers not a one-line JSON 4xx", len(tally.problems), "0"),
        ("5xx answers / tracebacks in bodies / in the server log",
         f"{tally.server_errors} / {tally.tracebacks} / {log_tracebacks}", "0 / 0 / 0"),
        (f"bursts: answered of {args.burst_size}", f"{min(b.answered for b in [warm, *bursts])} (least)",
         f"{args.burst_size}"),
        (f"bursts: accepted (queue {args.queue_size} + 1 running)", f"{min(accepted)}..{max(accepted)}",
         f"<= {args.queue_size + 1}"),
        ("bursts: other answers (not 202, not 503 with Retry-After)",
         sum(len(b.other) for b in [warm, *bursts]), "0"),
        ("server memory after every fault alone / after the random fuzzing",
         f"{fuzz_mem[0]:.1f} / {fuzz_mem[1]:.1f} MiB ({fuzz_mem[1] - fuzz_mem[0]:+.1f})",
         f"growth < {args.margin_mib:g} MiB"),
        ("server memory after the warm-up burst / the other bursts / the disconnects",
         f"{mem_warm:.1f} / {mem_after:.1f} / {mem_end:.1f} MiB ({mem_end - mem_warm:+.1f})",
         f"growth < {args.margin_mib:g} MiB"),
        ("disconnects: jobs cancelled", f"{leaving.cancelled} of {leaving.rounds}", "all"),
        ("disconnects: slowest cancel / next job's start",
         f"{leaving.slowest_cancel_s * 1e3:.0f} / {leaving.slowest_next_start_s * 1e3:.0f} ms", ""),
        ("disconnects: problems (a job left running or waiting, a next job not done)",
         len(leaving.problems), "0"),
        ("server threads after the first disconnect / after the last",
         f"{leaving.threads_first} / {leaving.threads_last}", "no growth"),
        ("server exit status after a graceful shutdown", code, "0"),
    ]
    for what, got, goal in rows:
        print(f"| {what} | {got} | {goal} |")
    for p in (tally.problems + leaving.problems + [o for b in [warm, *bursts] for o in b.other])[:20]:
        print("  problem:", p)
    print(load_report("at the end"))

    if tally.problems:
        missed.append(f"{len(tally.problems)} fuzzed answers were not one-line JSON 4xx")
    if tally.server_errors or tally.tracebacks or log_tracebacks:
        missed.append(f"{tally.server_errors} 5xx, {tally.tracebacks + log_tracebacks} tracebacks")
    if any(b.answered != args.burst_size or b.other for b in [warm, *bursts]):
        missed.append("a burst request was not answered with 202 or 503 + Retry-After")
    if max(accepted) > args.queue_size + 1 or max(b.waiting_max for b in [warm, *bursts]) > args.queue_size:
        missed.append(f"the queue bound was passed: {max(accepted)} accepted")
    if fuzz_mem[1] - fuzz_mem[0] >= args.margin_mib:
        missed.append(f"memory grew {fuzz_mem[1] - fuzz_mem[0]:.1f} MiB over the random fuzzing")
    if max(mem_after, mem_end) - mem_warm >= args.margin_mib:
        missed.append(f"memory grew {max(mem_after, mem_end) - mem_warm:.1f} MiB after the warm-up burst")
    if leaving.problems or leaving.cancelled != leaving.rounds:
        missed.append(f"disconnects: {len(leaving.problems)} problems")
    if leaving.threads_last > leaving.threads_first:
        missed.append(f"threads grew from {leaving.threads_first} to {leaving.threads_last}")
    if not alive or code != 0:
        missed.append(f"the server crashed or did not exit cleanly (status {code})")
    exit_on_missed(missed, "difflab serve soak goals missed")


if __name__ == "__main__":
    main()
