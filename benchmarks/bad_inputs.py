"""Bad input for every ``difflab`` subcommand and the main Python entry points, counted.

Every numeric or choice flag of every subcommand (read from the parser itself, so a new flag is
tried the day it lands) gets values of the wrong type and range; then hand-written cases give
missing and unreadable paths, empty folders, non-images, images of the wrong size, and runs of
another network or kind. Each case runs in its own child process (forked from a server that
imported difflab once) with a time limit, and must end in:

* exactly one line on stderr, starting ``difflab: error:`` (CLI) or naming a user-error type (API),
* exit status 2 for a bad flag value (usage) or 1 for bad files/data (runtime), as expected,
* no traceback, and no file changed in any fixture run folder (sha256 of every file, before/after).

Prints a table per command (Markdown, for benchmarks/README.md) and exits 1 when any case fails.
``--quick`` tries a small subset (tests/test_bad_inputs.py runs it); ``--only CMD`` one command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

USAGE, RUNTIME = 2, 1
LIMIT_S = 90.0
API_OK, API_BAD = 1, 3  # a child's status for an API case: a user error / anything else

# Values that every argument type must refuse at parse time (exit 2).
BAD_VALUES: dict[str, tuple[str, ...]] = {
    "positive_int": ("abc", "0", "-3", "2.5"),
    "positive_float": ("abc", "0", "-1", "nan", "inf"),
    "non_negative_float": ("abc", "-1", "nan", "inf"),
    "int": ("abc", "2.5"),
    "float": ("abc",),
    "duration": ("abc", "-1m", "0s"),
    "int_list": ("a,b", "0", ""),
    "_strength": ("abc", "1.5", "-0.1"),
}


@dataclass
class Case:
    command: str  # the table row it counts under
    what: str
    argv: list[str] = field(default_factory=list)
    expect: int = USAGE  # exit status; for API cases API_OK
    api: str | None = None  # a Python statement instead of argv


@dataclass
class Result:
    case: Case
    status: int | None
    stderr: str
    changed: list[str]
    seconds: float

    @property
    def line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def problems(self) -> list[str]:
        found = []
        lines = self.stderr.strip().splitlines()
        if self.status is None:
            found.append(f"no answer within {LIMIT_S:.0f} s")
        elif self.status != self.case.expect:
            found.append(f"status {self.status}, expected {self.case.expect}")
        if "Traceback" in self.stderr:
            found.append("traceback")
        if len(lines) != 1:
            found.append(f"{len(lines)} stderr lines")
        elif self.case.api is None and not lines[0].startswith("difflab"):
            found.append("not a difflab error line")
        if self.changed:
            found.append(f"changed {', '.join(self.changed[:3])}")
        return found


# ---- fixtures --------------------------------------------------------------------------------
def build_fixtures(root: Path) -> dict[str, Path]:
    """Tiny runs and files the cases point at (a few seconds of training in all)."""
    import numpy as np
    import torch
    from PIL import Image

    from difflab.cli import main
    from difflab.data import DataConfig
    from difflab.nets import NetShape
    from difflab.run_config import TrainConfig
    from difflab.train import train

    torch.set_num_threads(1)
    f: dict[str, Path] = {}
    rng = np.random.default_rng(0)
    imgs = root / "imgs"
    for c in ("a", "b"):
        (imgs / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(imgs / c / f"{i}.png")
    f["IMGS"] = imgs
    f["IMG"] = imgs / "a" / "0.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "mask.png")
    f["MASK"] = root / "mask.png"
    Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(root / "img10.png")
    f["IMG10"] = root / "img10.png"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "colour.png")
    f["COLOUR"] = root / "colour.png"
    (root / "text.png").write_text("not an image\n")
    f["TEXT"] = root / "text.png"
    (root / "empty").mkdir()
    f["EMPTY"] = root / "empty"
    (root / "junk").mkdir()
    (root / "junk" / "a.png").write_bytes(b"")
    (root / "junk" / "b.jpg").write_text("nope")
    f["JUNK"] = root / "junk"
    mixed = root / "mixed"
    mixed.mkdir()
    shutil.copy(f["IMG"], mixed / "a.png")
    shutil.copy(f["IMG10"], mixed / "b.png")
    f["MIXED"] = mixed
    (root / "nonsense.json").write_text("{not json")
    f["BADJSON"] = root / "nonsense.json"
    (root / "list.json").write_text("[1, 2]")
    f["LISTJSON"] = root / "list.json"
    np.save(root / "noise.npy", np.zeros((2, 1, 5, 5), np.float32))
    f["BADNOISE"] = root / "noise.npy"
    (root / "pickle.npy").write_bytes(b"\x80\x04K\x01.")
    f["PICKLE"] = root / "pickle.npy"

    shape = NetShape(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=())
    cfg = TrainConfig(data=DataConfig(source="folder", path=str(imgs)), net_shape=shape, net_kind="unet",
                      T=20, batch_size=8, steps=2, checkpoint_every=2, sample_every=1000, sample_n=2,
                      sample_steps=2, cond="class")
    train(cfg, root / "run", progress=False, log=lambda s: None)
    f["RUN"] = root / "run"
    f["RUNCFG"] = root / "run" / "config.json"
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    saved = sys.stdout
    sys.stdout = sink
    try:
        main(["train-classifier", "--data", f"folder:{imgs}", "--out", str(root / "clf"), "--steps", "1",
              "--T", "20", "--no-progress"])
    finally:
        sys.stdout = saved
        sink.close()
    f["CLF"] = root / "clf"
    broken = root / "broken"  # a run whose weights are cut short and whose config is from nowhere
    shutil.copytree(f["RUN"], broken)
    w = broken / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    f["BROKEN"] = broken
    alien = root / "alien"  # a run whose weights belong to another network
    shutil.copytree(f["RUN"], alien)
    from difflab.io import save_weights

    save_weights({"conv.weight": torch.zeros(3, 3)}, alien / "model.safetensors")
    f["ALIEN"] = alien
    future = root / "future"  # a run written by another version of difflab
    shutil.copytree(f["RUN"], future)
    cfg_json = json.loads((future / "config.json").read_text())
    (future / "config.json").write_text(json.dumps({**cfg_json, "warp_drive": True}))
    f["FUTURE"] = future
    f["MISSING"] = root / "no" / "such" / "path"
    f["OUTS"] = root / "outs"
    f["OUTS"].mkdir()
    from difflab.train.lock import LOCK_NAME

    for key in ("RUN", "CLF", "BROKEN", "ALIEN", "FUTURE"):  # as runs written before folders had locks:
        (f[key] / LOCK_NAME).unlink(missing_ok=True)  # a refused command must not add one
    return f


RUN_FOLDERS = ("RUN", "CLF", "BROKEN", "ALIEN", "FUTURE", "IMGS")


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- cases -----------------------------------------------------------------------------------
def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    from difflab.cli import build_parser

    leaves: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves[prefix.strip()] = parser
            return
        for name, sub in subs[0].choices.items():
            walk(f"{prefix} {name}", sub)

    walk("", build_parser())
    return leaves


# Good values for what a command requires, so a case reaches the flag it tries.
REQUIRED = {
    "run": "RUN", "vae": "RUN", "runs": "RUN", "out": "@OUT", "image": "IMG", "mask": "MASK",
    "path_a": "IMGS", "path_b": "IMGS", "control": "edges", "to": "diffusers",
}


def base_argv(name: str, parser: argparse.ArgumentParser, f: dict[str, Path]) -> list[str]:
    argv = name.split()
    for a in parser._actions:
        if a.dest == "help" or not (a.required or not a.option_strings):
            continue
        value = REQUIRED.get(a.dest, "RUN")
        value = str(f[value]) if value in f else value
        argv += [value] if not a.option_strings else [a.option_strings[0], value]
    return argv


def flag_cases(f: dict[str, Path]) -> list[Case]:
    """Wrong types and ranges for every typed flag, unknown values for every choice (usage)."""
    cases = []
    for name, parser in leaf_parsers().items():
        base = base_argv(name, parser, f)
        for a in parser._actions:
            if not a.option_strings or a.dest == "help":
                continue
            flag = a.option_strings[0]
            kind = getattr(a.type, "__name__", None)
            values = list(BAD_VALUES.get(kind or "", ()))
            if a.choices is not None:
                values.append("bogus")
            for v in values:
                cases.append(Case(name, f"{flag} {v!r}", [*base, flag, v], USAGE))
        cases.append(Case(name, "an unknown flag", [*base, "--no-such-flag"], USAGE))
    return cases


def path_cases(f: dict[str, Path]) -> list[Case]:
    """Missing, empty, unreadable, wrong-size and wrong-kind inputs (runtime, or usage where the
    message is about the value given)."""
    P = {k: str(v) for k, v in f.items()}
    O, PNG = "@OUT", "@PNG"  # a fresh output folder / image path, filled in per case
    data_train = ["train", "--out", O, "--steps", "1", "--no-progress", "--data"]
    sample = ["sample", "--n", "1", "--steps", "2", "--out", PNG]
    c = [
        Case("train", "missing data folder", [*data_train, f"folder:{P['MISSING']}"], RUNTIME),
        Case("train", "empty data folder", [*data_train, f"folder:{P['EMPTY']}"], RUNTIME),
        Case("train", "no readable image in the folder", [*data_train, f"folder:{P['JUNK']}"], RUNTIME),
        Case("train", "images of different sizes", [*data_train, f"folder:{P['MIXED']}"], RUNTIME),
        Case("train", "a data file, not a folder", [*data_train, f"folder:{P['IMG']}"], RUNTIME),
        Case("train", "unknown data set", [*data_train, "imagenet"], RUNTIME),
        Case("train", "--net-config missing", [*data_train, f"folder:{P['IMGS']}", "--net-config",
                                               P["MISSING"]], USAGE),
        Case("train", "--net-config not JSON", [*data_train, f"folder:{P['IMGS']}", "--net-config",
                                                P["BADJSON"]], USAGE),
        Case("train", "--net-config a JSON list", [*data_train, f"folder:{P['IMGS']}", "--net-config",
                                                   P["LISTJSON"]], USAGE),
        Case("train", "--out holds a run (no --resume)",
             ["train", "--data", f"folder:{P['IMGS']}", "--out", P["RUN"], "--steps", "1", "--no-progress"],
             RUNTIME),
        Case("train", "--resume with another network", ["train", "--data", f"folder:{P['IMGS']}", "--out",
                                                         P["RUN"], "--resume", "--net", "myunet",
                                                         "--no-progress"], RUNTIME),
        Case("train", "--resume of a classifier run", ["train", "--data", f"folder:{P['IMGS']}", "--out",
                                                       P["CLF"], "--resume", "--no-progress"], RUNTIME),
        Case("train", "--resume of a run from another version", ["train", "--data", f"folder:{P['IMGS']}",
                                                                 "--out", P["FUTURE"], "--resume",
                                                                 "--no-progress"], RUNTIME),
        Case("train", "--resume of an empty folder", [*data_train, f"folder:{P['IMGS']}", "--resume"],
             RUNTIME),
        Case("train", "--out is a file", ["train", "--data", f"folder:{P['IMGS']}", "--out", P["IMG"],
                                          "--steps", "1", "--no-progress"], RUNTIME),
        Case("train-classifier", "empty data folder", ["train-classifier", "--data", f"folder:{P['EMPTY']}",
                                                       "--out", O, "--steps", "1"], RUNTIME),
        Case("train-classifier", "--out holds a run", ["train-classifier", "--data", f"folder:{P['IMGS']}",
                                                       "--out", P["CLF"], "--steps", "1"], RUNTIME),
        Case("train-vae", "empty data folder", ["train-vae", "--data", f"folder:{P['EMPTY']}", "--out", O,
                                                "--steps", "1", "--no-progress"], RUNTIME),
        Case("train-vae", "--resume of a diffusion run", ["train-vae", "--out", P["RUN"], "--resume",
                                                          "--no-progress"], RUNTIME),
        Case("vae-check", "a diffusion run as the autoencoder", ["vae-check", P["RUN"]], RUNTIME),
        Case("vae-check", "missing autoencoder", ["vae-check", P["MISSING"]], RUNTIME),
        Case("finetune", "missing base run", ["finetune", P["MISSING"], "--out", O, "--data",
                                              f"folder:{P['IMGS']}"], RUNTIME),
        Case("finetune", "a classifier run as the base", ["finetune", P["CLF"], "--out", O, "--data",
                                                          f"folder:{P['IMGS']}"], RUNTIME),
        Case("finetune", "empty data folder", ["finetune", P["RUN"], "--out", O, "--data",
                                               f"folder:{P['EMPTY']}"], RUNTIME),
        Case("merge-lora", "missing adapter", ["merge-lora", P["RUN"], "--lora", P["MISSING"], "--out", O],
             RUNTIME),
        Case("merge-lora", "a run as the adapter", ["merge-lora", P["RUN"], "--lora", P["CLF"], "--out", O],
             RUNTIME),
        Case("train-controlnet", "missing base run", ["train-controlnet", P["MISSING"], "--control", "edges",
                                                      "--out", O], RUNTIME),
        Case("sample", "missing run", ["sample", P["MISSING"], "--out", PNG], RUNTIME),
        Case("sample", "an empty folder as the run", ["sample", P["EMPTY"], "--out", PNG], RUNTIME),
        Case("sample", "an image file as the run", ["sample", P["IMG"], "--out", PNG], RUNTIME),
        Case("sample", "a classifier run", ["sample", P["CLF"], "--out", PNG], RUNTIME),
        Case("sample", "truncated weights", [*sample, P["BROKEN"]], RUNTIME),
        Case("sample", "weights of another network", [*sample, P["ALIEN"]], RUNTIME),
        Case("sample", "config from another version", [*sample, P["FUTURE"]], RUNTIME),
        Case("sample", "--weights best without best.safetensors", [*sample, P["RUN"], "--weights", "best"],
             RUNTIME),
        Case("sample", "--class out of range", [*sample, P["RUN"], "--class", "12"], USAGE),
        Case("sample", "--prompt on a class run", [*sample, P["RUN"], "--prompt", "a cat"], USAGE),
        Case("sample", "--from-noise of the wrong shape", [*sample, P["RUN"], "--from-noise", P["BADNOISE"]],
             USAGE),
        Case("sample", "--from-noise missing", [*sample, P["RUN"], "--from-noise", P["MISSING"]], USAGE),
        Case("sample", "--from-noise a pickle", [*sample, P["RUN"], "--from-noise", P["PICKLE"]], USAGE),
        Case("sample", "--lora missing", [*sample, P["RUN"], "--lora", P["MISSING"]], RUNTIME),
        Case("sample", "--classifier missing",
             [*sample, P["RUN"], "--classifier", P["MISSING"], "--class", "1"], RUNTIME),
        Case("sample", "--classifier a diffusion run", [*sample, P["RUN"], "--classifier", P["RUN"],
                                                        "--class", "1"], RUNTIME),
        Case("sample", "--prompt-file missing", [*sample, P["RUN"], "--prompt-file", P["MISSING"]], USAGE),
        Case("sample", "--out into a file's folder", ["sample", P["RUN"], "--n", "1", "--steps", "2", "--out",
                                                      P["IMG"] + "/x.png"], RUNTIME),
        Case("eval", "missing run", ["eval", P["MISSING"], "--n", "2"], RUNTIME),
        Case("eval", "truncated weights", ["eval", P["BROKEN"], "--n", "2"], RUNTIME),
        Case("fd", "missing folder", ["fd", P["MISSING"], P["IMGS"]], USAGE),
        Case("fd", "empty folder", ["fd", P["EMPTY"], P["IMGS"]], USAGE),
        Case("fd", "no readable image", ["fd", P["JUNK"], P["IMGS"]], USAGE),
        Case("edit inpaint", "missing image", ["edit", "inpaint", P["RUN"], "--image", P["MISSING"], "--mask",
                                               P["MASK"], "--out", PNG], USAGE),
        Case("edit inpaint", "image of the wrong size", ["edit", "inpaint", P["RUN"], "--image", P["IMG10"],
                                                         "--mask", P["MASK"], "--out", PNG], USAGE),
        Case("edit inpaint", "colour mask", ["edit", "inpaint", P["RUN"], "--image", P["IMG"], "--mask",
                                             P["COLOUR"], "--out", PNG], USAGE),
        Case("edit inpaint", "not an image", ["edit", "inpaint", P["RUN"], "--image", P["TEXT"], "--mask",
                                              P["MASK"], "--out", PNG], USAGE),
        Case("edit inpaint", "a folder as the image", ["edit", "inpaint", P["RUN"], "--image", P["IMGS"],
                                                       "--mask", P["MASK"], "--out", PNG], USAGE),
        Case("edit img2img", "image of the wrong size", ["edit", "img2img", P["RUN"], "--image", P["IMG10"],
                                                         "--out", PNG], USAGE),
        Case("edit img2img", "missing run",
             ["edit", "img2img", P["MISSING"], "--image", P["IMG"], "--out", PNG], RUNTIME),
        Case("edit invert", "image of the wrong size", ["edit", "invert", P["RUN"], "--image", P["IMG10"],
                                                        "--out", PNG], USAGE),
        Case("edit interpolate", "--noise missing", ["edit", "interpolate", P["RUN"], "--noise", P["MISSING"],
                                                     P["MISSING"], "--out", PNG], USAGE),
        Case("edit interpolate", "--images of the wrong size", ["edit", "interpolate", P["RUN"], "--images",
                                                                P["IMG10"], P["IMG10"], "--out", PNG], USAGE),
        Case("edit upscale", "a run that is not super-resolution", ["edit", "upscale", P["RUN"], "--image",
                                                                    P["IMG"], "--out", PNG], USAGE),
        Case("export", "missing run", ["export", P["MISSING"], O, "--to", "diffusers"], RUNTIME),
        Case("export", "out inside the run", ["export", P["RUN"], P["RUN"] + "/export", "--to", "diffusers"],
             USAGE),
        Case("export", "a classifier run", ["export", P["CLF"], O, "--to", "diffusers"], RUNTIME),
        Case("show-forward", "unknown data set", ["show-forward", "--data", "imagenet", "--out", PNG],
             RUNTIME),
    ]
    return c


def api_cases(f: dict[str, Path]) -> list[Case]:
    """The Python entry points: each must raise a user-error type with a one-line message."""
    P = {k: str(v) for k, v in f.items()}
    load = "import difflab; p = difflab.load({run!r}, 'cpu')"
    sample = load.format(run=P["RUN"]) + "; p.sample({args})"
    train = ("from difflab.data import DataConfig; from difflab.train import TrainConfig, train; "
             "d = DataConfig(source='folder', path={imgs!r}); "
             "base = dict(data=d, steps=2, sample_every=1000, sample_n=2, sample_steps=2); "
             "train(TrainConfig(**{{**base, **dict({cfg})}}), 'api-run-{n}', progress=False, log=print)")
    return [Case("difflab.load", what, api=code, expect=API_OK) for what, code in [
        ("missing run", load.format(run=P["MISSING"])),
        ("an image file", load.format(run=P["IMG"])),
        ("truncated weights", load.format(run=P["BROKEN"])),
        ("weights of another network", load.format(run=P["ALIEN"])),
        ("config from another version", load.format(run=P["FUTURE"])),
        ("a classifier run", load.format(run=P["CLF"])),
        ("unknown weights choice", f"import difflab; difflab.load({P['RUN']!r}, 'cpu', weights='bogus')"),
        ("unknown device", f"import difflab; difflab.load({P['RUN']!r}, 'tpu:7')"),
    ]] + [Case("Pipeline.sample", what, api=sample.format(args=args), expect=API_OK) for what, args in [
        ("n=0", "0"), ("n=-2", "-2"), ("n='3'", "'3'"), ("steps=0", "2, steps=0"),
        ("steps=10**6", "1, steps=10**6"), ("unknown sampler", "1, sampler='bogus'"),
        ("guidance=-1", "1, guidance=-1.0"), ("class 12 of 2", "1, class_labels=[12]"),
        ("seed='x'", "1, seed='x'"), ("eta=2 on ddpm", "1, sampler='ddpm', eta=2.0"),
    ]] + [Case("train()", what, api=train.format(imgs=P["IMGS"], cfg=cfg, n=i), expect=API_OK)
          for i, (what, cfg) in enumerate([
        ("steps=0", "steps=0"), ("batch_size=-1", "batch_size=-1"), ("unknown net", "net_kind='bogus'"),
        ("lr=nan", "lr=float('nan')"), ("lr=inf", "lr=float('inf')"), ("ema_decay=2", "ema_decay=2.0"),
        ("steps='10'", "steps='10'"), ("steps=True", "steps=True"), ("steps=2.5", "steps=2.5"),
        ("lr='1e-3'", "lr='1e-3'"), ("seed=None", "seed=None"), ("T=1", "T=1"),
    ])]


# ---- running ---------------------------------------------------------------------------------
def _child(argv: list[str] | None, api: str | None, cwd: str, err_path: str) -> None:
    """One case, in a forked child: stdout to /dev/null, stderr to ``err_path``."""
    os.chdir(cwd)
    out = os.open(os.devnull, os.O_WRONLY)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    import torch

    torch.set_num_threads(1)
    if api is None:
        from difflab.cli import main

        sys.exit(main(argv))
    from difflab.cli import user_errors

    try:
        exec(api, {})
    except Exception as e:
        kinds = (*user_errors(), TypeError)
        print(f"{type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(API_OK if isinstance(e, kinds) else API_BAD)
    print("accepted without an error", file=sys.stderr)
    sys.exit(0)


def run_cases(cases: list[Case], f: dict[str, Path], scratch: Path,
              report: Callable[[Result], None] = lambda r: None) -> list[Result]:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "difflab", "difflab.cli", "difflab.train",
                                "difflab.viz", "matplotlib.figure", "bad_inputs"])
    watched = {k: f[k] for k in RUN_FOLDERS}
    results = []
    for i, case in enumerate(cases):
        before = {k: digest(v) for k, v in watched.items()}
        out = scratch / f"out{i}"
        argv = [str(out) if a == "@OUT" else str(out / "o.png") if a == "@PNG" else a for a in case.argv]
        err_path = scratch / f"err{i}.txt"
        t0 = time.perf_counter()
        p = ctx.Process(target=_child, args=(argv, case.api, str(scratch), str(err_path)))
        p.start()
        p.join(LIMIT_S)
        status = p.exitcode
        if p.is_alive():
            p.kill()
            p.join()
            status = None
        stderr = err_path.read_text() if err_path.exists() else ""
        changed = []
        for k, v in watched.items():
            after = digest(v)
            changed += [f"{k}/{n}" for n in sorted(set(before[k]) | set(after))
                        if before[k].get(n) != after.get(n)]
            if after != before[k]:  # put it back, so one failure does not spill into the next cases
                restore(f, k, before[k], after)
        r = Result(case, status, stderr, changed, time.perf_counter() - t0)
        results.append(r)
        report(r)
    return results


def restore(f: dict[str, Path], key: str, before: dict[str, str], after: dict[str, str]) -> None:
    for name in set(after) - set(before):
        (f[key] / name).unlink(missing_ok=True)


def table(results: list[Result]) -> str:
    rows = {}
    for r in results:
        row = rows.setdefault(r.case.command, {"tried": 0, "usage": 0, "runtime": 0, "api": 0, "tb": 0,
                                               "changed": 0, "failed": 0})
        row["tried"] += 1
        kind = "api" if r.case.api is not None else "usage" if r.status == USAGE else "runtime" \
            if r.status == RUNTIME else None
        if kind:
            row[kind] += 1
        row["tb"] += "Traceback" in r.stderr
        row["changed"] += bool(r.changed)
        row["failed"] += bool(r.problems())
    lines = ["| command | tried | exit 2 (usage) | exit 1 (runtime) | API user error | tracebacks | "
             "run folders changed | failed |", "|---|---|---|---|---|---|---|---|"]
    total = dict.fromkeys(("tried", "usage", "runtime", "api", "tb", "changed", "failed"), 0)
    for name, row in rows.items():
        lines.append(f"| `{name}` | " + " | ".join(str(row[k]) for k in total) + " |")
        for k in total:
            total[k] += row[k]
    lines.append("| **all** | " + " | ".join(f"**{total[k]}**" for k in total) + " |")
    return "\n".join(lines)


def select(cases: list[Case], quick: bool, only: str | None) -> list[Case]:
    if only:
        cases = [c for c in cases if c.command == only or c.command.startswith(only + " ")]
    if quick:  # the first flag case of every command, the hand-written sample cases, a few API ones
        seen: set[str] = set()
        keep = []
        for c in cases:
            flag = c.api is None and c.expect == USAGE and (" '" in c.what or c.what == "an unknown flag")
            if flag and c.command not in seen:
                seen.add(c.command)
                keep.append(c)
            elif (not flag and c.command == "sample") or (c.api is not None and "another" in c.what):
                keep.append(c)
        cases = keep
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset (the tests run it)")
    ap.add_argument("--only", help="one command (e.g. sample, 'edit inpaint', difflab.load)")
    ap.add_argument("--verbose", action="store_true", help="print every case's line")
    args = ap.parse_args(argv)
    import torch

    from bench_common import load_report, machine_report

    machine_report(torch.device("cpu"))
    scratch = Path(tempfile.mkdtemp(prefix="difflab-bad-inputs-"))
    (scratch / "work").mkdir()
    try:
        f = build_fixtures(scratch / "fixtures")
        cases = select(flag_cases(f) + path_cases(f) + api_cases(f), args.quick, args.only)
        print(f"{len(cases)} cases", flush=True)
        t0 = time.perf_counter()

        def report(r: Result) -> None:
            bad = r.problems()
            if bad or args.verbose:
                print(f"{'FAIL' if bad else 'ok  '} {r.case.command}: {r.case.what} -> [{r.status}] "
                      f"{r.line[:150]}" + (f"  <- {'; '.join(bad)}" if bad else ""), flush=True)

        results = run_cases(cases, f, scratch / "work", report)
        print(f"\n{len(results)} cases in {time.perf_counter() - t0:.0f} s\n")
        print(table(results))
        print(load_report("at the end"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    failed = sum(bool(r.problems()) for r in results)
    print(f"goal: every case a one-line error with the expected status, no traceback, no run folder "
          f"changed: {'met' if not failed else f'MISSED ({failed} failed)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
