"""Training to a time budget (``--time-budget``) and the network-shape flags.

The budgeted runs use a fake clock that advances a fixed amount per reading, so nothing here
depends on this machine's speed: the fitted step count is decided by the code paths alone."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from difflab.data import DataConfig
from difflab.nets import NetShape, UNetConfig, default_net_config
from difflab.train import TrainConfig, train
from difflab.train import loop as loop_module
from difflab.train.budget import (
    MIN_TIMED_STEPS,
    SKIP_STEPS,
    SideWork,
    calibration_done,
    fit_steps,
    parse_duration,
)

TINY = dict(
    data=DataConfig(source="mnist", limit=64),
    net_kind="myunet",
    T=50,
    batch_size=8,
    warmup_steps=20,
    checkpoint_every=5,
    sample_every=1000,
    sample_n=2,
    sample_steps=2,
    log_every=2,
)


class FakeClock:
    """Advances ``tick`` seconds at every reading; ``slow_after(t, tick)`` changes the pace."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick, self.change = 0.0, tick, None

    def slow_after(self, at: float, tick: float) -> None:
        self.change = (at, tick)

    def __call__(self) -> float:
        if self.change and self.now >= self.change[0]:
            self.tick = self.change[1]
        self.now += self.tick
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock(0.01)
    monkeypatch.setattr(loop_module, "clock", fake)
    return fake


def quiet(_: str) -> None:
    pass


# --- parsing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("600", 600), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400), ("2m30s", 150),
    (" 10M ", 600), ("0.5s", 0.5), ("1e3", 1000),
])
def test_parse_duration_units(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "m", "-5m", "0", "0m", "1h30", "30m1h", "1m1m",
                                  "nan", "inf", "10 minutes"])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(ValueError, match="duration|more than 0"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["abc", "-1m", "0s"])
def test_cli_refuses_a_bad_budget_in_one_line(value, tmp_path):
    r = subprocess.run([sys.executable, "-m", "difflab.cli", "train", "--out", str(tmp_path / "r"),
                        "--time-budget", value], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--time-budget" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_budget_and_epochs_exclude_each_other():
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(time_budget=60, epochs=2)
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(time_budget=0)


# --- the fit ----------------------------------------------------------------------------------

def test_fit_steps_closed_form():
    # 110 s budget, 10 s spent, 0.5 s per step, a 4 s grid every 10 steps, a 1 s checkpoint every
    # 50; the final grid and checkpoint are reserved: (110 - 10 - 5) / (0.5 + 0.4 + 0.02) = 103.26.
    side = [SideWork(4.0, 10), SideWork(1.0, 50)]
    assert fit_steps(110.0, 10.0, 7, 0.5, side) == 7 + 103
    assert fit_steps(110.0, 10.0, 7, 0.5, []) == 7 + 200
    assert fit_steps(10.0, 12.0, 7, 0.5, side) == 7  # already over: no more steps
    assert SideWork(3.0, 0).per_step() == 0.0


def test_calibration_waits_for_enough_timed_steps_then_the_warmup_or_the_time():
    first = SKIP_STEPS + MIN_TIMED_STEPS
    assert not calibration_done(first - 1, 100.0, 600.0, warmup_steps=0)
    assert calibration_done(first, 0.0, 600.0, warmup_steps=first)  # end of the warm-up
    assert not calibration_done(first, 29.0, 6000.0, warmup_steps=100)
    assert calibration_done(first, 30.0, 6000.0, warmup_steps=100)  # 30 s measured
    assert calibration_done(first, 0.5, 10.0, warmup_steps=100)  # 5% of a short budget


@pytest.fixture
def no_refit(monkeypatch):
    """The fake clock's pace per reading differs between calibration and later steps (the
    calibration reads it more often), which a refit would rightly correct: off for the tests of
    the fit itself."""
    monkeypatch.setattr(loop_module, "REFIT_AT", ())


def test_budget_run_fits_its_steps_and_equals_the_run_of_that_many_steps(tmp_path, clock, no_refit):
    logs: list[str] = []
    result = train(TrainConfig(**TINY, time_budget=3.0), tmp_path / "budget", progress=False, log=logs.append)
    saved = json.loads((tmp_path / "budget" / "config.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "budget" / "log.jsonl").read_text().splitlines()]
    fit = next(r for r in records if "fitted_steps" in r)
    n = fit["fitted_steps"]
    assert fit["step"] <= TINY["warmup_steps"] < n, "the fit falls inside the warm-up"
    assert result.steps == saved["steps"] == n and saved["time_budget"] == 3.0
    assert any(f"so {n} steps in all" in line for line in logs)
    assert result.seconds <= 3.0
    clock.now = 0.0
    train(TrainConfig(**TINY, steps=n), tmp_path / "steps", progress=False, log=quiet)
    a = load_file(tmp_path / "budget" / "model.safetensors")
    b = load_file(tmp_path / "steps" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_budget_run_killed_and_resumed_keeps_its_fit_and_remaining_budget(tmp_path, clock, no_refit):
    cfg = TrainConfig(**TINY, time_budget=3.0)
    kill_step = None

    class Kill(Exception):
        pass

    def kill_at(step, seconds, model):  # also in the reference run: it reads the clock, as time passes
        if step == kill_step:
            raise Kill

    train(cfg, tmp_path / "ref", progress=False, log=quiet, on_step=kill_at)
    n = json.loads((tmp_path / "ref" / "config.json").read_text())["steps"]
    kill_step = n - 3

    clock.now = 0.0
    with pytest.raises(Kill):
        train(cfg, tmp_path / "run", progress=False, log=quiet, on_step=kill_at)
    spent = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert spent["total_steps"] == n and 0 < spent["train_seconds"] < 3.0
    kill_step = None
    clock.now = 1000.0  # a later session: the clock's origin does not matter, the spent seconds do
    logs: list[str] = []
    result = train(cfg, tmp_path / "run", resume=True, progress=False, log=logs.append, on_step=kill_at)
    assert result.steps == n == json.loads((tmp_path / "run" / "config.json").read_text())["steps"]
    assert result.seconds > spent["train_seconds"]
    assert not any("fitted" in line or "time budget" in line for line in logs), "no second fit"
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "run" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_budget_run_stops_when_the_machine_slows_down(tmp_path, clock, no_refit):
    clock.slow_after(1.5, 0.2)
    logs: list[str] = []
    result = train(TrainConfig(**TINY, time_budget=3.0), tmp_path / "r", progress=False, log=logs.append)
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    n = next(r for r in records if "fitted_steps" in r)["fitted_steps"]
    assert result.steps < n
    assert any(f"stopping at step {result.steps} of the {n} fitted" in line for line in logs)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["steps"] == result.steps
    assert (tmp_path / "r" / "checkpoints" / f"step_{result.steps:07d}.pt").is_file()


# --- the network's shape ----------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "difflab.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_shape_flags_reach_the_run_config(tmp_path):
    out = tmp_path / "r"
    r = run_cli("train", "--data", "mnist", "--limit", "16", "--steps", "1", "--batch-size", "4",
                "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "2", "--attention-res", "14",
                "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("training 1 steps: about ")
    net = json.loads((out / "config.json").read_text())["net"]
    assert (net["base_channels"], net["channel_mult"], net["num_res_blocks"]) == (8, [1, 2], 2)
    assert net["attention_resolutions"] == [14]


def test_shape_keeps_the_default_attention_rule_for_new_levels():
    plain = default_net_config("unet", in_channels=1, image_size=28, context_dim=16)
    wider = default_net_config("unet", in_channels=1, image_size=28, context_dim=16,
                               shape=NetShape(base_channels=32, channel_mult=(1, 2)))
    assert plain.attention_resolutions == (7,) and wider.attention_resolutions == ()
    assert wider.base_channels == 32 and wider.channel_mult == (1, 2)
    with pytest.raises(ValueError, match="match no feature map"):
        default_net_config("unet", in_channels=1, image_size=28, shape=NetShape(attention_resolutions=(5,)))
    with pytest.raises(ValueError, match="--net-config"):
        TrainConfig(net_kind="myunet", net_shape=NetShape(base_channels=8))
    cfg = TrainConfig(net_shape=NetShape(channel_mult=(1, 2)))
    assert TrainConfig.from_json(cfg.to_json()) == cfg


def test_net_config_file(tmp_path):
    good = tmp_path / "net.json"
    good.write_text(json.dumps(UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                          groups=4, image_size=28).to_dict()))
    out = tmp_path / "r"
    r = run_cli("train", "--data", "mnist", "--limit", "16", "--steps", "1", "--batch-size", "4",
                "--net-config", good, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["net"]["base_channels"] == 8
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path, message in ((tmp_path / "missing.json", "does not exist"), (bad, "not a JSON file")):
        r = run_cli("train", "--net-config", path, "--out", tmp_path / "x", "--no-progress")
        assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("train", "--net-config", good, "--base-channels", "4", "--out", tmp_path / "x")
    assert r.returncode != 0 and "drop --base-channels" in r.stderr
    wrong = tmp_path / "rgb.json"
    wrong.write_text(json.dumps({"kind": "unet", "in_channels": 3, "base_channels": 8, "groups": 4}))
    r = run_cli("train", "--data", "mnist", "--limit", "16", "--steps", "1", "--net-config", wrong,
                "--out", tmp_path / "y", "--no-progress")
    assert r.returncode != 0 and "--channels 3" in r.stderr


def test_budget_run_refits_when_the_machine_slows_down_early(tmp_path, clock):
    clock.slow_after(0.5, 0.02)  # twice as slow from a sixth of the budget on, before the first refit
    logs: list[str] = []
    result = train(TrainConfig(**TINY, time_budget=3.0), tmp_path / "r", progress=False, log=logs.append)
    records = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    first = next(r for r in records if "fitted_steps" in r)["fitted_steps"]
    refits = [r for r in records if "refitted_steps" in r]
    assert refits and refits[0]["previous_steps"] == first and refits[-1]["refitted_steps"] < first
    assert result.steps == refits[-1]["refitted_steps"], "the refitted length is reached within the budget"
    assert not any("stopping at step" in line for line in logs)
    assert 0.8 * 3.0 < result.seconds <= 3.0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["steps"] == result.steps
