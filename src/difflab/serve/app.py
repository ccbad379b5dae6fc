"""The web app: a JSON API (documented at ``/docs`` and ``/openapi.json``) and the page that uses
it. Only the runs given to :func:`create_app` are served; the page's three files are read from the
package once, so no part of a request path ever names a file."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from pydantic import ValidationError

from difflab.serve import explore, limits, tasks
from difflab.serve.card import model_card
from difflab.serve.docs import api_page
from difflab.serve.images import (
    UploadError,
    data_url,
    params_text,
    png_bytes,
    preview_png,
    upload_image,
    upload_mask,
)
from difflab.serve.jobs import Job, JobBoard, QueueFull
from difflab.serve.models import ServedModel, find
from difflab.serve.schemas import GenerateRequest, InterpolateRequest, JobCreated, Sampling
from difflab.viz import to_uint8

log = logging.getLogger("difflab.serve")
PAGE = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
        "style.css": "text/css; charset=utf-8"}
POLL_S = 0.05  # how often an event stream looks at its job
PING_S = 15.0  # a keep-alive comment after this long without an event
MAX_BODY = 2 * limits.MAX_UPLOAD_BYTES + 65536  # an edit's request: an image, a mask and the fields

# parameter types of the routes (module level: FastAPI resolves the annotations by name)
ModelName = Annotated[str, Path(max_length=200, description="a served model's name or index")]
JobId = Annotated[str, Path(max_length=64, description="a job's id (POST /api/generate returns it)")]
Upload = Annotated[UploadFile, File(description=f"PNG, JPEG, WebP or BMP, <= {limits.MAX_UPLOAD_BYTES} B")]
FormModel = Annotated[str, Form(max_length=200)]
Steps = Annotated[int | None, Form(ge=1, le=limits.MAX_STEPS)]
Seed = Annotated[int, Form(ge=0, le=limits.MAX_SEED)]
Count = Annotated[int, Form(ge=1, le=limits.MAX_IMAGES)]
Label = Annotated[str | None, Form(max_length=100)]
Prompt = Annotated[str | None, Form(max_length=limits.MAX_PROMPT)]
Scale = Annotated[float | None, Form(ge=0, le=limits.MAX_GUIDANCE)]
Strength = Annotated[float, Form(ge=0, le=1)]
SamplerName = Annotated[str | None, Form(max_length=40)]
Method = Annotated[str, Form(pattern="^(repaint|replace)$")]
StepSampler = Annotated[str | None, Form(pattern="^(ddpm|ddim)$")]
Jump = Annotated[int, Form(ge=1, le=limits.MAX_JUMPS)]


def _message(errors: list[Any]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form"))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
    return "; ".join(parts)


class BodyLimit:
    """Refuse a request whose Content-Length is over ``limit`` with a 413 before its body is read,
    and one sent without a Content-Length (chunked) as soon as the bytes read pass ``limit``: the
    count raises an HTTPException inside the request's handling, so the 413 is the app's JSON and
    the rest of the body is never read (plain ASGI: streaming responses and disconnects pass through
    untouched). FastAPI's own ``max_body_size`` sits outside the app's middleware and answers some
    of these in plain text."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request body is larger than {self.limit} bytes"
        size = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if not size.isdigit() or int(size) > self.limit:
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            event = await receive()
            seen += len(event.get("body", b"")) if event["type"] == "http.request" else 0
            if seen > self.limit:
                raise HTTPException(413, message)
            return event

        await self.app(scope, counted, send)


def sse(event: str, data: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(data), event=event)


async def known_form_fields(request: Request) -> None:
    """Refuse form fields the route does not take (a JSON body's extra fields are refused by its
    model), so a misspelt parameter is not silently left at its default."""
    route = request.scope.get("route")
    known = {p.alias for p in getattr(getattr(route, "dependant", None), "body_params", ())}
    unknown = sorted(set((await request.form()).keys()) - known)
    if unknown:
        raise ValueError(f"unknown field{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(u[:40]) for u in unknown[:5])}; this endpoint takes "
                         f"{', '.join(sorted(known))}")


async def job_events(job: Job, request: Request) -> AsyncIterator[bytes]:
    """A job's events until it ends: ``progress`` on every change (with the newest predicted-x0
    preview when there is one), then ``done``, ``cancelled`` or ``failed`` with its status. A
    client that leaves cancels the job, so no worker computes for nobody."""
    version, preview, polls, quiet = -1, None, 0, 0.0
    try:
        while True:
            if job.version != version:
                version, quiet = job.version, 0.0
                data: dict[str, Any] = {"state": job.state, "step": job.step, "total": job.total}
                if job.preview is not None and job.preview is not preview:
                    preview = job.preview
                    data["preview"] = data_url(preview)
                yield sse("progress", data)
                if job.final:
                    yield sse(job.state, job.status())
                    return
            polls += 1
            if polls % 5 == 0 and await request.is_disconnected():
                return
            quiet += POLL_S
            if quiet >= PING_S:  # a comment line keeps proxies from closing a quiet stream
                quiet = 0.0
                yield KEEPALIVE_COMMENT
            await asyncio.sleep(POLL_S)
    finally:
        if not job.final:
            job.cancel()


def create_app(models: list[ServedModel], queue_size: int = limits.QUEUE_SIZE) -> FastAPI:
    """The app serving ``models`` (one worker thread each, at most ``queue_size`` jobs waiting)."""
    board = JobBoard([m.name for m in models], queue_size)
    page = {name: (resources.files("difflab.serve") / "static" / name).read_bytes() for name in PAGE}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        board.close()  # cancel what runs, stop the workers

    app = FastAPI(title="difflab", version="1", docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Sample, guide, edit and explore trained difflab runs.")
    app.state.board, app.state.models = board, models

    # ---- errors: one readable line, never a traceback -----------------------------------------
    async def _invalid(request: Request, err: RequestValidationError | ValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in err.errors()]
        return JSONResponse({"detail": _message(errors), "errors": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ValidationError, _invalid)  # a model built in an endpoint (a form's Sampling)

    @app.exception_handler(ValueError)
    async def _bad(request: Request, err: ValueError) -> JSONResponse:
        status = err.status if isinstance(err, UploadError) else 422
        return JSONResponse({"detail": str(err)}, status_code=status)

    @app.exception_handler(LookupError)
    async def _missing(request: Request, err: LookupError) -> JSONResponse:
        return JSONResponse({"detail": str(err.args[0]) if err.args else "not found"}, status_code=404)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503,
                            headers={"Retry-After": str(err.retry_after)})

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(err).__name__}); see the server log"},
                            status_code=500)

    app.add_middleware(BodyLimit, limit=MAX_BODY)

    # ---- the page ------------------------------------------------------------------------------
    def static(name: str) -> Response:
        return Response(page[name], media_type=PAGE[name], headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return static("index.html")

    @app.get("/app.js", include_in_schema=False)
    def script() -> Response:
        return static("app.js")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return Response(api_page(app.openapi()), media_type="text/html; charset=utf-8")

    @app.get("/style.css", include_in_schema=False)
    def style() -> Response:
        return static("style.css")

    # ---- models ----------------------------------------------------------------------------------
    @app.get("/api/models", summary="The served runs: kind, classes, samplers, edits, config")
    def list_models() -> dict[str, Any]:
        return {"models": [m.info(i) for i, m in enumerate(models)], "limits": limits.as_dict(),
                "queue": board.busy()}

    @app.get("/api/models/{model}/card", summary="Model card: config, loss and eval curves, latest eval")
    def card(model: ModelName) -> dict[str, Any]:
        return model_card(find(models, model))

    @app.get("/api/explore/{model}/schedule", summary="The schedule's alpha-bar and log-SNR curves")
    def schedule(model: ModelName, points: Annotated[int, Query(ge=2, le=2000)] = 200) -> dict[str, Any]:
        return explore.schedule_curves(find(models, model), points)

    @app.get("/api/explore/{model}/data", summary="The data images the forward process starts from")
    def data(model: ModelName) -> dict[str, Any]:
        m = find(models, model)
        x = explore.data_images(m)
        if x is None:
            return {"source": "sample", "count": explore.DATA_IMAGES, "images": []}
        return {"source": "data", "count": len(x), "images": [data_url(png_bytes(im)) for im in x]}

    @app.get("/api/explore/{model}/forward",
             summary="q(x_t | x_0) for data image `index` at `t`, the model's predicted noise and x0")
    def forward(model: ModelName, t: Annotated[int, Query(ge=0, le=100_000)],
                index: Annotated[int, Query(ge=0, le=10_000)] = 0,
                seed: Annotated[int, Query(ge=0, le=limits.MAX_SEED)] = 0) -> dict[str, Any]:
        return explore.forward(find(models, model), index, t, seed)

    # ---- jobs --------------------------------------------------------------------------------------
    def submit(m: ServedModel, kind: str, task: tasks.Task) -> JSONResponse:
        def work(step: Any) -> Any:
            return to_uint8(task.work(step))  # kept as 8-bit [N, H, W, C]: a quarter of the floats' memory

        job = Job(m.name, kind, task.params, work, previewer=preview_png, commands=task.commands,
                  total=task.total)
        board.submit(job)
        body = JobCreated(id=job.id, state=job.state, events=f"/api/jobs/{job.id}/events",
                          status=f"/api/jobs/{job.id}")
        return JSONResponse(body.model_dump(), status_code=202)

    created = {202: {"model": JobCreated, "description": "the job is queued"},
               503: {"description": "the model's queue is full (see Retry-After)"}}
    form = [Depends(known_form_fields)]

    @app.post("/api/generate", status_code=202, responses=created, summary="Queue a generation")
    def generate(req: GenerateRequest) -> JSONResponse:
        m = find(models, req.model)
        return submit(m, "generate", tasks.generate(m, req, req.n))

    @app.post("/api/explore/trajectory", status_code=202, responses=created,
              summary="A sample's denoising trajectory (a job): x_t after each step, then each predicted x0")
    def explore_trajectory(req: Sampling) -> JSONResponse:
        m = find(models, req.model)
        return submit(m, "trajectory", tasks.trajectory(m, req))

    @app.get("/api/jobs/{job_id}", summary="A job's state and progress (and its images once done)")
    def job_status(job_id: JobId) -> dict[str, Any]:
        return board.get(job_id).status()

    @app.post("/api/jobs/{job_id}/cancel",
              summary="Cancel a job: at once if queued, after the current step if running")
    def cancel(job_id: JobId) -> dict[str, Any]:
        job = board.get(job_id)
        job.cancel()
        return job.status()

    @app.get("/api/jobs/{job_id}/events", response_class=Response,
             responses={200: {"content": {"text/event-stream": {}}}},
             summary="Server-sent events: `progress` (with predicted-x0 previews), then the final state")
    async def events(job_id: JobId, request: Request) -> EventSourceResponse:
        job = board.get(job_id)  # before the stream starts: an unknown id is a plain 404
        return EventSourceResponse(job_events(job, request), headers={"Cache-Control": "no-cache"})

    @app.get("/api/jobs/{job_id}/images/{k}.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}},
             summary="Image k of a finished job, its parameters and command line in PNG text chunks")
    def image(job_id: JobId, k: Annotated[int, Path(ge=0, le=10_000)]) -> Response:
        job = board.get(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job_id} is {job.state}; images come when it is done")
        if k >= len(job.result):
            raise HTTPException(404, f"job {job_id} has images 0..{len(job.result) - 1}")
        params = {**job.params, "image": k}
        if "seed" in params and job.kind == "generate":
            params["image_seed"] = params["seed"] + k
        command = job.commands[k] if k < len(job.commands) else ""
        png = png_bytes(job.result[k], params_text(params, command))
        name = f"{job.model}-{job.id[:8]}-{k}.png"
        disposition = {"Content-Disposition": f'inline; filename="{name}"'}
        return Response(png, media_type="image/png", headers=disposition)

    @app.get("/api/jobs/{job_id}/preview.png", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 204: {"description": "no preview yet"}},
             summary="The latest predicted-x0 preview of a job")
    def preview(job_id: JobId) -> Response:
        job = board.get(job_id)
        if job.preview is None:
            return Response(status_code=204)
        return Response(job.preview, media_type="image/png")

    @app.get("/api/queue", summary="Per model: the running job and how many wait")
    def queue() -> dict[str, Any]:
        return board.busy()

    # ---- edits ---------------------------------------------------------------------------------------
    async def read(upload: UploadFile) -> bytes:
        data = await upload.read(limits.MAX_UPLOAD_BYTES + 1)
        return data

    @app.post("/api/edit/img2img", status_code=202, responses=created, dependencies=form,
              summary="Image-to-image (SDEdit): noise an uploaded image to `strength` and denoise")
    async def edit_img2img(model: FormModel, image: Upload,
                           strength: Strength = 0.6, steps: Steps = None,
                           seed: Seed = 0, n: Count = 1, sampler: SamplerName = None,
                           label: Label = None, prompt: Prompt = None, negative_prompt: Prompt = None,
                           guidance: Scale = None) -> JSONResponse:
        m = find(models, model)
        req = Sampling(model=model, sampler=sampler, steps=steps, seed=seed, label=label, prompt=prompt,
                       negative_prompt=negative_prompt, guidance=guidance)
        x = upload_image(await read(image), m.pipe.image_shape)
        return submit(m, "img2img", tasks.img2img(m, req, x, strength, n))

    @app.post("/api/edit/inpaint", status_code=202, responses=created, dependencies=form,
              summary="Inpaint: regenerate where the mask is white, keep the rest (RePaint)")
    async def edit_inpaint(model: FormModel, image: Upload, mask: Upload, steps: Steps = None,
                           seed: Seed = 0, n: Count = 1,
                           method: Method = "repaint",
                           sampler: StepSampler = None,
                           jump_length: Jump = 10,
                           jump_n_sample: Jump = 10,
                           label: Label = None, prompt: Prompt = None, guidance: Scale = None
                           ) -> JSONResponse:
        m = find(models, model)
        req = Sampling(model=model, sampler=sampler, steps=steps, seed=seed, label=label, prompt=prompt,
                       guidance=guidance)
        _, h, w = m.pipe.image_shape
        x = upload_image(await read(image), m.pipe.image_shape)
        hole = upload_mask(await read(mask), (h, w))
        return submit(m, "inpaint", tasks.inpaint(m, req, x, hole, n, method, jump_length, jump_n_sample))

    @app.post("/api/edit/interpolate", status_code=202, responses=created,
              summary="Images along the spherical interpolation between two seeds' starting noises")
    def edit_interpolate(req: InterpolateRequest) -> JSONResponse:
        m = find(models, req.model)
        return submit(m, "interpolate", tasks.interpolate(m, req, req.seed_b, req.frames))

    @app.post("/api/edit/upscale", status_code=202, responses=created, dependencies=form,
              summary="Super-resolution with a --cond lowres run: upscale an uploaded small image")
    async def edit_upscale(model: FormModel, image: Upload, steps: Steps = None, seed: Seed = 0,
                           n: Count = 1, sampler: SamplerName = None) -> JSONResponse:
        m = find(models, model)
        req = Sampling(model=model, sampler=sampler, steps=steps, seed=seed)
        tasks.check_upscaler(m)
        small = upload_image(await read(image), m.pipe.lowres_condition.small_shape, "small image")
        return submit(m, "upscale", tasks.upscale(m, req, small, n))

    return app
