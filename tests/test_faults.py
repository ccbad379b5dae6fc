"""Faults injected into training and loading, and what must survive them: SIGKILL anywhere
(mid-write included), corrupted and truncated files, a full disk, NaN/inf, bad images, pickles
offered as weights, a second writer, and the file modes of atomic writes."""

from __future__ import annotations

import ast
import errno
import fcntl
import hashlib
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import main
from difflab.io import CheckpointError, atomic_write, load_weights, save_weights
from difflab.train import TrainingError, train
from difflab.train.checkpoint import UNREADABLE, list_checkpoints, load_checkpoint
from difflab.train.lock import LOCK_NAME, RunInUseError
from tests import kill_harness as kh

SRC = Path(__file__).resolve().parent.parent / "src" / "difflab"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return kh.make_data(tmp_path_factory.mktemp("faults") / "imgs")


def quiet(*_: object) -> None:
    pass


def fit(data: Path, out: Path, steps: int = kh.STEPS, **kw) -> object:
    torch.set_num_threads(1)
    return train(kh.config(data, steps), out, progress=False, log=kw.pop("log", quiet), **kw)


def run_main(args: list[object], capsys) -> tuple[int, str]:
    """The CLI in this process: (exit status, stderr); a traceback fails the test by raising."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as done:
        code = int(done.code or 0)
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("difflab") and "Traceback" not in err, err
    return lines[0]


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


# ---- SIGKILL anywhere ------------------------------------------------------------------------
def test_sigkill_anywhere_then_resume_ends_bit_identical(data, tmp_path):
    """Kills inside checkpoint, weights and config writes (the temporary file whole or cut in
    half) and at random moments; after each, the folder holds only whole files, and a resume
    finishes with an uninterrupted run's weights."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    kh.run_to_end(data, ref, resume=False)
    rng = random.Random(0)
    plan = [
        ("step_0000004.pt", 1, False),  # before the first checkpoint exists
        ("model.safetensors", 2, True),  # the weights half written
        ("config.json", 1, True),  # the config rewritten on --resume, half written
        ("step_0000016.pt", 1, True),  # a checkpoint half written, older ones to fall back on
        ("model.safetensors", 3, False),  # the last step's weights, after its checkpoint (resumed at 12)
        "random",
    ]
    had_checkpoint = False
    for i, where in enumerate(plan):
        session = kh.start(data, run, resume=i > 0, pause=None if where == "random" else where)
        if where == "random":
            session.wait_for("wrote.config.json.1")
            session.process.join(rng.uniform(0.0, 1.5))
            session.kill()
        else:
            assert session.wait_for(kh.PAUSED), f"the run ended before writing {where}"
            if where[0] == "config.json":  # a second writer is refused while the run holds its folder
                with pytest.raises(RunInUseError, match="in use by another difflab process"):
                    fit(data, run, resume=True)
            assert session.kill(), where
        had_checkpoint = had_checkpoint or bool(list_checkpoints(run / "checkpoints"))
        assert kh.check_run_folder(run, had_checkpoint) == [], where
    kh.run_to_end(data, run, resume=True)
    assert kh.same_weights(ref, run) == []
    assert kh.temp_files(run) == []


# ---- corrupted files -------------------------------------------------------------------------
def test_resume_falls_back_past_a_corrupt_checkpoint_and_still_ends_identical(data, tmp_path):
    fit(data, tmp_path / "ref", steps=12)
    run = tmp_path / "run"
    fit(data, run, steps=8)
    newest = run / "checkpoints" / "step_0000008.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    lines: list[str] = []
    fit(data, run, steps=12, resume=True, log=lines.append)
    said = [s for s in lines if "step_0000008.pt is unreadable" in s]
    assert len(said) == 1 and "resuming from step_0000004.pt" in said[0], lines
    assert (run / "checkpoints" / f"step_0000008.pt{UNREADABLE}").is_file()
    assert kh.same_weights(tmp_path / "ref", run) == []


def test_train_vae_resume_falls_back_past_a_corrupt_checkpoint_too(tmp_path):
    from difflab.train.vae import train_vae
    from tests.test_autoencoder import vae_config

    cfg = vae_config(checkpoint_every=2, keep_checkpoints=3)
    train_vae(cfg, tmp_path / "straight", progress=False, log=quiet)
    train_vae(cfg.replace(steps=4), tmp_path / "vae", progress=False, log=quiet)
    newest = tmp_path / "vae" / "checkpoints" / "step_0000004.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    lines: list[str] = []
    train_vae(cfg, tmp_path / "vae", resume=True, progress=False, log=lines.append)
    assert any("step_0000004.pt is unreadable" in s and "resuming from step_0000002.pt" in s for s in lines)
    a, b = (load_checkpoint(tmp_path / r / "checkpoints" / "step_0000006.pt") for r in ("straight", "vae"))
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())  # redone from step 2, exactly


def test_no_readable_checkpoint_is_a_clear_error(data, tmp_path):
    run = tmp_path / "run"
    fit(data, run, steps=8)
    for _, path in list_checkpoints(run / "checkpoints"):
        path.write_bytes(b"")
    with pytest.raises((CheckpointError, TrainingError), match="no checkpoint in .* is readable"):
        fit(data, run, steps=12, resume=True)


def test_corrupt_weights_and_nonsense_configs_get_one_line_errors(data, tmp_path, capsys):
    run = tmp_path / "run"
    fit(data, run, steps=4)
    weights, cfg = run / "model.safetensors", run / "config.json"
    good_weights, good_cfg = weights.read_bytes(), cfg.read_text()
    sample = ["sample", run, "--n", "1", "--steps", "2", "--out", tmp_path / "x.png"]

    weights.write_bytes(good_weights[: len(good_weights) // 2])  # truncated
    code, err = run_main(sample, capsys)
    assert code == 1 and "not a readable safetensors file" in one_line(err)
    weights.write_bytes(good_weights)

    future = {**json.loads(good_cfg), "hyper_warp": 3}  # a config from another version
    invalid = "not a valid difflab config"
    for text, needle in [("{not json", invalid), ("[1, 2]", invalid), (json.dumps(future), "hyper_warp"),
                         (json.dumps({**future, "hyper_warp": None, "T": "many"}), invalid)]:
        cfg.write_text(text)
        code, err = run_main(sample, capsys)
        assert code == 1 and needle in one_line(err), text
        before = folder_digest(run)
        code, err = run_main(["train", "--data", f"folder:{data}", "--out", run, "--resume", "--steps", "8",
                              "--no-progress"], capsys)
        assert code in (1, 2) and "config.json" in one_line(err), text
        assert folder_digest(run) == before, "a refused resume changed the run folder"
    assert not (tmp_path / "x.png").exists()


# ---- a full disk -----------------------------------------------------------------------------
def test_a_full_disk_says_so_keeps_the_last_checkpoint_and_leaves_no_temporary_files(data, tmp_path,
                                                                                    monkeypatch, capsys):
    import difflab.train.checkpoint as ckpt

    real = ckpt.torch.save

    def save(obj, f, *a, **k):
        if obj["step"] == 8:
            real(obj, f, *a, **k)  # part of the file is on disk when the space runs out
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", save)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="the disk is full.*free some space.*--resume"):
        fit(data, run, steps=12)
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]
    assert load_checkpoint(run / "checkpoints" / "step_0000004.pt")["step"] == 4
    assert load_weights(run / "model.safetensors")  # the step-4 weights, whole
    assert kh.temp_files(run) == [] and not [p for p in run.rglob(".*") if p.name != LOCK_NAME]

    monkeypatch.setattr(ckpt.torch, "save", real)
    import difflab.io as dio

    def full(*a, **k):  # safetensors wraps the OS error in its own type
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(dio, "save_file", full)
    code, err = run_main(["train", "--data", f"folder:{data}", "--out", run, "--resume", "--steps", "12",
                          "--no-progress", "--net", "unet", "--T", "20", "--batch-size", "8",
                          "--checkpoint-every", "4", "--sample-every", "1000", "--seed", "3",
                          "--base-channels", "8", "--channel-mult", "1,2", "--attention-res", "none",
                          "--res-blocks", "1"], capsys)
    assert code == 1 and "the disk is full" in one_line(err)
    assert kh.temp_files(run) == []


# ---- NaN and inf -----------------------------------------------------------------------------
class NanGradient(torch.autograd.Function):
    """The identity forward; NaN gradients backward (a finite loss with poisoned gradients)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def poison(monkeypatch, faults: dict[int, str]) -> None:
    """Make the loss of call n NaN (``"loss"``), inf (``"inf"``) or its gradients NaN (``"grad"``)."""
    import difflab.train.loop as loop

    real, calls = loop.diffusion_loss, {"n": 0}

    def loss(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        kind = faults.get(calls["n"])
        if kind == "loss":
            return out * float("nan")
        if kind == "inf":
            return out + float("inf")
        return NanGradient.apply(out) if kind == "grad" else out

    monkeypatch.setattr(loop, "diffusion_loss", loss)


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize(("kind", "message"), [("grad", "gradients became non-finite at step 6"),
                                               ("inf", "loss became inf at step 6")])
def test_nonfinite_stops_before_the_update_by_default(data, tmp_path, monkeypatch, kind, message):
    poison(monkeypatch, {6: kind})
    seen: dict[int, dict] = {}
    with pytest.raises(TrainingError, match=f"{message}.*untouched.*step_0000004.*--skip-nonfinite"):
        fit(data, tmp_path / "r", steps=12,
            on_step=lambda s, _t, ema: seen.update({s: {k: v.clone() for k, v in ema.state_dict().items()}}))
    assert max(seen) == 5 and finite(seen[5])
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "step_0000004.pt")
    assert finite(state["model"]) and finite(state["ema"]["model"])


def test_skip_nonfinite_skips_and_counts_and_never_touches_the_ema(data, tmp_path, monkeypatch):
    poison(monkeypatch, {6: "loss", 9: "grad"})
    ema: dict[int, dict] = {}
    fit(data, tmp_path / "r", steps=12, skip_nonfinite=True,
        on_step=lambda s, _t, m: ema.update({s: {k: v.clone() for k, v in m.state_dict().items()}}))
    for skipped in (6, 9):  # no update at all: the EMA is exactly the step before's
        assert all(torch.equal(ema[skipped][k], ema[skipped - 1][k]) for k in ema[skipped])
        assert not all(torch.equal(ema[skipped + 1][k], ema[skipped][k]) for k in ema[skipped])
    assert all(finite(e) for e in ema.values())
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    skips = [r for r in records if "skipped_nonfinite" in r]
    assert [(r["step"], r["skipped_nonfinite"]) for r in skips] == [(6, 1), (9, 2)]
    final = load_checkpoint(tmp_path / "r" / "checkpoints" / "step_0000012.pt")
    assert final["skipped_nonfinite"] == 2 and finite(final["ema"]["model"])


# ---- bad images ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_images_are_skipped_with_a_count_and_training_runs_past_them(data, tmp_path, monkeypatch):
    import io

    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted(data.iterdir())[:16]:
        (folder / p.name).write_bytes(p.read_bytes())
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 99, np.uint8)).save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[:40])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image at all\n")
    Image.new("RGB", (40, 40)).save(folder / "bomb.png")  # over MAX_IMAGE_PIXELS below, under twice it
    Image.fromarray(np.full((8, 8), 7, np.uint16) * 257).save(folder / "sixteen.png")  # I;16: converted
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(folder / "cmyk.jpg")  # converted
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)

    lines: list[str] = []
    torch.set_num_threads(1)
    cfg = kh.config(folder, steps=6).replace(data=kh.config(folder).data.replace(channels=1))
    result = train(cfg, tmp_path / "r", progress=False, log=lines.append)
    assert result.steps == 6  # 18 images, batch 8: past the end of two epochs
    said = [s for s in lines if "skipped 4 unreadable file(s)" in s]
    assert len(said) == 1 and "18 images" in said[0], lines
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    counted = [r for r in records if "skipped_files" in r]
    assert len(counted) == 1 and counted[0]["skipped_files"] == 4 and counted[0]["step"] == 0, records
    assert sorted(f.split(":")[0] for f in counted[0]["files"]) == ["bomb.png", "empty.png", "text.jpg",
                                                                    "truncated.png"]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"")
    (bad / "b.png").write_text("nope")
    from difflab.data import DataError

    with pytest.raises(DataError, match="none of the 2 image files"):
        train(kh.config(bad, steps=2), tmp_path / "r2", progress=False, log=quiet)


# ---- pickles ---------------------------------------------------------------------------------
class Payload:
    """Unpickling this creates a file: what a malicious 'checkpoint' would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_offered_as_weights_or_checkpoints_are_refused_unrun(data, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    fit(data, run, steps=8)
    (run / "model.safetensors").write_bytes(pickle.dumps({"w": Payload(marker)}))
    code, err = run_main(["sample", run, "--n", "1", "--steps", "2", "--out", tmp_path / "x.png"], capsys)
    assert code == 1 and "not a readable safetensors file" in one_line(err)
    with pytest.raises(CheckpointError):
        load_weights(run / "model.safetensors")

    newest = run / "checkpoints" / "step_0000008.pt"
    torch.save({"step": 8, "model": Payload(marker)}, newest)  # torch's zip format, a pickle inside
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(newest)
    lines: list[str] = []
    fit(data, run, steps=8, resume=True, log=lines.append)  # falls back to step 4 and redoes 5..8
    assert any("step_0000008.pt is unreadable" in s for s in lines)
    assert not marker.exists()


def _calls(tree: ast.AST, owner: str, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == name and isinstance(n.func.value, ast.Name) and n.func.value.id == owner]


def _keyword(call: ast.Call, key: str) -> object:
    found = [k.value for k in call.keywords if k.arg == key]
    return found[0].value if found and isinstance(found[0], ast.Constant) else "missing"


def test_every_torch_load_in_the_package_is_weights_only_and_nothing_unpickles_freely():
    loads = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "torch", "load"):
            loads.append(path.name)
            assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load may unpickle"
        for call in _calls(tree, "np", "load") + _calls(tree, "numpy", "load"):
            assert _keyword(call, "allow_pickle") is False, f"{path}:{call.lineno}: np.load may unpickle"
        for name in ("load", "loads"):
            assert not _calls(tree, "pickle", name), f"{path}: pickle.{name} runs code from files"
    assert len(loads) >= 4  # the checkpoint, raw export and two classifiers' weights


# ---- one writer per run ----------------------------------------------------------------------
def test_a_run_in_use_is_refused_and_the_lock_dies_with_its_holder(data, tmp_path, capsys):
    run = tmp_path / "run"
    fit(data, run, steps=4)
    before = folder_digest(run)
    fd = os.open(run / LOCK_NAME, os.O_RDWR)  # another open file: a second process to flock
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(RunInUseError, match="in use by another difflab process"):
            fit(data, run, steps=8, resume=True)
        assert folder_digest(run) == before
    finally:
        os.close(fd)
    assert fit(data, run, steps=8, resume=True).steps == 8

    fresh = tmp_path / "fresh"  # a new folder another process has just taken
    fresh.mkdir()
    labelled = tmp_path / "labelled"
    for i, p in enumerate(sorted(data.iterdir())):
        (labelled / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        (labelled / "ab"[i % 2] / p.name).write_bytes(p.read_bytes())
    fd = os.open(fresh / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        for cmd in (["train", "--data", f"folder:{data}", "--out", fresh, "--no-progress"],
                    ["train-vae", "--data", f"folder:{data}", "--out", fresh, "--no-progress"],
                    ["train-classifier", "--data", f"folder:{labelled}", "--out", fresh, "--no-progress"]):
            code, err = run_main(cmd, capsys)
            assert code == 1 and "in use by another difflab process" in one_line(err), cmd
        assert [p.name for p in fresh.iterdir()] == [LOCK_NAME]
    finally:
        os.close(fd)


def test_refused_commands_leave_a_run_without_a_lock_file_as_it_was(data, tmp_path, capsys):
    """A run written before run folders had locks: a refused command must not add one (nor any
    other byte); the checks run before the lock is taken, and again under it."""
    run = tmp_path / "old"
    fit(data, run, steps=4)
    (run / LOCK_NAME).unlink()
    before = folder_digest(run)
    tiny = ["--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1", "--attention-res", "none",
            "--no-progress"]
    cases = {  # what -> (command, what its error says)
        "new run over it": (["train", "--data", f"folder:{data}", "--out", run, *tiny],
                            "already holds a run"),
        "resume, other flags": (["train", "--data", f"folder:{data}", "--out", run, "--resume", "--lr", "0.5",
                                 *tiny], "was trained with different"),
        "train-vae over it": (["train-vae", "--data", f"folder:{data}", "--out", run, "--no-progress"],
                              "already holds a run"),
        "train-vae --resume of a diffusion run": (["train-vae", "--data", f"folder:{data}", "--out", run,
                                                   "--resume", "--no-progress"], "not a train-vae config"),
        "classifier over it": (["train-classifier", "--data", f"folder:{data}", "--out", run,
                                "--no-progress"], "already holds a run"),
    }
    for what, (cmd, says) in cases.items():
        code, err = run_main(cmd, capsys)
        assert code == 1 and says in one_line(err), (what, err)
        assert not (run / LOCK_NAME).exists() and folder_digest(run) == before, what

    base = tmp_path / "base"
    fit(data, base, steps=2)
    for cmd in (["finetune", base, "--data", f"folder:{data}", "--out", run, "--steps", "2", "--no-progress"],
                ["train-controlnet", base, "--control", "mask", "--data", f"folder:{data}", "--out", run,
                 "--steps", "2", "--no-progress"]):
        code, err = run_main(cmd, capsys)
        assert code == 1 and "already holds a run" in one_line(err), cmd
        assert not (run / LOCK_NAME).exists() and folder_digest(run) == before, cmd[0]


def test_configs_refuse_values_of_the_wrong_type_by_field(data, tmp_path):
    cfg = kh.config(data, steps=2)
    for field, value, want in (("steps", "10", "int"), ("steps", True, "int"), ("steps", 2.5, "int"),
                               ("lr", "1e-3", "float"), ("time_budget", "60", "float or None"),
                               ("seed", None, "int")):
        with pytest.raises(TypeError, match=f"TrainConfig.{field} must be {want}, got "):
            cfg.replace(**{field: value})
    assert cfg.replace(lr=1, time_budget=None).lr == 1  # an int is a float; None where allowed
    out = tmp_path / "typo"
    with pytest.raises(TypeError, match="steps must be int"):
        train(cfg.replace(steps="10"), out, progress=False, log=quiet)
    assert not out.exists()


# ---- file modes ------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_writes_get_the_umask_mode(data, tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
        save_weights({"w": torch.ones(2)}, tmp_path / "w.safetensors")
        fit(data, tmp_path / "run", steps=4)
    finally:
        os.umask(old)
    files = [tmp_path / "a.txt", tmp_path / "w.safetensors", tmp_path / "run" / "config.json",
             tmp_path / "run" / "model.safetensors", tmp_path / "run" / "checkpoints" / "step_0000004.pt"]
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in files}
    assert modes == {f.name: oct(0o666 & ~umask) for f in files}
