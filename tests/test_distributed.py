"""Training and evaluation on many processes (torch.distributed, gloo) equal one process.

Each run is a group of real processes, forked from a ``forkserver`` that imported torch and
difflab once, joined through torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) exactly as
torchrun sets them; one test goes through ``difflab train --nproc 2``, which launches torchrun.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data.batcher import micro_batches

STEPS = 8
TIMEOUT_S = 20.0
ARGS = ["--net", "unet", "--T", "20", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
        "--attention-res", "none", "--checkpoint-every", "4", "--sample-every", "1000", "--seed", "3",
        "--cond", "class", "--cond-drop", "0.3", "--flip", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two labelled classes of seeded 8x8 grey images (flips on, so every split matters)."""
    folder = tmp_path_factory.mktemp("dist") / "data"
    rng = np.random.default_rng(0)
    for c in range(2):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"c{c}" / f"{i:02d}.png")
    return folder


def config(data: Path, batch: int = 10, steps: int = STEPS) -> Any:
    """The run of ARGS; its sample grid (at the last step) small."""
    from difflab.cli import build_parser
    from difflab.cli.train import train_config_from_args

    args = build_parser().parse_args(["train", "--data", f"folder:{data}", "--out", "x", "--batch-size",
                                      str(batch), "--steps", str(steps), *ARGS])
    return train_config_from_args(args).replace(sample_n=2, sample_steps=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, job: dict[str, Any], report: str) -> None:
    """One process of a group: join it as torchrun would, run the job, write what happened."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from difflab.train import loop
    from difflab.train.distributed import process_group

    loop.Trainer.plot_logs = lambda self: None  # type: ignore[method-assign]  # seconds of matplotlib

    if job.get("die") and rank == job["die"][0]:  # this rank vanishes (or hangs) at the start of a step
        step_at, original = job["die"][1], loop.Trainer.train_step

        def dying(self: Any) -> None:
            if self.step == step_at:
                time.sleep(job.get("hang", 0.0))
                os._exit(3)
            original(self)

        loop.Trainer.train_step = dying  # type: ignore[method-assign]
    if job.get("fast_clock") and rank == 1:  # this rank's clock runs 1000x fast
        loop.clock = lambda: time.perf_counter() * 1000
    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        with process_group(torch.device("cpu"), timeout=job.get("timeout", TIMEOUT_S)):
            if job["kind"] == "train":
                done = loop.train(job["cfg"], job["out"], resume=job.get("resume", False), progress=False,
                                  log=lambda _: None, grad_accum=job.get("accum", 1),
                                  max_seconds=job.get("max_seconds"))
                result["steps"] = done.steps
            elif job["kind"] == "cli":
                import contextlib
                import io

                from difflab.cli import main

                err, out = io.StringIO(), io.StringIO()
                for argv in job.get("argvs", [job.get("argv")]):
                    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                        result["status"] = main(argv)
                    if result["status"]:
                        break
                result["stderr"], result["stdout"] = err.getvalue(), out.getvalue()
            else:
                from difflab import load
                from difflab.eval.evaluate import evaluate
                from difflab.eval.sharded import write_spread

                rep = evaluate(job["run"], n=job["n"], metrics=job["metrics"], steps=2, device="cpu",
                               progress=False, log=lambda _: None, batch_size=2)
                result["scores"] = {s.metric: s.value for s in rep.scores}
                pngs = Path(job["pngs"]) / f"{size}"
                write_spread(load(job["run"], "cpu"), job["n"], out=None, save_dir=pngs, batch_size=2, seed=7,
                             steps=2)
                if rank == 0:
                    result["pngs"] = {p.name: p.read_bytes().hex() for p in sorted(pngs.iterdir())}
    except Exception as err:
        result["error"], result["type"] = str(err), type(err).__name__
    result["seconds"] = time.perf_counter() - t0
    Path(report).write_text(json.dumps(result))


def launch(size: int, job: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """Run ``job`` on ``size`` processes; each one's report."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "matplotlib.figure", "difflab.train",
                                "difflab.eval.evaluate"])
    port = _free_port()
    reports = [tmp / f"report-{time.monotonic_ns()}-{r}.json" for r in range(size)]
    procs = [ctx.Process(target=_worker, args=(r, size, port, job, str(reports[r]))) for r in range(size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode is not None, "a worker hung"
    return [json.loads(r.read_text()) if r.exists() else {"died": True} for r in reports]


def train_on(size: int, cfg: Any, out: Path, **job: Any) -> list[dict[str, Any]]:
    reports = launch(size, {"kind": "train", "cfg": cfg, "out": str(out), **job}, out.parent)
    if not job.get("die"):
        assert all("error" not in r for r in reports), reports
    return reports


def final_state(out: Path) -> dict[str, Any]:
    from difflab.train.checkpoint import list_checkpoints, load_checkpoint

    return load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])


def assert_same_weights(a: dict[str, Any], b: dict[str, Any], rel: float = 1e-5) -> None:
    """Same step, and every weight and EMA weight within ``rel`` of the largest weight."""
    assert a["step"] == b["step"]
    for sa, sb in ((a["model"], b["model"]), (a["ema"]["model"], b["ema"]["model"])):
        assert sa.keys() == sb.keys()
        scale = max(v.abs().max().item() for v in sb.values() if v.is_floating_point())
        worst = max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)
        assert worst <= rel * scale, f"weights differ by {worst:.3g} (largest weight {scale:.3g})"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One process, one micro-batch, batch 10: the run every other split must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train_on(1, config(data), out)
    return out


def test_micro_batches_cover_the_batch_once():
    for b, world, accum in ((10, 2, 2), (7, 3, 1), (9, 1, 4), (8, 2, 1)):
        rows = [r for rank in range(world) for s in micro_batches(b, rank, world, accum)
                for r in range(s.start, s.stop)]
        assert rows == list(range(b))
    assert [s.stop - s.start for s in micro_batches(10, 1, 2, 2)] == [2, 3]
    with pytest.raises(ValueError, match="at least 4"):
        micro_batches(3, 0, 2, 2)


@pytest.mark.parametrize("size,accum", [(2, 1), (1, 2), (2, 2)])
def test_processes_and_micro_batches_equal_one_process(size, accum, data, reference, tmp_path):
    """Global batch 10 as 2 processes x 5, 1 x (5 + 5) and 2 x (2 + 3) ends with the weights and
    EMA of 1 x 10; the EMA keys carry no ``module.`` prefix."""
    out = tmp_path / "run"
    train_on(size, config(data), out, accum=accum)
    state, ref = final_state(out), final_state(reference)
    assert_same_weights(state, ref)
    assert not any(k.startswith("module.") for k in state["ema"]["model"])
    from difflab.io import load_weights

    weights = load_weights(out / "model.safetensors")
    assert weights.keys() == load_weights(reference / "model.safetensors").keys()
    assert state["batcher"] == ref["batcher"] and torch.equal(state["generator"], ref["generator"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    ref_records = map(json.loads, (reference / "log.jsonl").read_text().splitlines())
    ref_losses = {r["step"]: r["loss"] for r in ref_records if "loss" in r}
    assert losses.keys() == ref_losses.keys()
    assert np.allclose(list(losses.values()), list(ref_losses.values()), rtol=1e-5)


def test_a_dead_worker_stops_the_other_and_the_run_resumes_on_one_process(data, reference, tmp_path):
    out = tmp_path / "run"
    reports = train_on(2, config(data), out, die=(1, 6))
    assert reports[1] == {"died": True}
    err = reports[0]
    assert err["type"] == "TrainingError" and "\n" not in err["error"]
    assert "lost the others" in err["error"] and "step_0000004.pt" in err["error"]
    assert "--resume" in err["error"] and err["seconds"] < TIMEOUT_S
    assert final_state(out)["step"] == 4  # the checkpoint before the death loads
    train_on(1, config(data), out, resume=True)  # 2 -> 1 process
    assert_same_weights(final_state(out), final_state(reference))


def test_a_hung_worker_stops_the_other_after_the_timeout(data, tmp_path):
    """A worker that hangs (alive, silent) is caught by the process group's timeout."""
    reports = train_on(2, config(data), tmp_path / "run", die=(1, 6), hang=6.0, timeout=2.0)
    err = reports[0]
    assert err["type"] == "TrainingError" and "lost the others" in err["error"], err
    # gloo's own words: the timeout fired (2 s), before the hung rank woke up and exited (6 s)
    assert "2 s timeout" in err["error"] and "timed out" in err["error"].lower() and err["seconds"] >= 2.0


def test_clock_decisions_are_rank_zeros(data, tmp_path):
    """A time limit is read on rank 0's clock: rank 1's, running 1000x fast, would stop it alone
    after one step and leave rank 0 waiting in a collective."""
    reports = train_on(2, config(data), tmp_path / "run", fast_clock=True, max_seconds=3600.0)
    assert [r.get("steps") for r in reports] == [STEPS, STEPS], reports


def test_cli_nproc_resumes_a_one_process_run_on_two(data, reference, tmp_path):
    """``difflab train --nproc 2 --resume`` (torchrun) finishes a 1-process run stopped at step 4
    with the weights of the uninterrupted run."""
    out = tmp_path / "run"
    train_on(1, config(data), out, die=(0, 6))
    assert final_state(out)["step"] == 4
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "difflab", "train", "--data", f"folder:{data}", "--out", str(out),
           "--batch-size", "10", "--steps", str(STEPS), *ARGS, "--resume", "--nproc", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 8 steps") == 1  # rank 0 reports, rank 1 is silent
    assert_same_weights(final_state(out), final_state(reference))


def test_distributed_eval_equals_one_process(data, reference, tmp_path):
    """The same seeds on 2 processes give the FD-digit and digit scores of one (no padding: 5
    samples, 3 + 2)."""
    job = {"kind": "eval", "run": str(reference), "n": 5, "metrics": "fd-digit,digit", "pngs": str(tmp_path)}
    one = launch(1, job, tmp_path)[0]
    two = launch(2, job, tmp_path)
    assert "error" not in one and not any("error" in r for r in two), (one, two)
    assert two[0]["scores"] == two[1]["scores"]  # every rank returns rank 0's report
    assert one["scores"].keys() == two[0]["scores"].keys()
    for k, v in one["scores"].items():
        assert two[0]["scores"][k] == pytest.approx(v, rel=1e-5), k
    # sample --save-dir: the same 5 images (seeds 7..11), written once each by rank 0
    assert len(one["pngs"]) == 5 and two[0]["pngs"] == one["pngs"] and "pngs" not in two[1]


def test_the_train_command_on_each_rank_equals_one_process(data, reference, tmp_path):
    """``difflab train`` (a new run: rank 0 alone times steps for its estimate first) run by each
    rank of a 2-process group, with 2 micro-batches, ends with the reference weights."""
    argv = ["train", "--data", f"folder:{data}", "--out", str(tmp_path / "run"), "--steps", str(STEPS), *ARGS,
            "--batch-size", "10", "--grad-accum", "2"]
    reports = launch(2, {"kind": "cli", "argv": argv}, tmp_path)
    assert [r.get("status") for r in reports] == [0, 0], reports
    assert reports[1]["stdout"] == "" and "trained 8 steps" in reports[0]["stdout"]
    assert_same_weights(final_state(tmp_path / "run"), final_state(reference))


def test_a_batch_too_small_to_split_is_a_one_line_usage_error(data, tmp_path):
    argv = ["train", "--data", f"folder:{data}", "--out", str(tmp_path / "run"), "--steps", "1", *ARGS,
            "--batch-size", "3", "--grad-accum", "4"]
    report = launch(1, {"kind": "cli", "argv": argv}, tmp_path)[0]
    err = report.get("stderr", "").strip()
    assert report.get("status") == 2 and err.startswith("difflab: error:") and "\n" not in err, report
    assert "split over 1 process x 4 micro-batches; use --batch-size of at least 4" in err


def test_sample_and_eval_commands_spread_over_the_processes(reference, tmp_path):
    """``difflab sample --save-dir`` and ``difflab eval`` as each rank of a torchrun launch runs
    them: the files of one process, written once by rank 0, which alone prints."""

    def commands(where: Path) -> list[list[str]]:
        return [["sample", str(reference), "--n", "5", "--steps", "2", "--seed", "3", "--device", "cpu",
                 "--out", str(where / "grid.png"), "--save-dir", str(where / "pngs")],
                ["eval", str(reference), "--n", "5", "--steps", "2", "--metrics", "fd-digit", "--device",
                 "cpu", "--no-progress", "--json", str(where / "eval.json")]]

    one, two = tmp_path / "one", tmp_path / "two"
    [single] = launch(1, {"kind": "cli", "argvs": commands(one)}, tmp_path)
    spread = launch(2, {"kind": "cli", "argvs": commands(two)}, tmp_path)
    assert single["status"] == 0 and [r["status"] for r in spread] == [0, 0], (single, spread)
    assert spread[1]["stdout"] == "" and spread[0]["stdout"].count("wrote") == 2
    files = sorted(p.name for p in (one / "pngs").iterdir())
    assert len(files) == 5 and sorted(p.name for p in (two / "pngs").iterdir()) == files
    for name in files:
        assert (one / "pngs" / name).read_bytes() == (two / "pngs" / name).read_bytes()
    fd = [json.loads((w / "eval.json").read_text())["scores"][0]["value"] for w in (one, two)]
    assert fd[1] == pytest.approx(fd[0], rel=1e-5)
