"""``difflab serve``: every endpoint of the API against the library computing the same thing
independently, bad parameters, the queue bound under 20 concurrent requests, cancel and
disconnect freeing the worker, refused uploads, and the PNG text chunk's command line
reproducing the image."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
import httpx
import uvicorn
from fastapi.testclient import TestClient

from difflab.diffusion import Denoiser, q_sample
from difflab.noise import generators_from_seeds
from difflab.samplers import SAMPLERS
from difflab.serve import limits
from difflab.serve.app import create_app
from difflab.serve.images import COMMAND_KEY, PARAMS_KEY, png_text
from difflab.serve.models import load_models
from difflab.viz import to_uint8

FINAL = ("done", "failed", "cancelled")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "difflab.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def train_tiny(out: Path, *extra: str) -> Path:
    """A run trained for 6 steps on 8x8 digits (seconds): real files, log.jsonl included."""
    done = cli("train", "--data", "digits", "--image-size", "8", "--steps", "6", "--batch-size", "8",
               "--base-channels", "8", "--channel-mult", "1,2", "--T", "50", "--sample-every", "6",
               "--out", out,
               "--no-progress", "--device", "cpu", *extra)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return {"cls": train_tiny(root / "cls", "--cond", "class"),
            "sr": train_tiny(root / "sr", "--image-size", "16", "--cond", "lowres", "--factor", "2")}


@pytest.fixture(scope="module")
def models(runs):
    return load_models([runs["cls"], runs["sr"]], "cpu")


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(models, queue_size=4), raise_server_exceptions=False) as c:
        yield c


def wait(client, job_id, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = client.get(f"/api/jobs/{job_id}").json()
        if s["state"] in FINAL:
            return s
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish: {s}")


def run_job(client, path, **kwargs):
    r = client.post(path, **kwargs)
    assert r.status_code == 202, r.text
    s = wait(client, r.json()["id"])
    assert s["state"] == "done", s
    return s


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def no_traceback(r):
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"], r.text


# ---- models, page, documentation ------------------------------------------------------------------
def test_models_describe_the_runs(client, runs):
    body = client.get("/api/models").json()
    cls, sr = body["models"]
    assert (cls["name"], cls["kind"], sr["kind"]) == ("cls", "class", "lowres")
    assert cls["class_names"] == [str(i) for i in range(10)] and sr["class_names"] == []
    assert cls["samplers"] == list(SAMPLERS)
    assert cls["config"] == json.loads((runs["cls"] / "config.json").read_text())
    assert (cls["image_shape"], sr["image_shape"], sr["lowres_factor"]) == ([1, 8, 8], [1, 16, 16], 2)
    assert cls["edits"] == ["inpaint", "img2img", "interpolate"] and sr["edits"] == ["upscale"]
    assert body["limits"]["max_images"] == limits.MAX_IMAGES


def test_openapi_documents_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/models", "/api/generate", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events",
              "/api/jobs/{job_id}/cancel", "/api/jobs/{job_id}/images/{k}.png", "/api/models/{model}/card",
              "/api/explore/{model}/forward", "/api/explore/{model}/schedule", "/api/explore/{model}/data",
              "/api/edit/img2img", "/api/edit/inpaint", "/api/edit/interpolate", "/api/edit/upscale",
              "/api/explore/trajectory"):
        assert p in paths, p


def test_api_reference_page_works_offline(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "://" not in r.text  # Swagger UI's CDN script is not used
    generate = r.text.split("<code>/api/generate</code>")[1].split("</section>")[0]
    assert "<code>n</code> <i>integer (minimum 1" in generate and f"maximum {limits.MAX_IMAGES}" in generate


def test_page_is_served_from_the_package_and_no_path_reaches_files(client, runs):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    body = page.text.split("<body>")[1]
    assert 'src="/app.js"' in page.text and "http" not in body  # nothing from elsewhere: works offline
    assert "javascript" in client.get("/app.js").headers["content-type"]
    assert "text/css" in client.get("/style.css").headers["content-type"]
    secret = runs["cls"] / "config.json"
    for path in ("/../config.json", "/static/../app.py", "/app.py", f"/{secret}", "/%2e%2e/%2e%2e/etc/passwd",
                 "/api/models/..%2F..%2Fetc%2Fpasswd/card", f"/api/models/{secret}/card"):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "root:" not in r.text and '"net"' not in r.text


# ---- generation -------------------------------------------------------------------------------------
def test_generated_images_are_the_pipelines_and_carry_their_command(client, models, tmp_path):
    s = run_job(client, "/api/generate", json={"model": "cls", "n": 3, "seed": 5, "steps": 4, "label": "7",
                                               "guidance": 2.0, "sampler": "ddim"})
    assert s["step"] == s["total"] == 4 and len(s["images"]) == 3
    pipe = models[0].pipe
    want = to_uint8(pipe.sample(3, sampler="ddim", steps=4, seed=5, class_labels=[7] * 3, guidance=2.0))
    for k, url in enumerate(s["images"]):
        r = client.get(url)
        assert r.headers["content-type"] == "image/png"
        np.testing.assert_array_equal(png_pixels(r.content), want[k])
        text = png_text(r.content)
        params = json.loads(text[PARAMS_KEY])
        assert params == {**s["params"], "image": k, "image_seed": 5 + k}
        assert text[COMMAND_KEY] == s["commands"][k]
    # the command line stored in image 2 draws image 2, byte for byte
    from difflab.cli import main

    args = shlex.split(png_text(client.get(s["images"][2]).content)[COMMAND_KEY])
    assert args[:2] == ["difflab", "sample"] and "--seed" in args and args[args.index("--seed") + 1] == "7"
    assert main([*args[1:], "--out", str(tmp_path / "grid.png"), "--save-dir", str(tmp_path / "one")]) == 0
    (one,) = sorted((tmp_path / "one").glob("*.png"))
    np.testing.assert_array_equal(png_pixels(one.read_bytes()), want[2])


def test_event_stream_reports_progress_and_previews(client):
    r = client.post("/api/generate", json={"model": "cls", "n": 2, "steps": 6, "sampler": "ddim"})
    with client.stream("GET", r.json()["events"]) as stream:
        text = "".join(stream.iter_text())
    events = [(b.split("\n")[0].removeprefix("event: "), json.loads(b.split("data: ", 1)[1]))
              for b in text.strip().split("\n\n") if b.startswith("event:")]
    names = [e for e, _ in events]
    assert names[-1] == "done" and names[:-1] == ["progress"] * (len(names) - 1)
    steps = [d["step"] for e, d in events if e == "progress"]
    assert steps == sorted(steps) and steps[-1] == 6
    previews = [d["preview"] for e, d in events if e == "progress" and "preview" in d]
    assert previews and all(p.startswith("data:image/png;base64,") for p in previews)
    assert events[-1][1]["images"] and events[-1][1]["state"] == "done"


BAD = [
    ({"n": 0}, 422, "n: Input should be greater than or equal to 1"),
    ({"n": limits.MAX_IMAGES + 1}, 422, f"less than or equal to {limits.MAX_IMAGES}"),
    ({"steps": 0}, 422, "steps"),
    ({"steps": limits.MAX_STEPS + 1}, 422, "steps"),
    ({"steps": 60}, 422, "at most the model's T = 50"),
    ({"seed": -1}, 422, "seed"),
    ({"guidance": limits.MAX_GUIDANCE + 1, "label": "1"}, 422, "guidance"),
    ({"guidance": 2.0}, 422, "needs a condition"),
    ({"prompt": "a cat"}, 422, "not text-conditional"),
    ({"prompt": "x" * (limits.MAX_PROMPT + 1)}, 422, "prompt: String should have at most"),
    ({"label": "eleven"}, 422, "unknown class 'eleven'"),
    ({"label": "1,2"}, 422, "one class"),
    ({"sampler": "nope"}, 422, "unknown sampler 'nope'"),
    ({"sampler": "mix"}, 422, "corrupt"),
    ({"colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"model": "nope"}, 404, "no model 'nope' is served; the models are: cls, sr"),
    ({"model": "sr"}, 422, "upscales images"),
]


@pytest.mark.parametrize(("change", "status", "message"), BAD, ids=[m for *_, m in BAD])
def test_bad_generation_parameters(client, change, status, message):
    r = client.post("/api/generate", json={"model": "cls", **change})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    no_traceback(r)


def test_bad_paths_and_states(client):
    for path, status in (("/api/jobs/nope", 404), ("/api/jobs/nope/events", 404),
                         ("/api/models/zz/card", 404),
                         ("/api/explore/cls/forward?t=50", 422), ("/api/explore/cls/forward?t=-1", 422),
                         ("/api/explore/cls/forward", 422), ("/api/explore/cls/forward?t=3&index=999", 422)):
        r = client.get(path)
        assert r.status_code == status, (path, r.text)
        no_traceback(r)
    assert client.post("/api/jobs/nope/cancel").status_code == 404
    r = client.post("/api/generate", json={"model": "cls", "n": 1, "steps": 2})
    s = wait(client, r.json()["id"])
    assert client.get(f"/api/jobs/{s['id']}/images/1.png").status_code == 404
    assert client.post("/api/generate", content=b"{not json", headers={"content-type": "application/json"}
                       ).status_code == 422


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("serve-text") / "txt", "--cond", "text")


def test_a_text_run_draws_what_the_pipeline_draws_for_the_prompt(text_run):
    models = load_models([text_run], "cpu")
    with TestClient(create_app(models), raise_server_exceptions=False) as c:
        info = c.get("/api/models").json()["models"][0]
        assert (info["kind"], info["class_names"]) == ("text", [])
        body = {"model": "txt", "prompt": "a handwritten 3", "negative_prompt": "a handwritten 8",
                "guidance": 2.0, "steps": 3, "n": 2, "sampler": "ddim", "seed": 4}
        s = run_job(c, "/api/generate", json=body)
        want = to_uint8(models[0].pipe.sample(2, sampler="ddim", steps=3, seed=4, prompts="a handwritten 3",
                                              negative_prompts="a handwritten 8", guidance=2.0))
        for k, url in enumerate(s["images"]):
            np.testing.assert_array_equal(png_pixels(c.get(url).content), want[k])
        command = "--prompt 'a handwritten 3' --negative-prompt 'a handwritten 8' --guidance 2"
        assert command in s["commands"][0]
        r = c.post("/api/generate", json={"model": "txt", "label": "3"})
        assert r.status_code == 422 and "not class-conditional" in r.json()["detail"]
        assert c.get("/api/explore/txt/forward", params={"t": 10}).status_code == 200


# ---- explore and the model card ---------------------------------------------------------------------
def test_forward_process_is_the_closed_form(client, models):
    m = models[0]
    r = client.get("/api/explore/cls/forward", params={"t": 30, "index": 4, "seed": 9})
    assert r.status_code == 200, r.text
    body = r.json()
    from difflab.data import load_dataset

    data = load_dataset(m.pipe.config.data)
    index = round(4 * (len(data) - 1) / 31)  # the fifth of 32 images spread over the set
    x0 = data.batch(torch.tensor([index]))[0].float()
    ab = m.pipe.schedule.alphas_cumprod[30]
    assert body["alpha_bar"] == pytest.approx(float(ab), rel=1e-12)
    assert body["log_snr"] == pytest.approx(float(torch.log(ab / (1 - ab))), rel=1e-9)
    eps = torch.randn(1, 8, 8, generator=generators_from_seeds([9])[0])[None]
    x_t = ab.sqrt().float() * x0 + (1 - ab).sqrt().float() * eps
    torch.testing.assert_close(q_sample(m.pipe.schedule, x0, torch.tensor([30]), eps), x_t)
    with torch.no_grad():
        out = Denoiser(m.pipe.net, m.pipe.schedule, m.pipe.config.prediction)(x_t, 30)
    assert body["noise_mse"] == pytest.approx(float(((out.eps - eps) ** 2).mean()), rel=1e-4)
    import base64

    def decoded(key):
        return png_pixels(base64.b64decode(body[key].split(",", 1)[1]))[::8, ::8]  # shown enlarged x8

    np.testing.assert_array_equal(decoded("xt"), to_uint8(x_t)[0])
    np.testing.assert_array_equal(decoded("x0"), to_uint8(x0)[0])
    np.testing.assert_array_equal(decoded("x0_hat"), to_uint8(out.x0.clamp(-1, 1))[0])
    moved = client.get("/api/explore/cls/forward", params={"t": 45, "index": 4, "seed": 9}).json()
    assert moved["xt"] != body["xt"] and moved["x0"] == body["x0"]


def test_trajectory_frames_end_at_the_sample(client, models):
    body = {"model": "cls", "steps": 5, "seed": 2, "sampler": "ddim", "label": "4"}
    s = run_job(client, "/api/explore/trajectory", json=body)
    assert len(s["images"]) == 10 and s["total"] == 5
    frames = [png_pixels(client.get(u).content) for u in s["images"]]
    pipe = models[0].pipe
    x0s: list[torch.Tensor] = []
    sample = pipe.sample(1, sampler="ddim", steps=5, seed=2, class_labels=[4],
                         callback=lambda i, t, x, x0: x0s.append(x0.clamp(-1, 1)))
    np.testing.assert_array_equal(frames[4], to_uint8(sample)[0])  # the last x_t is the sample
    for k in range(5):
        np.testing.assert_array_equal(frames[5 + k], to_uint8(x0s[k])[0])
    assert s["commands"][4].startswith("difflab sample") and s["commands"][3] == ""
    r = client.post("/api/explore/trajectory", json={"model": "cls", "steps": limits.MAX_TRAJECTORY + 1})
    assert r.status_code == 422 and "at most" in r.json()["detail"]


def test_schedule_curves(client, models):
    c = client.get("/api/explore/cls/schedule", params={"points": 11}).json()
    ab = models[0].pipe.schedule.alphas_cumprod
    assert c["T"] == 50 and c["t"][0] == 0 and c["t"][-1] == 49 and len(c["t"]) == 11
    np.testing.assert_allclose(c["alpha_bar"], ab[c["t"]].numpy(), rtol=1e-12)
    np.testing.assert_allclose(c["log_snr"], torch.log(ab[c["t"]] / (1 - ab[c["t"]])).numpy(), rtol=1e-9)
    assert client.get("/api/explore/cls/schedule", params={"points": 1}).status_code == 422


def test_data_images_and_model_card(client, runs):
    data = client.get("/api/explore/cls/data").json()
    assert data["source"] == "data" and data["count"] == len(data["images"]) == 32
    card = client.get("/api/models/cls/card").json()
    log = [json.loads(line) for line in (runs["cls"] / "log.jsonl").read_text().splitlines()]
    assert card["loss"] == [[r["step"], r["loss"]] for r in log if "loss" in r]
    assert card["config"] == json.loads((runs["cls"] / "config.json").read_text())
    net = load_models([runs["cls"]], "cpu")[0].pipe.net
    assert card["parameters"] == sum(p.numel() for p in net.parameters())
    assert card["steps_trained"] == 6 and card["latest_eval"] is None


def test_model_card_evaluation_curves(runs, tmp_path):
    import shutil

    run = tmp_path / "evaluated"
    shutil.copytree(runs["cls"], run)
    records = [{"step": 3, "eval": {"fd-digit": 40.0, "confident-digit": 0.5}},
               {"step": 6, "eval": {"fd-digit": 25.0, "confident-digit": 0.75}}]
    with (run / "log.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records) + '{"step": 7, "cut')  # cut last line
    with TestClient(create_app(load_models([run], "cpu"))) as c:
        card = c.get("/api/models/evaluated/card").json()
    assert card["eval"] == [{"step": r["step"], **r["eval"]} for r in records]
    assert card["latest_eval"] == {"step": 6, "fd-digit": 25.0, "confident-digit": 0.75}


# ---- edits and uploads --------------------------------------------------------------------------------
def png_upload(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_inpaint_keeps_the_unmasked_pixels(client):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    files = {"image": ("a.png", png_upload(image), "image/png"),
             "mask": ("m.png", png_upload(mask), "image/png")}
    s = run_job(client, "/api/edit/inpaint", data={"model": "cls", "steps": 5, "method": "replace", "n": "2"},
                files=files)
    assert s["total"] == 5 and len(s["images"]) == 2
    out = png_pixels(client.get(s["images"][0]).content)[..., 0]
    keep = mask == 0
    np.testing.assert_array_equal(out[keep], image[keep])
    assert not np.array_equal(out[~keep], image[~keep])
    files["mask"] = ("m.png", png_upload(np.zeros((8, 8), np.uint8)), "image/png")
    r = client.post("/api/edit/inpaint", data={"model": "cls"}, files=files)
    assert r.status_code == 422 and "all black" in r.json()["detail"]


def test_img2img_strength_zero_returns_the_input_and_one_changes_it(client):
    image = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))
    files = {"image": ("a.png", png_upload(image), "image/png")}
    s0 = run_job(client, "/api/edit/img2img", data={"model": "cls", "strength": "0"}, files=files)
    np.testing.assert_array_equal(png_pixels(client.get(s0["images"][0]).content)[..., 0], image)
    s1 = run_job(client, "/api/edit/img2img", data={"model": "cls", "strength": "1", "steps": "4",
                                                   "sampler": "ddim"}, files=files)
    assert s1["params"]["steps_run"] == 4 and s1["total"] == 4
    r = client.post("/api/edit/img2img", data={"model": "cls", "strength": "1.5"}, files=files)
    assert r.status_code == 422 and "strength" in r.json()["detail"]


def test_interpolation_ends_are_the_two_seeds_samples(client, models):
    s = run_job(client, "/api/edit/interpolate", json={"model": "cls", "seed": 3, "seed_b": 8, "frames": 3,
                                                       "steps": 3, "sampler": "ddim"})
    frames = [png_pixels(client.get(u).content) for u in s["images"]]
    pipe = models[0].pipe
    for frame, seed in ((frames[0], 3), (frames[-1], 8)):
        np.testing.assert_array_equal(frame, to_uint8(pipe.sample(1, sampler="ddim", steps=3, seed=seed))[0])
    assert not np.array_equal(frames[1], frames[0]) and s["commands"][1] == ""
    assert client.post("/api/edit/interpolate", json={"model": "cls", "frames": 1}).status_code == 422


def test_upscale(client):
    small = np.full((8, 8), 200, np.uint8)
    s = run_job(client, "/api/edit/upscale", data={"model": "sr", "steps": "3", "sampler": "ddim"},
                files={"image": ("s.png", png_upload(small), "image/png")})
    assert png_pixels(client.get(s["images"][0]).content).shape == (16, 16, 1)
    r = client.post("/api/edit/upscale", data={"model": "cls"}, files={"image": ("s.png", png_upload(small))})
    assert r.status_code == 422 and "does not upscale" in r.json()["detail"]


def bomb(side: int) -> bytes:
    """A side x side one-bit PNG of a few kilobytes: side^2 pixels once decoded."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize(("data", "status", "message"), [
    (b"x" * (limits.MAX_UPLOAD_BYTES + 1), 413, "the limit is"),
    (b"just some text, not a picture", 422, "not a PNG, JPEG, WebP or BMP image"),
    (b"GIF89a" + b"\0" * 64, 422, "not a PNG, JPEG, WebP or BMP image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 422, "not a PNG"),
    (6000, 413, "pixels"),  # 36 megapixels: under Pillow's own bomb limit, over ours
    (20000, 413, "pixels"),  # 400 megapixels: over both
], ids=["oversize", "text", "gif", "truncated-png", "bomb-36-megapixels", "bomb-400-megapixels"])
def test_uploads_are_refused(client, data, status, message):
    data = bomb(data) if isinstance(data, int) else data
    assert len(data) <= limits.MAX_UPLOAD_BYTES or status == 413
    start = time.monotonic()
    r = client.post("/api/edit/img2img", data={"model": "cls"}, files={"image": ("a.png", data, "image/png")})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    no_traceback(r)
    assert time.monotonic() - start < 5  # refused unread, not decoded


def test_request_body_over_the_limit_is_refused(client):
    r = client.post("/api/edit/img2img", content=b"x", headers={"content-length": str(10**9)})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


# ---- the queue: cancel, disconnect, 20 concurrent requests -----------------------------------------------
class Gate:
    """A forward hook that holds the network until opened (and slows each call by ``delay`` s)."""

    def __init__(self, net, delay=0.0):
        self.open, self.delay = threading.Event(), delay
        self.handle = net.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.open.wait(30)
        time.sleep(self.delay)


@pytest.fixture()
def slow(runs):
    """A fresh app on a real uvicorn server (port chosen by the system) whose model waits at a gate."""
    models = load_models([runs["cls"]], "cpu")
    gate = Gate(models[0].pipe.net)
    app = create_app(models, queue_size=3)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", gate, app
    gate.open.set()
    server.should_exit = True
    thread.join(10)


def poll(base, job_id, until, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = httpx.get(f"{base}/api/jobs/{job_id}").json()
        if s["state"] in until:
            return s
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {until}: {s}")


def test_twenty_concurrent_requests_respect_the_queue_bound(slow):
    base, gate, _app = slow
    answers: list[httpx.Response] = []

    def post(i):
        body = {"model": "cls", "seed": i, "steps": 2}
        answers.append(httpx.post(f"{base}/api/generate", json=body, timeout=30))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(answers) == 20
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 503]
    assert len(accepted) + len(refused) == 20
    assert 3 <= len(accepted) <= 4  # 3 waiting + at most the one the worker took
    for a in refused:
        assert int(a.headers["Retry-After"]) >= 1 and "queue of this model is full" in a.json()["detail"]
    busy = httpx.get(f"{base}/api/queue").json()["cls"]
    assert busy["waiting"] <= 3 and busy["queue_size"] == 3
    gate.open.set()
    for a in accepted:
        assert poll(base, a.json()["id"], FINAL)["state"] == "done"


def test_cancel_frees_the_worker(slow):
    base, gate, _app = slow
    gate.delay = 0.05
    first = httpx.post(f"{base}/api/generate", json={"model": "cls", "steps": 40, "sampler": "ddim"}).json()
    queued = httpx.post(f"{base}/api/generate", json={"model": "cls", "steps": 2, "seed": 1}).json()
    assert poll(base, first["id"], ("running",))["state"] == "running"
    # a queued job cancels at once, without running
    assert httpx.post(f"{base}/api/jobs/{queued['id']}/cancel").json()["state"] == "cancelled"
    gate.open.set()
    while httpx.get(f"{base}/api/jobs/{first['id']}").json()["step"] < 1:
        time.sleep(0.01)
    s = httpx.post(f"{base}/api/jobs/{first['id']}/cancel").json()
    assert s["state"] == "cancelling"  # until the step it is in ends
    s = poll(base, first["id"], FINAL)
    assert s["state"] == "cancelled" and s["step"] < 40 and s["images"] == []
    gate.delay = 0.0
    after = httpx.post(f"{base}/api/generate", json={"model": "cls", "steps": 2}).json()
    assert poll(base, after["id"], FINAL, timeout=10)["state"] == "done"


def test_a_client_that_leaves_the_event_stream_frees_the_worker(slow):
    base, gate, _app = slow
    gate.delay = 0.05
    gate.open.set()
    job = httpx.post(f"{base}/api/generate", json={"model": "cls", "steps": 40, "sampler": "ddim"}).json()
    with httpx.stream("GET", f"{base}{job['events']}", timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and json.loads(line[5:])["step"] >= 1:
                break
    s = poll(base, job["id"], FINAL)
    assert s["state"] == "cancelled" and s["step"] < 40
    gate.delay = 0.0
    after = httpx.post(f"{base}/api/generate", json={"model": "cls", "steps": 2}).json()
    assert poll(base, after["id"], FINAL, timeout=10)["state"] == "done"


def test_finished_jobs_are_kept_up_to_the_bound():
    from difflab.serve.jobs import Job, JobBoard

    board = JobBoard(["m"], queue_size=10, keep=2)
    jobs = []
    for i in range(5):
        jobs.append(board.submit(Job("m", "generate", {"i": i}, lambda step, i=i: [i])))
        while not jobs[-1].final:
            time.sleep(0.001)
    board.submit(Job("m", "generate", {}, lambda step: []))
    with pytest.raises(LookupError, match="kept for the last 2"):
        board.get(jobs[0].id)
    assert [board.get(j.id).result for j in jobs[3:]] == [[3], [4]]
    assert len(board.jobs) <= 3  # two finished and the newest
    board.close()


# ---- the command and the layers -------------------------------------------------------------------------
def test_serve_command_warns_off_loopback_and_errors_in_one_line(runs, monkeypatch, capsys):
    from difflab.cli import main
    from difflab.cli.serve import is_loopback

    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.9.9.9")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "example.org", "::")] == [False] * 4
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert main(["serve", str(runs["cls"]), "--host", "0.0.0.0", "--port", "7999", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0, not a loopback address" in err
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 7999)
    assert main(["serve", str(runs["cls"]), "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err and seen["host"] == "127.0.0.1" and seen["port"] == 7860
    assert main(["serve", str(runs["cls"].parent / "missing")]) == 1  # the files' fault, not the flags'
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot serve" in err and "Traceback" not in err
    assert main(["serve", str(runs["cls"]), "--port", "70000"]) == 2  # a bad flag
    assert "--port must lie in 1..65535" in capsys.readouterr().err


SERVE_WITHOUT_TRAINING = """
import sys
from difflab.serve.app import create_app
from difflab.serve.models import load_models
from fastapi.testclient import TestClient
c = TestClient(create_app(load_models([sys.argv[1]], "cpu")))
r = c.post("/api/generate", json={"model": "0", "n": 1, "steps": 2})
assert c.get("/api/explore/0/forward?t=3").status_code == 200
print(sorted(m for m in sys.modules if m.startswith(("difflab.train", "difflab.cli"))))
"""


def test_serving_does_not_import_training_or_the_cli(runs):
    out = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_TRAINING, str(runs["cls"])],
                         capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
