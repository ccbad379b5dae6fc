"""``difflab serve`` under faults, on a real server on 127.0.0.1 (its own process, tiny trained
runs): fuzzed requests to every route of the app get a one-line JSON 4xx and never a 5xx or a
traceback; 100 concurrent generation requests are all answered within the queue bound and leave
the server's memory flat; clients that leave mid-generation free the worker and leak no job or
thread; oversize bodies (chunked, with a lying Content-Length), decompression bombs and
non-images are refused. The machinery is ``benchmarks/soak_serve.py``'s, here with small counts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from difflab.serve.app import MAX_BODY

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import soak_serve as ss  # noqa: E402

QUEUE = 4
MEMORY_MARGIN_MIB = 8.0  # resident memory may grow this much over two bursts after a warm-up one


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return ss.tiny_runs(tmp_path_factory.mktemp("serve-faults"))


@pytest.fixture(scope="module")
def served(runs, tmp_path_factory):
    server = ss.Served(runs, QUEUE, tmp_path_factory.mktemp("server"))
    yield server
    server.close()


def one_line_json(resp: httpx.Response, status: int, words: str) -> None:
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert words in detail and "\n" not in detail, detail
    assert not any(t in resp.text for t in ss.TRACEBACK)


def test_every_fuzzed_request_gets_a_one_line_4xx(served, runs):
    app = ss.app_of(runs)
    tally = ss.fuzz(served, app, 200, seed=0)
    assert tally.problems == []
    assert (tally.server_errors, tally.tracebacks, served.tracebacks_in_log()) == (0, 0, 0)
    routes = {f"{m} {r.path}" for r in app.routes for m in r.methods if m != "HEAD"}
    assert set(tally.tried) == routes  # every endpoint, the ones without parameters too
    assert min(tally.tried.values()) >= 9 and sum(tally.tried.values()) >= 900
    assert all(k.endswith(" 4xx") for k in tally.statuses)
    print("\nfuzzed requests per endpoint:", dict(sorted(tally.tried.items())))


@pytest.mark.parametrize(("path", "form", "status", "words"), [
    ("/api/edit/img2img", {"model": "cls", "strenght": "0.3"}, 422, "unknown field 'strenght'"),
    ("/api/edit/upscale", {"model": "sr", "sampler": "nope"}, 422, "sampler: Value error, unknown sampler"),
    ("/api/edit/img2img", {"model": "sr"}, 422, "model sr (lowres) cannot img2img: its edits are upscale"),
    ("/api/edit/inpaint", {"model": "sr"}, 422, "cannot inpaint"),
], ids=["misspelt-form-field", "form-sampler", "img2img-on-upscaler", "inpaint-on-upscaler"])
def test_what_the_fuzzing_found(served, path, form, status, words):
    """Before the fixes these were accepted (then failed in the worker, or left the misspelt field
    at its default) or answered with pydantic's multi-line message."""
    sizes = ss.uploads()
    files = {"image": ("a.png", sizes["image"], "image/png")}
    if path.endswith("inpaint"):
        files["mask"] = ("m.png", sizes["mask"], "image/png")
    one_line_json(served.client.post(path, data=form, files=files), status, words)


def test_a_hundred_concurrent_requests_keep_the_bound_and_the_memory(served):
    warm = ss.burst(served, 100)
    before = served.rss_mib()
    bursts = [ss.burst(served, 100, seed=1000 * k) for k in (1, 2)]
    after = served.rss_mib()
    for b in (warm, *bursts):
        assert b.answered == 100 and b.other == []  # every one 202, or 503 with Retry-After
        assert QUEUE <= b.accepted <= QUEUE + 1 and b.accepted + b.refused == 100
        assert b.waiting_max <= QUEUE
    assert after - before < MEMORY_MARGIN_MIB, (before, after)
    assert served.alive() and served.idle()


def test_clients_that_leave_mid_generation_free_the_worker(served):
    leaving = ss.disconnects(served, 6)  # streams closed and connections reset, in turn
    assert leaving.problems == [] and leaving.cancelled == leaving.rounds == 6
    assert leaving.slowest_next_start_s < 2.0  # the worker was free at once
    assert leaving.threads_last <= leaving.threads_first  # the server process's threads
    assert served.idle()


def test_oversize_and_bad_uploads_are_refused(served):
    status, body, sent = ss.chunked_oversize(served)  # the final chunk never comes
    assert sent > MAX_BODY and status == 413, (status, body[:200])
    assert json.loads(body)["detail"] == f"the request body is larger than {MAX_BODY} bytes"
    status, body = ss.lying_length(served)  # claims 1,000 bytes, sends 4 MiB more
    assert 400 <= status < 500 and "\n" not in json.loads(body)["detail"], (status, body[:200])
    sizes = ss.uploads()
    for data, status, words in ((sizes["bomb"], 413, "pixels, the limit"),
                                (sizes["oversize"], 413, "the limit is"),
                                (b"not a picture", 422, "not a PNG, JPEG, WebP or BMP image")):
        r = served.client.post("/api/edit/img2img", data={"model": "cls"},
                               files={"image": ("a.png", data, "image/png")})
        one_line_json(r, status, words)
    after = served.client.post("/api/generate", json={"model": "cls", **ss.CHEAP})
    assert served.wait(after.json()["id"])["state"] == "done"


def test_the_server_stops_cleanly(served):
    assert served.tracebacks_in_log() == 0
    assert served.close() == 0
