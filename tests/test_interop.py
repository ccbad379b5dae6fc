"""diffusers interoperability (difflab.interop): export runs as pipelines, import pipeline folders.

Everything is built here, tiny, with random weights (the tests check equivalence, not quality);
nothing is downloaded. diffusers is the oracle: its own pipelines and schedulers sample the
exported folders, and its schedulers are compared with difflab's samplers on imported ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from difflab.cli import main  # noqa: E402
from difflab.data import DataConfig  # noqa: E402
from difflab.interop.scheduler_config import (  # noqa: E402
    PREDICTIONS,
    SCHEDULES,
    from_scheduler_config,
    to_scheduler_config,
)
from difflab.interop.unet_convert import check_equal, convert_unet  # noqa: E402
from difflab.io import save_weights  # noqa: E402
from difflab.nets import DiffusersUNetConfig, MyUNetConfig, UNet, UNetConfig, build_net  # noqa: E402
from difflab.nets.autoencoder import AutoencoderConfig, AutoencoderKL  # noqa: E402
from difflab.run_config import TrainConfig  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TINY_UNET = UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4,
                       image_size=8)
TINY_DIFFUSERS = DiffusersUNetConfig(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                                     attention_head_dim=4,
                                     down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                     up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def perturbed(net: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere (several layers start at zero, which would hide wrong copies)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return net.eval()


def make_run(folder: Path, net_cfg=TINY_UNET, **fields) -> Path:
    fields = {"T": 20, "sample_steps": 4, **fields}
    cfg = TrainConfig(data=DataConfig(source="digits", image_size=8, channels=1), net=net_cfg, **fields)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(cfg.to_json() + "\n")
    save_weights(perturbed(build_net(net_cfg)).state_dict(), folder / "model.safetensors")
    return folder


def seeded(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def as_np(images: torch.Tensor) -> np.ndarray:
    """difflab's [-1, 1] NCHW images as diffusers' output_type="np" images ([0, 1] NHWC)."""
    return ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "unet": make_run(root / "unet"),
        "class": make_run(root / "class", TINY_UNET.replace(num_classes=3), cond="class",
                          class_names=("a", "b", "c")),
        "diffusers": make_run(root / "diffusers", TINY_DIFFUSERS, prediction="eps", schedule="linear",
                              sample_sampler="ddpm", sample_steps=20),
    }


# ---- import difflab stays free of diffusers ------------------------------------------------------
def test_import_difflab_and_its_interop_does_not_import_diffusers():
    code = ("import sys, difflab, difflab.interop, difflab.interop.load, difflab.interop.export, "
            "difflab.interop.scheduler_config, difflab.interop.unet_convert\n"
            "from difflab.cli import build_parser; build_parser()\n"
            "print('diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---- scheduler configs, both ways ----------------------------------------------------------------
SAMPLING_FIELDS = ("clip_sample", "clip_sample_range", "thresholding", "steps_offset", "timestep_spacing",
                   "rescale_betas_zero_snr", "prediction_type", "num_train_timesteps", "beta_schedule",
                   "beta_start", "beta_end", "trained_betas")


@pytest.mark.parametrize("class_name", ["DDIMScheduler", "DDPMScheduler"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("zero_snr", [False, True])
def test_exported_scheduler_config_is_the_runs_schedule_in_diffusers_and_back(tmp_path, class_name, schedule,
                                                                              prediction, zero_snr):
    cfg = TrainConfig(schedule=schedule, T=50, prediction=prediction, zero_terminal_snr=zero_snr,
                      sample_steps=10, sample_clip=False, sample_variance="beta_tilde")
    written = to_scheduler_config(schedule, 50, prediction, zero_terminal_snr=zero_snr, clip=False,
                                  variance="beta_tilde", class_name=class_name)
    sched = getattr(diffusers, class_name).from_config(written)
    sched.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    # every field that changes sampling is in the file itself, not left to a class default
    need = (*SAMPLING_FIELDS, "set_alpha_to_one" if class_name == "DDIMScheduler" else "variance_type")
    assert set(need) <= set(written)
    assert {k: saved[k] for k in need} == {k: written[k] for k in need}
    assert saved["timestep_spacing"] == "trailing" and saved["clip_sample"] is False
    ours = cfg.make_schedule().alphas_cumprod
    torch.testing.assert_close(sched.alphas_cumprod.double(), ours, atol=2e-6, rtol=1e-5)
    back = from_scheduler_config(saved)
    keys = ("schedule", "T", "prediction", "zero_terminal_snr", "sample_clip")
    assert {k: back.fields[k] for k in keys} == {
        "schedule": schedule, "T": 50, "prediction": prediction, "zero_terminal_snr": zero_snr,
        "sample_clip": False}
    torch.testing.assert_close(back.schedule.alphas_cumprod, ours, atol=2e-7, rtol=1e-6)
    if class_name == "DDPMScheduler":
        assert back.fields["sample_variance"] == "beta_tilde"


@pytest.mark.parametrize("class_name, extra", [
    ("DDPMScheduler", {"beta_schedule": "linear", "beta_start": 0.0002, "beta_end": 0.012}),
    ("DDPMScheduler", {"beta_schedule": "laplace"}),
    ("DDIMScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.001, "beta_end": 0.02,
                       "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}),
    ("DDIMScheduler", {"trained_betas": torch.linspace(1e-3, 0.2, 30).tolist()}),
    ("EulerDiscreteScheduler", {"beta_schedule": "scaled_linear"}),
])
def test_imported_schedule_is_diffusers_own(class_name, extra):
    T = 30
    sched = getattr(diffusers, class_name)(num_train_timesteps=T, **extra)
    got = from_scheduler_config(dict(sched.config), class_name)
    torch.testing.assert_close(got.schedule.alphas_cumprod, sched.alphas_cumprod.double(), atol=1e-6,
                               rtol=1e-5)
    assert got.fields["T"] == T


@pytest.mark.parametrize("class_name, option, value, named", [
    ("DDIMScheduler", "thresholding", True, "thresholding"),
    ("DDIMScheduler", "clip_sample_range", 2.0, "clip_sample_range"),
    ("DDIMScheduler", "set_alpha_to_one", False, "set_alpha_to_one"),
    ("DDIMScheduler", "steps_offset", 1, "steps_offset"),
    ("DDPMScheduler", "variance_type", "learned_range", "variance_type"),
    ("DDIMScheduler", "timestep_spacing", "karras", "timestep_spacing"),
    ("DDIMScheduler", "timestep_spacing", "linspace", "steps from each timestep by T // steps"),
    ("DPMSolverMultistepScheduler", "solver_order", 3, "solver_order"),
    ("EulerDiscreteScheduler", "use_karras_sigmas", True, "use_karras_sigmas"),
])
def test_a_scheduler_option_difflab_cannot_honour_is_named(class_name, option, value, named):
    cfg = {"_class_name": class_name, "num_train_timesteps": 20, option: value}
    with pytest.raises(ValueError, match=named) as err:
        from_scheduler_config(cfg)
    assert "\n" not in str(err.value)


def test_inert_and_mapped_scheduler_options_are_accepted():
    # steps_offset acts on the leading grid only; sample_max_value only with thresholding
    got = from_scheduler_config({"_class_name": "DDIMScheduler", "num_train_timesteps": 20,
                                 "steps_offset": 1, "timestep_spacing": "trailing",
                                 "sample_max_value": 3.0, "clip_sample": False})
    assert got.spacing == "trailing" and got.fields["sample_clip"] is False
    with pytest.raises(ValueError, match="scheduler FooScheduler"):
        from_scheduler_config({"_class_name": "FooScheduler"})
    # PLMS has no difflab sampler; its config under DDPMScheduler keeps the schedule, and the keys
    # DDPMScheduler does not take are ignored, as diffusers ignores them
    pndm = dict(diffusers.PNDMScheduler(num_train_timesteps=20, beta_schedule="scaled_linear",
                                        beta_start=0.00085, beta_end=0.012).config,
                _class_name="PNDMScheduler")
    with pytest.raises(ValueError, match="set _class_name to DDPMScheduler"):
        from_scheduler_config(pndm)
    got = from_scheduler_config({**pndm, "_class_name": "DDPMScheduler"})
    assert got.schedule_exact and got.fields["schedule"] == "scaled_linear"
    assert "set_alpha_to_one" in got.notes[0]


# ---- the UNet conversion -------------------------------------------------------------------------
CONVERTIBLE = {
    "tiny": TINY_UNET,
    "attention levels, classes": UNetConfig(in_channels=3, base_channels=16, channel_mult=(1, 2, 2),
                                            num_res_blocks=2, groups=8, image_size=16,
                                            attention_resolutions=(8, 4), num_classes=3),
    "no mid attention": TINY_UNET.replace(mid_attention=False, num_res_blocks=2),
}


@pytest.mark.parametrize("name", list(CONVERTIBLE))
def test_converted_unet_gives_the_same_outputs(name):
    cfg = CONVERTIBLE[name]
    net = perturbed(UNet(cfg))
    unet = convert_unet(net, check=False)
    assert unet.config.resnet_time_scale_shift == "scale_shift"
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
    for t in (torch.tensor([0, 5, 17, 999]), torch.tensor([0.5, 3.25, 100.0, 998.9])):  # int and float t
        labels = torch.tensor([0, 1, 2, 3]) if cfg.num_classes else None  # 3 = the null class
        ours = net(x, t, class_labels=labels)
        theirs = unet(x, t, class_labels=labels).sample
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    if cfg.num_classes:  # difflab's class_labels=None is the null class, the last embedding
        torch.testing.assert_close(unet(x, t, class_labels=torch.full((4,), 3)).sample, net(x, t),
                                   atol=1e-5, rtol=1e-4)


def test_conversion_check_catches_a_network_that_differs():
    net = perturbed(UNet(TINY_UNET))
    unet = convert_unet(net)
    with torch.no_grad():
        unet.up_blocks[0].resnets[0].conv2.weight.mul_(1.01)
    with pytest.raises(ValueError, match="differs from the UNet"):
        check_equal(net, unet, 8)


@pytest.mark.parametrize("change, named", [
    ({"context_dim": 8}, "context_dim=8"),
    ({"channel_mult": (2, 2)}, "channel_mult"),
    ({"groups": 4, "base_channels": 6}, "groups=4"),
    ({"channel_mult": (1, 2), "attention_resolutions": (8, 4), "num_heads": 2}, "attention heads"),
    ({"image_size": 7}, "image size 7"),
])
def test_conversion_names_what_unet2d_cannot_express(change, named):
    cfg = TINY_UNET.replace(**change)
    with pytest.raises(ValueError, match=named):
        convert_unet(UNet(cfg))


# ---- export: diffusers samples what difflab samples ------------------------------------------------
def test_export_samples_like_difflabs_ddim_and_leaves_the_run_alone(runs, tmp_path, capsys):
    run = runs["unet"]
    before = digest(run)
    code, out, err = cli(capsys, "export", run, tmp_path / "out", "--to", "diffusers")
    assert code == 0, err
    assert "DDIMPipeline" in out and "outputs equal" in out
    assert digest(run) == before
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    assert type(pipe).__name__ == "DDIMPipeline" and type(pipe.scheduler).__name__ == "DDIMScheduler"
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=3, generator=seeded(3), num_inference_steps=4, eta=0.0,
                  use_clipped_model_output=True, output_type="np").images
    import difflab

    ours = difflab.load(run, device="cpu").sample(3, sampler="ddim", steps=4, eta=0.0, seed=0)
    np.testing.assert_allclose(theirs, as_np(ours), atol=1e-4)
    # and back: the exported folder sampled by difflab is the run
    back = difflab.load(f"diffusers:{tmp_path / 'out'}", device="cpu")
    assert (back.config.schedule, back.config.prediction, back.config.sample_sampler) == ("cosine", "v",
                                                                                          "dpmpp-2m-sde")
    original = difflab.load(run, device="cpu")
    for kwargs in ({"sampler": "ddim", "steps": 4}, {}):  # the run's own recipe too
        torch.testing.assert_close(back.sample(3, seed=0, **kwargs), original.sample(3, seed=0, **kwargs),
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("schedule, prediction, zero_snr, clip", [
    ("sigmoid", "eps", False, False),  # DDIMScheduler has no sigmoid: exported as trained_betas
    ("linear", "x0", True, False),
    ("scaled_linear", "v", True, True),
    ("cosine", "eps", True, True),  # eps at zero SNR needs the clip (both libraries divide by 0)
])
def test_exported_schedules_and_predictions_sample_alike(tmp_path, schedule, prediction, zero_snr, clip):
    import difflab
    from difflab.interop.export import export_run

    run = make_run(tmp_path / "run", schedule=schedule, prediction=prediction, zero_terminal_snr=zero_snr,
                   sample_clip=clip)
    export_run(run, tmp_path / "out")
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=2, generator=seeded(2), num_inference_steps=5, use_clipped_model_output=True,
                  output_type="np").images
    ours = difflab.load(run, device="cpu").sample(2, sampler="ddim", steps=5, seed=0)
    np.testing.assert_allclose(theirs, as_np(ours), atol=1e-4)


def test_export_of_a_diffusers_unet_run_is_exact_and_samples_like_difflabs_ddpm(runs, tmp_path):
    from difflab.interop.export import export_run
    from difflab.io import load_weights

    report = export_run(runs["diffusers"], tmp_path / "out")
    assert report.pipeline_class == "DDPMPipeline" and report.max_difference == 0.0
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.variance_type == "fixed_large"  # the run's "beta" variance
    state = load_weights(runs["diffusers"] / "model.safetensors")
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, state[f"inner.{key}"]), key
    import difflab

    theirs = pipe(batch_size=3, generator=seeded(3), num_inference_steps=20, output_type="np").images
    ours = difflab.load(runs["diffusers"], device="cpu").sample(3, sampler="ddpm", steps=20, seed=0)
    np.testing.assert_allclose(theirs, as_np(ours), atol=1e-4)


CLASS_PIPELINE = """
import sys, numpy as np, torch
from diffusers import DiffusionPipeline
try:
    DiffusionPipeline.from_pretrained(sys.argv[1])
    print("LOADED WITHOUT TRUST")
except ValueError as err:
    print("refused:", "trust_remote_code" in str(err))
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
print(type(pipe).__name__)
gens = [torch.Generator().manual_seed(i) for i in range(3)]
out = pipe(class_labels=[0, 2, 1], generator=gens, num_inference_steps=4, guidance_scale=2.5,
           output_type="np")
np.save(sys.argv[2], out.images)
"""


def test_class_conditional_export_is_a_custom_pipeline_that_needs_trust_and_matches(runs, tmp_path):
    from difflab.interop.export import export_run

    report = export_run(runs["class"], tmp_path / "out")
    assert report.needs_trust_remote_code
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_difflab", "DifflabClassPipeline"]
    assert "trust_remote_code=True" in (tmp_path / "out" / "README.md").read_text()
    env = {**ENV, "HF_HOME": str(tmp_path / "hf"), "HF_MODULES_CACHE": str(tmp_path / "hf" / "modules")}
    r = subprocess.run([sys.executable, "-c", CLASS_PIPELINE, str(tmp_path / "out"), str(tmp_path / "x.npy")],
                       capture_output=True, text=True, env=env, check=False, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: True" in r.stdout and "DifflabClassPipeline" in r.stdout
    import difflab

    ours = difflab.load(runs["class"], device="cpu").sample(3, sampler="ddim", steps=4, eta=0.0, seed=0,
                                                            class_labels=[0, 2, 1], guidance=2.5)
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), as_np(ours), atol=1e-4)
    back = difflab.load(tmp_path / "out", device="cpu")  # a folder with model_index.json
    assert back.num_classes == 3 and back.class_names == ("a", "b", "c")
    torch.testing.assert_close(back.sample(3, sampler="ddim", steps=4, seed=0, class_labels=[0, 2, 1],
                                           guidance=2.5), ours, atol=1e-4, rtol=0)
    original = difflab.load(runs["class"], device="cpu")  # no labels: the null class in both
    torch.testing.assert_close(back.sample(2, sampler="ddim", steps=4, seed=0),
                               original.sample(2, sampler="ddim", steps=4, seed=0), atol=1e-4, rtol=0)


def test_a_class_conditional_diffusers_unet_run_round_trips(tmp_path):
    import difflab
    from difflab.interop.export import export_run

    run = make_run(tmp_path / "run", TINY_DIFFUSERS.replace(num_class_embeds=4), cond="class",
                   class_names=("x", "y", "z"), prediction="eps")
    report = export_run(run, tmp_path / "out")
    assert report.pipeline_class == "DifflabClassPipeline" and report.max_difference == 0.0
    back, original = difflab.load(tmp_path / "out", device="cpu"), difflab.load(run, device="cpu")
    assert back.num_classes == 3 and back.class_names == ("x", "y", "z")
    for kwargs in ({"class_labels": [2, 0], "guidance": 2.0}, {}):
        torch.testing.assert_close(back.sample(2, sampler="ddim", steps=4, seed=1, **kwargs),
                                   original.sample(2, sampler="ddim", steps=4, seed=1, **kwargs),
                                   atol=1e-5, rtol=0)


def test_export_takes_the_ema_weights_unless_told_raw(runs, tmp_path):
    from difflab.interop.export import export_run
    from difflab.io import load_weights

    run = tmp_path / "run"
    make_run(run)
    raw = perturbed(build_net(TINY_UNET), seed=5).state_dict()
    (run / "checkpoints").mkdir()
    torch.save({"model": raw, "ema": {"model": load_weights(run / "model.safetensors")}},
               run / "checkpoints" / "step_0000010.pt")
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 15])
    for weights, state in (("ema", load_weights(run / "model.safetensors")), ("raw", raw)):
        export_run(run, tmp_path / weights, weights=weights)
        net = build_net(TINY_UNET)
        net.load_state_dict(state)
        unet = diffusers.UNet2DModel.from_pretrained(tmp_path / weights / "unet")
        torch.testing.assert_close(unet(x, t).sample, net.eval()(x, t), atol=1e-5, rtol=1e-4)
        assert json.loads((tmp_path / weights / "difflab.json").read_text())["weights"] == weights


def test_export_errors_are_one_line(runs, tmp_path, capsys):
    myunet = make_run(tmp_path / "myunet", MyUNetConfig(n_steps=20), sample_steps=4)
    text = make_run(tmp_path / "text", TINY_DIFFUSERS, cond="text")
    latent = make_run(tmp_path / "latent", latent=str(tmp_path / "vae"))
    nonempty = tmp_path / "full"
    nonempty.mkdir()
    (nonempty / "x").write_text("x")
    cases = [
        ((tmp_path / "nothing", tmp_path / "o1"), "has no config.json"),
        ((runs["unet"], runs["unet"] / "export"), "inside the run folder"),
        ((runs["unet"], nonempty), "not empty"),
        ((myunet, tmp_path / "o2"), "--net myunet has no diffusers UNet2DModel form"),
        ((text, tmp_path / "o3"), "--net diffusers-unet with --cond text has no diffusers form"),
        ((latent, tmp_path / "o6"), "if the run's autoencoder moved, give it with --autoencoder PATH"),
        ((runs["unet"], tmp_path / "o7", "--autoencoder", tmp_path / "vae"), "not a latent run"),
        ((runs["unet"], tmp_path / "o4", "--weights", "best"), "has no best.safetensors"),
        ((runs["unet"], tmp_path / "o5", "--weights", "raw"), "no checkpoints"),
    ]
    runtime = {"has no config.json", "has no best.safetensors", "no checkpoints",  # files missing: status 1
               "if the run's autoencoder moved, give it with --autoencoder PATH"}
    for args, message in cases:
        code, _, err = cli(capsys, "export", *args, "--to", "diffusers")
        status = 1 if message in runtime else 2
        assert code == status and message in err and err.count("\n") == 1, (args, err)
    assert not (runs["unet"] / "export").exists() and not (tmp_path / "o2").exists()


# ---- import: a diffusers pipeline folder under difflab's samplers ----------------------------------
def foreign_pipeline(folder: Path, scheduler: str = "DDPMScheduler", **sched_kwargs) -> Path:
    """A UNet2DModel pipeline as diffusers users write them (default time conditioning, not
    difflab's), with a schedule difflab has no name for."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 norm_num_groups=4, attention_head_dim=4, layers_per_block=1,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    perturbed(unet)
    kwargs = {"num_train_timesteps": 40, "beta_schedule": "linear", "beta_start": 0.0005, "beta_end": 0.05,
              **({"clip_sample": False} if scheduler in ("DDPMScheduler", "DDIMScheduler") else {}),
              **sched_kwargs}
    sched = getattr(diffusers, scheduler)(**kwargs)
    pipe_cls = diffusers.DDIMPipeline if scheduler == "DDIMScheduler" else diffusers.DDPMPipeline
    pipe_cls(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_imported_pipeline_matches_diffusers_ddim_and_ddpm(tmp_path, prediction):
    import difflab

    folder = foreign_pipeline(tmp_path / "p", prediction_type=prediction)
    pipe = difflab.load(f"diffusers:{folder}", device="cpu")
    assert pipe.config.sample_sampler == "ddpm"
    assert pipe.config.prediction == {"epsilon": "eps", "v_prediction": "v"}[prediction]
    ddpm = diffusers.DDPMPipeline.from_pretrained(folder)
    ddpm.set_progress_bar_config(disable=True)
    theirs = ddpm(batch_size=3, generator=seeded(3), num_inference_steps=40, output_type="np").images
    np.testing.assert_allclose(theirs, as_np(pipe.sample(3, seed=0)), atol=1e-4)  # the run default: ddpm, T
    ddim = diffusers.DDIMPipeline(unet=ddpm.unet, scheduler=diffusers.DDIMScheduler.from_config(
        ddpm.scheduler.config))
    ddim.set_progress_bar_config(disable=True)
    for spacing in ("leading", "trailing"):
        ddim.scheduler = diffusers.DDIMScheduler.from_config(ddpm.scheduler.config, timestep_spacing=spacing)
        theirs = ddim(batch_size=3, generator=seeded(3), num_inference_steps=8, eta=0.0,
                      output_type="np").images
        ours = pipe.sample(3, sampler="ddim", steps=8, eta=0.0, seed=0, spacing=spacing)
        np.testing.assert_allclose(theirs, as_np(ours), atol=1e-4)


@pytest.mark.parametrize("scheduler, sampler", [("DPMSolverMultistepScheduler", "dpmpp-2m"),
                                                ("UniPCMultistepScheduler", "unipc"),
                                                ("EulerDiscreteScheduler", "euler")])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_imported_pipeline_samples_like_the_diffusers_scheduler_it_names(tmp_path, scheduler, sampler,
                                                                         prediction):
    """The pipeline's scheduler class is the imported run's default sampler, and difflab's sampler
    gives diffusers' images on the trailing grid. Euler starts from difflab's exact x_T sqrt(1 +
    sigma_max^2) (diffusers' init_noise_sigma is sigma_max there: tests/test_samplers_parity.py)."""
    import difflab

    folder = foreign_pipeline(tmp_path / "p", scheduler, prediction_type=prediction,
                              timestep_spacing="trailing")
    pipe = difflab.load(folder, device="cpu")
    assert pipe.config.sample_sampler == sampler
    ref = diffusers.DDPMPipeline.from_pretrained(folder)
    sched = ref.scheduler
    assert type(sched).__name__ == scheduler
    sched.set_timesteps(8)
    start = float((1 + sched.sigmas.max() ** 2) ** 0.5) if sampler == "euler" else sched.init_noise_sigma
    x = torch.stack([torch.randn(1, 8, 8, generator=g) for g in seeded(2)]) * start
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(ref.unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    theirs = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(theirs, as_np(pipe.sample(2, seed=0, steps=8, spacing="trailing")), atol=1e-4)


def test_imported_pipeline_keeps_trained_betas_exactly(tmp_path):
    import difflab

    betas = torch.linspace(2e-3, 0.3, 40) ** 1.5
    folder = foreign_pipeline(tmp_path / "p", "DDIMScheduler", trained_betas=betas.tolist(),
                              prediction_type="v_prediction", timestep_spacing="trailing")
    pipe = difflab.load(folder, device="cpu")
    ref = diffusers.DDIMPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    torch.testing.assert_close(pipe.schedule.alphas_cumprod, ref.scheduler.alphas_cumprod.double(), atol=1e-6,
                               rtol=1e-5)
    theirs = ref(batch_size=2, generator=seeded(2), num_inference_steps=5, eta=0.0, output_type="np").images
    np.testing.assert_allclose(theirs, as_np(pipe.sample(2, sampler="ddim", steps=5, seed=0)), atol=1e-4)


def test_sample_eval_and_edit_commands_take_a_pipeline_folder(tmp_path, capsys):
    from PIL import Image

    folder = foreign_pipeline(tmp_path / "p")
    code, out, err = cli(capsys, "sample", f"diffusers:{folder}", "--n", "2", "--sampler", "dpmpp-2m",
                         "--steps", "4", "--out", tmp_path / "grid.png", "--device", "cpu")
    assert code == 0 and (tmp_path / "grid.png").is_file(), err
    code, out, err = cli(capsys, "eval", f"diffusers:{folder}", "--n", "2", "--metrics", "bpd",
                         "--bpd-n", "2", "--bpd-timesteps", "2", "--data", "digits", "--no-progress",
                         "--device", "cpu")
    assert code == 0 and "| bpd |" in out, err
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(tmp_path / "img.png")
    code, out, err = cli(capsys, "edit", "img2img", f"diffusers:{folder}", "--image", tmp_path / "img.png",
                         "--out", tmp_path / "i2i.png", "--device", "cpu")
    assert code == 0 and (tmp_path / "i2i.png").is_file(), err


def test_a_foreign_class_conditional_unet_has_no_null_class_unless_its_folder_says_so(tmp_path):
    import difflab

    torch.manual_seed(0)
    unet = perturbed(diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
        layers_per_block=1, num_class_embeds=4, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D")))
    sched = diffusers.DDPMScheduler(num_train_timesteps=20)
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "p")
    pipe = difflab.load(tmp_path / "p", device="cpu")
    assert pipe.num_classes == 4 and pipe.config.sample_guidance == 1.0  # every embedding is a class
    x, t, labels = torch.randn(4, 1, 8, 8), torch.tensor([1, 5, 9, 19]), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(pipe.net(x, t, class_labels=labels), unet(x, t, class_labels=labels).sample)
    assert pipe.sample(4, steps=4, sampler="ddim", class_labels=[0, 1, 2, 3]).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="no known null class, so classifier-free guidance cannot run"):
        pipe.sample(2, steps=4, sampler="ddim", class_labels=[0, 3], guidance=3.0)
    with pytest.raises(ValueError, match="give a class label"):
        pipe.sample(2, steps=4, sampler="ddim")
    (tmp_path / "p" / "difflab.json").write_text('{"null_class": true}')  # the last embedding is "none"
    pipe = difflab.load(tmp_path / "p", device="cpu")
    assert pipe.num_classes == 3
    torch.testing.assert_close(pipe.net(x, t), unet(x, t, class_labels=torch.full((4,), 3)).sample)
    assert pipe.sample(2, steps=4, sampler="ddim", class_labels=[0, 2], guidance=3.0).shape == (2, 1, 8, 8)


def _break(folder: Path, how: str) -> None:
    if how == "no weights":
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    elif how == "pickled weights":
        st = folder / "unet" / "diffusion_pytorch_model.safetensors"
        st.rename(folder / "unet" / "diffusion_pytorch_model.bin")
    elif how == "no scheduler config":
        (folder / "scheduler" / "scheduler_config.json").unlink()
    elif how == "thresholding":
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "thresholding": True}))
    elif how == "vae":
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "vqvae": ["diffusers", "VQModel"]}))
    elif how == "fourier time":
        path = folder / "unet" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "time_embedding_type": "fourier"}))
    elif how == "text unet":
        path = folder / "unet" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "_class_name": "UNet2DConditionModel"}))


@pytest.mark.parametrize("how, message", [
    ("no weights", "has no weights file diffusion_pytorch_model.safetensors"),
    ("pickled weights", "holds only pickled weights"),
    ("no scheduler config", "has no scheduler/scheduler_config.json"),
    ("thresholding", "thresholding=True"),
    ("vae", "vqvae (VQModel) have no difflab mapping"),
    ("text unet", "UNet2DConditionModel"),
    ("fourier time", "time_embedding_type='fourier'"),
])
def test_a_broken_pipeline_folder_is_a_one_line_error(tmp_path, capsys, how, message):
    folder = foreign_pipeline(tmp_path / "p")
    _break(folder, how)
    code, _, err = cli(capsys, "sample", f"diffusers:{folder}", "--n", "1", "--out", tmp_path / "x.png")
    status = 1 if how in ("no weights", "pickled weights", "no scheduler config") else 2  # files / values
    assert code == status and message in err and err.count("\n") == 1, err


def test_a_folder_that_is_not_a_pipeline_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for source, message in ((f"diffusers:{tmp_path / 'missing'}", "is not a folder"),
                            (f"diffusers:{tmp_path / 'empty'}", "not a diffusers pipeline folder: it has no "
                                                                "model_index.json")):
        code, _, err = cli(capsys, "sample", source, "--n", "1", "--out", tmp_path / "x.png")
        assert code == 1 and message in err and err.count("\n") == 1, err  # the folder is wrong: runtime
    assert not (tmp_path / "x.png").exists()


# ---- latent runs: the autoencoder as diffusers' AutoencoderKL in vae/ ------------------------------
TINY_AE = AutoencoderConfig(in_channels=1, latent_channels=2, channels=(8, 16), groups=4)
LATENT_UNET = TINY_UNET.replace(in_channels=2, image_size=4)

# samples every exported folder named on the command line with diffusers itself, trusting its
# pipeline_difflab.py; one process for all (importing diffusers is the slow part)
SAMPLE_CUSTOM = """
import json, sys, numpy as np, torch
from diffusers import DiffusionPipeline
for job in json.loads(sys.argv[1]):
    try:
        DiffusionPipeline.from_pretrained(job["folder"])
        print("LOADED WITHOUT TRUST")
    except ValueError as err:
        print("refused:", "trust_remote_code" in str(err))
    pipe = DiffusionPipeline.from_pretrained(job["folder"], trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    print(type(pipe).__name__)
    gens = [torch.Generator().manual_seed(i) for i in range(job["n"])]
    kwargs = {k: torch.tensor(v) if k == "image" else v for k, v in job["kwargs"].items()}
    out = pipe(generator=gens, output_type="np", **kwargs)
    np.save(job["out"], out.images)
"""


def sample_custom(tmp_path: Path, jobs: list[dict]) -> list[np.ndarray]:
    """diffusers' images of each job ({"folder", "n", "kwargs"}), loaded with trust_remote_code in a
    fresh process whose module cache lies in tmp_path."""
    for i, job in enumerate(jobs):
        job.update(folder=str(job["folder"]), out=str(tmp_path / f"custom{i}.npy"))
    env = {**ENV, "HF_HOME": str(tmp_path / "hf"), "HF_MODULES_CACHE": str(tmp_path / "hf" / "modules")}
    r = subprocess.run([sys.executable, "-c", SAMPLE_CUSTOM, json.dumps(jobs)], capture_output=True,
                       text=True, env=env, check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("refused: True") == len(jobs) and "LOADED WITHOUT TRUST" not in r.stdout, r.stdout
    return [np.load(job["out"]) for job in jobs]


def make_latent_run(root: Path, name: str, diffusers_ae: bool = False, **fields) -> Path:
    """A latent run on a tiny autoencoder: difflab's (with a shift, as --latent-shift stores) or a
    diffusers AutoencoderKL with its own scaling_factor."""
    from difflab.latent.space import save_autoencoder, weights_digest

    if diffusers_ae:
        torch.manual_seed(0)
        vae = perturbed(diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2,
                                                block_out_channels=(8, 16), norm_num_groups=4,
                                                down_block_types=("DownEncoderBlock2D",) * 2,
                                                up_block_types=("UpDecoderBlock2D",) * 2,
                                                scaling_factor=1.7), seed=4, scale=0.1)
        vae.save_pretrained(root / f"{name}-vae")
        file = root / f"{name}-vae" / "diffusion_pytorch_model.safetensors"
        spec = f"diffusers:{file.parent}"
    else:
        ae = perturbed(AutoencoderKL(TINY_AE), seed=3, scale=0.1)
        file = save_autoencoder(ae, root / f"{name}-ae.safetensors", 0.8, 0.3)
        spec = str(file)
    net = LATENT_UNET.replace(**fields.pop("net", {}))
    return make_run(root / name, net, latent=spec, latent_digest=weights_digest(file), sample_clip=False,
                    **fields)


@pytest.mark.parametrize("cfg", [
    TINY_AE,
    AutoencoderConfig(in_channels=3, latent_channels=4, channels=(8, 8, 16), res_blocks=2, groups=4,
                      mid_attention=False),
])
def test_converted_autoencoder_encodes_and_decodes_alike(cfg):
    from difflab.interop.vae_convert import convert_vae

    ae = perturbed(AutoencoderKL(cfg), seed=2, scale=0.1)
    vae = convert_vae(ae, 16, 0.5, -0.25, check=False)
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (0.5, -0.25)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(3, cfg.in_channels, 16, 16, generator=gen) * 2 - 1
    ours, theirs = ae.encode(x), vae.encode(x).latent_dist
    torch.testing.assert_close(theirs.mean, ours.mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(theirs.logvar, ours.logvar, atol=1e-5, rtol=1e-4)
    z = torch.randn(3, cfg.latent_channels, 16 // cfg.factor, 16 // cfg.factor, generator=gen)
    torch.testing.assert_close(vae.decode(z).sample, ae.decode(z), atol=1e-5, rtol=1e-4)


def test_autoencoder_conversion_check_and_refusal():
    from difflab.interop.vae_convert import check_vae_equal, convert_vae

    ae = perturbed(AutoencoderKL(TINY_AE), seed=2, scale=0.1)
    for part in ("quant_conv", "post_quant_conv"):  # the encoder's and the decoder's side
        vae = convert_vae(ae, 8, 1.0)
        with torch.no_grad():
            getattr(vae, part).bias[0] += 1e-3
        with pytest.raises(ValueError, match="differs from the autoencoder"):
            check_vae_equal(ae, vae, 8)
    with pytest.raises(ValueError, match="groups=4 does not divide the widths \\[6\\]"):
        convert_vae(AutoencoderKL(TINY_AE.replace(channels=(6, 16))), 8, 1.0)


SMALL = (torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5)) * 255).round() / 127.5 - 1
PROMPTS = ["a red circle", "", "a long prompt that the tokenizer truncates to the run's max length"]
CUSTOM = {  # name: (the export's pipeline kwargs in diffusers, the same sampling in difflab)
    "latent": ({"batch_size": 3}, {}),
    "latent-class": ({"class_labels": [0, 2, 1], "guidance_scale": 2.5},
                     {"class_labels": [0, 2, 1], "guidance": 2.5}),
    "text": ({"prompt": PROMPTS, "guidance_scale": 2.5}, {"prompts": PROMPTS, "guidance": 2.5}),
    "latent-text": ({"prompt": PROMPTS, "negative_prompt": ["blue", "", "x"], "guidance_scale": 2.0},
                    {"prompts": PROMPTS, "negative_prompts": ["blue", "", "x"], "guidance": 2.0}),
    "latent-text-unconditional": ({"prompt": ["", "", ""]}, {}),
    "lowres": ({"image": SMALL.tolist(), "guidance_scale": 1.5}, {"lowres": SMALL, "guidance": 1.5}),
}


@pytest.fixture(scope="module")
def custom_exports(tmp_path_factory):
    """Runs exported as custom pipelines, and diffusers' images of each (one process for all):
    name -> (run, export folder, images)."""
    from difflab.conditioning.text import TextConfig
    from difflab.interop.export import export_run

    root = tmp_path_factory.mktemp("custom")
    text = {"context_dim": 384, "num_heads": 2}
    runs = {
        "latent": make_latent_run(root, "latent"),
        "latent-class": make_latent_run(root, "latent-class", diffusers_ae=True, net={"num_classes": 3},
                                        cond="class", class_names=("a", "b", "c"), prediction="eps",
                                        schedule="linear"),
        "text": make_run(root / "text", TINY_UNET.replace(attention_resolutions=(8,), **text), cond="text",
                         text=TextConfig(max_length=8)),
        "latent-text": make_latent_run(root, "latent-text", net=text, cond="text",
                                       text=TextConfig(max_length=16)),
    }
    runs["latent-text-unconditional"] = runs["latent-text"]
    runs["lowres"] = make_run(root / "lowres", TINY_UNET.replace(concat_channels=1), cond="lowres",
                              lowres_factor=2)
    before = {name: digest(run) for name, run in runs.items()}
    reports, jobs = {}, []
    for name, run in runs.items():
        out = root / f"{name}-out"
        if not out.exists():
            reports[name] = export_run(run, out)
        jobs.append({"folder": out, "n": 3, "kwargs": {**CUSTOM[name][0], "num_inference_steps": 4}})
    images = sample_custom(root, jobs)
    assert {name: digest(run) for name, run in runs.items()} == before  # the run folders are only read
    return {name: (run, root / f"{name}-out", images[i], reports.get(name)) for i, (name, run) in
            enumerate(runs.items())}


@pytest.mark.filterwarnings("ignore:prompt of")
@pytest.mark.parametrize("name", list(CUSTOM))
def test_custom_exports_sample_like_difflabs_ddim_in_diffusers(custom_exports, name):
    import difflab

    run, _, theirs, _ = custom_exports[name]
    pipe = difflab.load(run, device="cpu")
    ours = pipe.sample(3, sampler="ddim", steps=4, eta=0.0, seed=0, **CUSTOM[name][1])
    assert theirs.shape == (3, 8, 8, 1) and float(ours.std()) > 0.05
    np.testing.assert_allclose(theirs, as_np(ours), atol=1e-4)


def test_latent_exports_carry_the_runs_scaling_and_import_back(custom_exports):
    import difflab

    for name, scale, shift, exact in (("latent", 0.8, 0.3, "difflab autoencoder converted to AutoencoderKL"),
                                      ("latent-class", 1.7, 0.0, "the run's own diffusers AutoencoderKL")):
        run, out, _, report = custom_exports[name]
        assert report.pipeline_class == "DifflabClassPipeline" and exact in report.exact
        vae_cfg = json.loads((out / "vae" / "config.json").read_text())
        assert (vae_cfg["scaling_factor"], vae_cfg["shift_factor"] or 0.0) == (scale, shift)
        back = difflab.load(f"diffusers:{out}", device="cpu")  # a latent Pipeline on the folder's vae
        assert back.latent is not None and back.config.latent == f"diffusers:{out / 'vae'}"
        kwargs = CUSTOM[name][1]
        torch.testing.assert_close(back.sample(3, sampler="ddim", steps=4, seed=0, **kwargs),
                                   difflab.load(run, device="cpu").sample(3, sampler="ddim", steps=4, seed=0,
                                                                          **kwargs), atol=1e-4, rtol=0)


def test_text_exports_are_difflabs_unet_with_the_minilm_encoder(custom_exports):
    from difflab.conditioning.text import TextEncoder

    _, out, _, report = custom_exports["latent-text"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_difflab", "DifflabTextPipeline"]
    assert index["unet"] == ["difflab_unet", "DifflabUNet"] and (out / "unet" / "difflab_unet.py").is_file()
    assert index["text_encoder"] == ["transformers", "BertModel"] and index["max_length"] == 16
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert "Transformer2DModel has no exact form" in report.exact and report.max_difference < 1e-5
    source = TextEncoder().model_path() / "model.safetensors"  # the frozen encoder, byte for byte
    assert (out / "text_encoder" / "model.safetensors").read_bytes() == source.read_bytes()


def test_super_resolution_exports_are_unet2d_on_the_joined_channels(custom_exports):
    _, out, _, report = custom_exports["lowres"]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_difflab", "DifflabUpscalePipeline"] and index["factor"] == 2
    assert index["unet"] == ["diffusers", "UNet2DModel"] and "outputs equal" in report.exact
    unet_cfg = json.loads((out / "unet" / "config.json").read_text())
    assert (unet_cfg["in_channels"], unet_cfg["out_channels"]) == (2, 1)


# ---- the run's timestep grid: sample_spacing, set from an imported scheduler's timestep_spacing ----
def test_sample_spacing_round_trips_and_old_configs_keep_the_trailing_grid():
    cfg = TrainConfig(sample_spacing="linspace", T=20, sample_steps=4)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    old = json.loads(TrainConfig(T=20, sample_steps=4).to_json())
    del old["sample_spacing"]  # a config.json written before the field existed
    assert TrainConfig.from_dict(old).sample_spacing == "trailing"
    with pytest.raises(ValueError, match="sample_spacing"):
        TrainConfig(sample_spacing="karras")


@pytest.mark.parametrize("scheduler, spacing", [("DDIMScheduler", "leading"), ("DDPMScheduler", "linspace")])
def test_an_imported_pipeline_samples_on_its_own_grid_by_default(tmp_path, scheduler, spacing):
    """DDIMScheduler's linspace grid is refused: it steps by T // steps, not along its grid."""
    import difflab

    folder = foreign_pipeline(tmp_path / "p", scheduler, timestep_spacing=spacing)
    pipe = difflab.load(folder, device="cpu")
    sampler = "ddim" if scheduler == "DDIMScheduler" else "ddpm"
    assert (pipe.config.sample_spacing, pipe.config.sample_sampler) == (spacing, sampler)
    ref = diffusers.DDPMPipeline.from_pretrained(folder)  # the pipeline class does not matter here
    ref = (diffusers.DDIMPipeline if sampler == "ddim" else diffusers.DDPMPipeline)(unet=ref.unet,
                                                                                     scheduler=ref.scheduler)
    ref.set_progress_bar_config(disable=True)
    extra = {"eta": 0.0} if sampler == "ddim" else {}
    theirs = ref(batch_size=3, generator=seeded(3), num_inference_steps=8, output_type="np", **extra).images
    np.testing.assert_allclose(theirs, as_np(pipe.sample(3, steps=8, seed=0)), atol=1e-4)
    trailing = as_np(pipe.sample(3, steps=8, seed=0, spacing="trailing"))
    assert np.abs(theirs - trailing).max() > 1e-2  # the grids differ, so the default is what matched


def test_the_sample_command_takes_the_runs_grid_unless_told(tmp_path, capsys):
    folder = foreign_pipeline(tmp_path / "p", "DDIMScheduler", timestep_spacing="leading")
    grids = {}
    for spacing in (None, "leading", "trailing"):
        out = tmp_path / f"{spacing}.png"
        flags = [] if spacing is None else ["--spacing", spacing]
        code, _, err = cli(capsys, "sample", f"diffusers:{folder}", "--n", "2", "--steps", "5", "--out", out,
                           "--device", "cpu", *flags)
        assert code == 0, err
        grids[spacing] = out.read_bytes()
    assert grids[None] == grids["leading"] != grids["trailing"]


def test_a_runs_grid_is_exported_as_its_timestep_spacing(tmp_path):
    import difflab
    from difflab.interop.export import export_run

    run = make_run(tmp_path / "run", sample_spacing="leading")
    export_run(run, tmp_path / "out")
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.timestep_spacing == "leading"
    theirs = pipe(batch_size=2, generator=seeded(2), num_inference_steps=4, use_clipped_model_output=True,
                  output_type="np").images
    ours = difflab.load(run, device="cpu").sample(2, sampler="ddim", steps=4)
    np.testing.assert_allclose(theirs, as_np(ours), atol=1e-4)
    with pytest.raises(ValueError, match="timestep grid 'seed002'"):
        export_run(make_run(tmp_path / "seed002", sample_spacing="seed002"), tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# ---- import: text pipelines (UNet2DConditionModel with its own text encoder on disk) ----------------
def sd_shaped_pipeline(folder: Path) -> Path:
    """A tiny StableDiffusionPipeline: UNet2DConditionModel, AutoencoderKL and, as the text encoder
    (CLIP's files are not on this machine), the MiniLM BertModel with its tokenizer (12 tokens)."""
    import transformers

    from difflab.conditioning.text import TextEncoder

    source = TextEncoder().model_path()
    encoder = transformers.BertModel.from_pretrained(source, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True,
                                                           model_max_length=12)
    torch.manual_seed(0)
    unet = perturbed(diffusers.UNet2DConditionModel(
        sample_size=4, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4, cross_attention_dim=384,
        attention_head_dim=2), seed=1, scale=0.1)
    vae = perturbed(diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2,
                                            block_out_channels=(8, 16), norm_num_groups=4,
                                            down_block_types=("DownEncoderBlock2D",) * 2,
                                            up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=1.3),
                    seed=2, scale=0.1)
    sched = diffusers.DDIMScheduler(num_train_timesteps=40, beta_schedule="scaled_linear", beta_start=0.001,
                                    beta_end=0.03, clip_sample=False, timestep_spacing="trailing")
    diffusers.StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                      scheduler=sched, safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False).save_pretrained(folder)
    return folder


def test_a_stable_diffusion_shaped_pipeline_samples_like_diffusers_through_difflab(tmp_path, capsys):
    import difflab

    folder = sd_shaped_pipeline(tmp_path / "sd")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    prompts, negatives = ["a red circle", "", "a blue square on a green field"], ["red", "", ""]
    theirs = ref(prompts, negative_prompt=negatives, generator=seeded(3), num_inference_steps=5,
                 guidance_scale=2.5, output_type="np").images
    pipe = difflab.load(f"diffusers:{folder}", device="cpu")
    assert (pipe.config.cond, pipe.config.sample_sampler, pipe.latent.scale_factor) == ("text", "ddim", 1.3)
    ours = pipe.sample(3, sampler="ddim", steps=5, seed=0, prompts=prompts, negative_prompts=negatives,
                       guidance=2.5)
    assert float(ours.std()) > 0.05
    np.testing.assert_allclose(theirs, as_np(ours), atol=1e-4)
    shutil.rmtree(folder / "text_encoder")  # a CLIP encoder that was never saved with the pipeline
    capsys.readouterr()  # diffusers' and transformers' progress so far
    code, _, err = cli(capsys, "sample", f"diffusers:{folder}", "--n", "1", "--out", tmp_path / "x.png")
    assert code == 1 and "the text encoder BertModel is not on disk" in err and err.count("\n") == 1, err


def test_a_text_export_imports_back_as_the_run(custom_exports):
    import difflab

    run, out, _, _ = custom_exports["latent-text"]
    back, original = difflab.load(f"diffusers:{out}", device="cpu"), difflab.load(run, device="cpu")
    assert type(back.net).__name__ == "UNet" and back.config.text == original.config.text
    kwargs = {"prompts": ["a red circle", ""], "guidance": 2.0}
    torch.testing.assert_close(back.sample(2, sampler="ddim", steps=4, seed=0, **kwargs),
                               original.sample(2, sampler="ddim", steps=4, seed=0, **kwargs), atol=1e-5,
                               rtol=0)


def test_the_upscale_pipeline_reads_pil_images_as_difflab_reads_image_files():
    from PIL import Image

    from difflab.interop.pipeline_difflab import DifflabUpscalePipeline

    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4), dtype=np.uint8)
    as_tensor = DifflabUpscalePipeline._as_tensor(None, [Image.fromarray(p) for p in pixels])
    expected = torch.from_numpy(pixels).float()[:, None] / 127.5 - 1
    torch.testing.assert_close(as_tensor, expected)
