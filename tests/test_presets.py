"""The notes' programs: each preset is its note's numbers, the first model learns, note 002's grid,
and every help text states the default the code uses."""

import argparse
import re
import subprocess
import sys

import pytest
import torch

from difflab import NoiseSchedule, sample
from difflab.cli import build_parser
from difflab.data import DataConfig, DataError
from difflab.nets import build_net, mixing_sample, param_count
from difflab.pipeline import Pipeline
from difflab.presets import PRESETS, deviations, preset_config
from difflab.run_config import TrainConfig
from difflab.train import train
from tests.test_sampling import seed002_ddim, toy_model

CIFAR = DataConfig(source="cifar10", path="cifar")

# The notes' numbers, copied from the notes (not from difflab): note, data, T, schedule, network
# and its parameter count (all parameters, as the notes print them: 309,185 for BasicUNet, 1,707,009
# and 4,654,723 for the two UNet2DModels; MyUNet's 606,852 at the class default of 1000 steps is
# 526,852 with the 200-row time table of MyDDPM's n_steps=200), optimiser, lr, batch, epochs, loss,
# target, sampler.
NOTES = {
    "seed000": dict(data=("fashion-mnist", None), T=200, schedule="linear", net="myunet", params=526_852,
                    optimizer="adam", lr=1e-3, batch=128, epochs=20, loss="mse", prediction="eps",
                    sampler=("ddpm", 200, "beta", False), keep_best=True),
    "seed003-first": dict(data=("mnist", None), net="basic-unet", params=309_185, optimizer="adam", lr=1e-3,
                          batch=128, epochs=3, loss="mse", prediction="x0", sampler=("mix", 40, None, None)),
    "seed003-first-unet": dict(data=("mnist", None), net="diffusers-unet", params=1_707_009, optimizer="adam",
                               lr=1e-3, batch=128, epochs=5, loss="mse", prediction="x0",
                               sampler=("mix", 50, None, None)),
    "seed003": dict(data=("cifar10", 32), T=1000, schedule="cosine", net="diffusers-unet", params=4_654_723,
                    optimizer="adamw", lr=4e-4, batch=32, epochs=10, loss="mse", prediction="eps",
                    sampler=("ddpm", 1000, "beta_tilde", True)),
    "seed004": dict(data=("mnist", 64), T=300, schedule="linear", net="simple-unet", optimizer="adam",
                    lr=1e-3, batch=128, epochs=100, loss="l1", prediction="eps",
                    sampler=("ddpm", 300, "beta_tilde", False)),
}


def resolved(name):
    return preset_config(name, data=CIFAR) if name.startswith("seed003") and "first" not in name else \
        preset_config(name)


@pytest.mark.parametrize("name", list(NOTES))
def test_presets_are_the_notes_programs(name):
    note, cfg = NOTES[name], resolved(name)
    assert (cfg.data.source, cfg.data.image_size) == note["data"]
    assert (cfg.net_kind, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.loss, cfg.prediction) == (
        note["net"], note["optimizer"], note["lr"], note["batch"], note["epochs"], note["loss"],
        note["prediction"])
    assert (cfg.ema_decay, cfg.lr_schedule, cfg.grad_clip, cfg.weighting) == (0.0, "constant", 0.0, "none")
    sampler, steps, variance, clip = note["sampler"]
    assert (cfg.sample_sampler, cfg.sample_steps) == (sampler, steps)
    if sampler == "ddpm":
        assert (cfg.sample_variance, cfg.sample_clip) == (variance, clip)
        assert (cfg.T, cfg.schedule, cfg.objective) == (note["T"], note["schedule"], "diffusion")
    else:
        assert cfg.objective == "corrupt"
    assert cfg.keep_best == note.get("keep_best", False)
    if "params" in note:
        net_cfg = cfg.net or __import__("difflab.nets", fromlist=["x"]).default_net_config(
            cfg.net_kind, in_channels=1, image_size=28, n_steps=cfg.T)
        assert sum(p.numel() for p in build_net(net_cfg).parameters()) == note["params"]


def test_seed000_uses_the_linear_betas_of_the_note():
    sched = preset_config("seed000").make_schedule()
    torch.testing.assert_close(sched.betas, torch.linspace(1e-4, 0.02, 200, dtype=sched.betas.dtype))


def test_seed004_is_full_width_and_small_says_what_it_changes():
    full = preset_config("seed004")
    assert full.net.width == 1.0 and full.data.image_size == 64
    assert param_count(build_net(full.net)) == 62_437_601  # the note's 62.4M, with one input channel
    small = preset_config("seed004", small=True)
    assert small.net.width == 0.25 and small.data.image_size == 32
    assert any("--small" in d for d in deviations("seed004", small=True))
    with pytest.raises(ValueError, match="no --small variant"):
        preset_config("seed000", small=True)


def test_seed003_needs_data_named_and_takes_mnist_only_when_asked():
    with pytest.raises(DataError, match="cifar10:PATH"):
        preset_config("seed003")
    mnist = preset_config("seed003", data=DataConfig(source="mnist"))
    assert (mnist.data.image_size, mnist.data.channels, mnist.net.in_channels) == (32, 1, 1)
    full = preset_config("seed003-full", data=CIFAR)
    assert full.data.flip and full.net.block_out_channels == (64, 128, 128, 256)
    assert not preset_config("seed003", data=CIFAR).data.flip  # the flip is commented out in sec. 2.1.2


def test_every_preset_lists_its_deviations():
    for name in PRESETS:
        assert deviations(name), name


def test_steps_replace_the_epochs_of_a_preset():
    assert preset_config("seed000", steps=7).epochs is None
    assert preset_config("seed000", steps=7, epochs=2).epochs == 2


def test_the_first_model_learns_on_its_data_range(tmp_path):
    """BasicUNet ends in a SiLU (>= -0.28): on [-1, 1] data its MSE could not go below ~0.43, the
    floor of the old code. On the notes' [0, 1] data it falls far below that within 100 steps,
    also in [-1, 1] units (x4)."""
    torch.set_num_threads(1)
    cfg = preset_config("seed003-first", steps=100, batch_size=64, log_every=10, sample_every=100,
                        checkpoint_every=100, sample_n=4)
    result = train(cfg, tmp_path / "first", progress=False, log=lambda s: None)
    assert result.final_loss < 0.43 / 5
    assert 4 * result.final_loss < 0.43 / 3
    images = Pipeline.load(tmp_path / "first", "cpu").sample(4, steps=5)
    assert images.min() < -0.9  # dark background reached: samples are not grey


def test_mixing_offset_is_the_notes_unet_factor():
    net = lambda x, t: torch.full_like(x, 0.5)  # noqa: E731
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = x.clone()
    for i in range(50):
        factor = 1 / (50 - i + 1)  # note 003 sec. 1.5.3
        ref = ref * (1 - factor) + 0.5 * factor
    torch.testing.assert_close(mixing_sample(net, x, 50, offset=1), ref)
    assert torch.allclose(mixing_sample(net, x, 50), torch.full_like(x, 0.5))  # offset 0 lands on it


@pytest.mark.parametrize(("eta", "simple_var"), [(0.0, False), (1.0, True)])
def test_seed002_spacing_reproduces_note_002_at_1000_over_30(eta, simple_var):
    sched = NoiseSchedule.linear(1000)
    x = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = seed002_ddim(sched.alphas_cumprod, 1000, toy_model, x, 30, eta, simple_var,
                       torch.Generator().manual_seed(1))
    got = []
    sample(toy_model, x, schedule=sched, sampler="ddim", steps=30, spacing="seed002", eta=eta,
           simple_var=simple_var, generator=torch.Generator().manual_seed(1),
           callback=lambda i, t, x_, x0: got.append(x_))
    last = len(ref) if not simple_var else len(ref) - 1  # note 002 adds noise on its final step too
    for a, b in zip(got[:last], ref[:last], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    trailing = sample(toy_model, x, schedule=sched, sampler="ddim", steps=30, spacing="trailing", eta=0.0)
    if eta == 0:
        assert not torch.allclose(trailing, got[-1], atol=1e-6)  # the rounded grid is another grid


def _tiny_preset_run(tmp_path):
    cfg = preset_config("seed000", data=DataConfig(source="mnist", limit=32), steps=2, batch_size=8,
                        sample_every=10**6, checkpoint_every=2, sample_n=1)
    train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    return Pipeline.load(tmp_path / "run", "cpu")


def test_a_preset_run_samples_with_its_notes_sampler_by_default(tmp_path):
    pipe = _tiny_preset_run(tmp_path)
    default = pipe.sample(2, seed=3)
    note = pipe.sample(2, seed=3, sampler="ddpm", steps=200, variance="beta", clip_x0=False)
    torch.testing.assert_close(default, note, rtol=0, atol=0)
    assert not torch.equal(default, pipe.sample(2, seed=3, sampler="ddpm", steps=200, clip_x0=True))
    assert not torch.equal(default, pipe.sample(2, seed=3, sampler="ddpm", steps=200, variance="beta_tilde",
                                                clip_x0=False))


def test_diffusers_cond_unet_is_refused_with_what_to_use_instead(tmp_path):
    r = subprocess.run([sys.executable, "-m", "difflab", "train", "--net", "diffusers-cond-unet", "--out",
                        tmp_path / "x"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "use --net unet with --cond text" in r.stderr
    assert r.stderr.count("\n") == 1


# --- every help text states the default the code uses ------------------------------------------

_DEFAULT = re.compile(r"\(default: ([^;,)]+)")
# flags whose default is decided by the run's config (checked against TrainConfig)
_RUN_FIELDS = {"sampler": "sample_sampler", "steps": "sample_steps", "variance": "sample_variance",
               "clip": "sample_clip", "guidance": "sample_guidance"}


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices.items()


def _code_default(command, action):
    from difflab.cli.train import FIELDS

    if action.default is not None and action.default is not argparse.SUPPRESS:
        return action.default
    if command == "train" and action.dest in FIELDS:
        return TrainConfig.default(FIELDS[action.dest])
    if command == "sample" and action.dest in _RUN_FIELDS:
        return TrainConfig.default(_RUN_FIELDS[action.dest])
    if command == "train-vae":
        from difflab.cli.vae import FIELDS as VAE_FIELDS
        from difflab.latent.config import VAETrainConfig

        if action.dest in VAE_FIELDS:
            return VAETrainConfig.default(VAE_FIELDS[action.dest])
        if action.dest == "res_blocks":
            from difflab.nets.autoencoder import AutoencoderConfig

            return AutoencoderConfig.default("res_blocks")
    if command == "demo" and action.dest == "time_budget":
        from difflab.demo import TIME_BUDGET_S

        return f"{TIME_BUDGET_S / 60:g}m"
    if command == "train-classifier":
        from dataclasses import fields

        from difflab.classifier_run import ClassifierTrainConfig

        if action.dest == "data":
            return ClassifierTrainConfig.default("data").source
        if action.dest in {f.name for f in fields(ClassifierTrainConfig)}:
            return ClassifierTrainConfig.default(action.dest)
    if command == "finetune" and action.dest == "steps":  # None: --time-budget may give the length
        from difflab.nets.lora import DEFAULT_STEPS

        return DEFAULT_STEPS
    if command == "train-controlnet" and action.dest == "steps":  # None: --time-budget may give it
        from difflab.nets.controlnet import DEFAULT_STEPS as CONTROLNET_STEPS

        return CONTROLNET_STEPS
    if command == "sample" and action.dest == "classifier_scale":
        import inspect

        from difflab.pipeline import Pipeline

        return inspect.signature(Pipeline.sample).parameters["classifier_scale"].default
    return None


def test_every_help_default_is_the_code_default():
    checked = 0
    for command, sub in _subparsers():
        for action in sub._actions:
            stated = _DEFAULT.search(action.help or "")
            code = _code_default(command, action)
            if stated is None:
                continue
            text = stated.group(1).split(" ")[0]
            expected = ("on" if code else "off") if isinstance(code, bool) else code
            if expected is None:
                # a default the parser leaves to the library: it must be stated as such in the code
                described = text in ("the", "a", "all")  # "default: the run's ..." names no value
                assert described or action.dest in ("eta", "sigmas", "churn", "weights", "prediction",
                                                    "data") or (command, action.dest) in [
                    ("eval", "metrics"), ("eval", "sampler"), ("eval", "steps")], (command, action.dest, text)
                continue
            assert text == str(expected), f"{command} --{action.dest}: help says {text}, code {expected}"
            checked += 1
    assert checked >= 25


def test_sampling_defaults_stated_in_help_are_the_librarys():
    """eta 0 for ddim and 1 for the SDE samplers, rho 7, no churn: compare with the functions."""
    import inspect

    from difflab.samplers import SAMPLERS

    assert inspect.signature(SAMPLERS["ddim"]).parameters["eta"].default == 0.0
    assert inspect.signature(SAMPLERS["dpmpp-2m-sde"]).parameters["eta"].default == 1.0
    assert inspect.signature(SAMPLERS["heun"]).parameters["s_churn"].default == 0.0
    assert inspect.signature(sample).parameters["rho"].default == 7.0
    sample_help = dict(_subparsers())["sample"].format_help()
    assert "ddim (default: 0" in sample_help and "(default: 1)" in sample_help
