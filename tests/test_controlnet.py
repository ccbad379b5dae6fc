"""ControlNet (difflab.nets.controlnet, difflab.train.controlnet, difflab.conditioning.control): a
fresh ControlNet is exactly the base model for every conditioning, scale 0 is exactly the base,
every zero convolution is wired to the base, the control maps match closed cases, the base run is
never written, a ControlNet refuses other base weights naming both digests, training resumes bit
for bit, and the command line trains and samples."""

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
from PIL import Image
from safetensors.torch import load_file, save_file

import difflab
from difflab.cli import build_parser
from difflab.cli import main as cli_main
from difflab.cli.controlnet import control_kwargs
from difflab.conditioning.control import ControlConfig, compute_control, control_maps
from difflab.data import DataConfig, load_dataset
from difflab.guidance import CFGModel, Guidance
from difflab.io import CheckpointError
from difflab.nets import UNetConfig, build_net
from difflab.nets.controlnet import ControlledUNet, ControlNet, load_controlnet
from difflab.nets.lora import sha256_file
from difflab.train import TrainConfig, train
from difflab.train.checkpoint import list_checkpoints
from difflab.train.controlnet import ControlledImages, train_controlnet
from difflab.train.loop import TrainingError

QUIET = dict(progress=False, log=lambda s: None)
NET = UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(14,),
                 num_heads=2, groups=4, image_size=28, num_classes=10)
BASE = dict(data=DataConfig(source="mnist", limit=64), net=NET, cond="class", T=50, batch_size=8,
            checkpoint_every=100, sample_every=1000, sample_n=4, sample_steps=3, log_every=2)


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its sha256 and modification time (ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional base run and an edges ControlNet trained on it."""
    root = tmp_path_factory.mktemp("controlnet")
    train(TrainConfig(**BASE, steps=6, seed=1), root / "base", **QUIET)
    before = tree_digest(root / "base")
    train_controlnet(root / "base", root / "cn", control="edges", steps=6, lr=5e-2, checkpoint_every=3,
                     sample_every=6, **QUIET)
    return root, before


def randomised(cfg: UNetConfig) -> torch.nn.Module:
    """A UNet with random weights everywhere (a fresh one's zero-initialised output hides everything)."""
    torch.manual_seed(0)
    net = build_net(cfg).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net


KINDS = {
    "none": (NET.replace(num_classes=0), lambda b: {}),
    "class": (NET, lambda b: {"class_labels": torch.tensor([3, 7, 10])[:b]}),
    "text": (NET.replace(num_classes=0, context_dim=6), lambda b: {"context": torch.randn(b, 5, 6)}),
    "lowres": (NET.replace(num_classes=0, concat_channels=1),
               lambda b: {"concat": torch.randn(b, 1, 28, 28)}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_fresh_controlnet_is_exactly_the_base_model(kind):
    cfg, cond_of = KINDS[kind]
    base = randomised(cfg)
    net = ControlledUNet(base, ControlNet.from_unet(base), (torch.rand(3, 1, 28, 28) > 0.5).float())
    x, t, cond = torch.randn(3, 1, 28, 28), torch.tensor([0, 25, 49]), cond_of(3)
    with torch.no_grad():
        ref = base(x, t, **cond)
        assert torch.equal(net(x, t, **cond), ref)
        # under classifier-free guidance (both branches in one batch: the control is repeated)
        if cond:
            null = {k: torch.zeros_like(v) if k != "class_labels" else torch.full_like(v, 10)
                    for k, v in cond.items()}
            guided = CFGModel(net, Guidance(3.0), null)(x, t, **cond)
            assert torch.equal(guided, CFGModel(base, Guidance(3.0), null)(x, t, **cond))


def test_every_zero_convolution_reaches_the_base():
    """Each zero convolution alone, made non-zero, changes the output; so does the hint encoder's
    last one together with the control image."""
    base = randomised(NET)
    cn = ControlNet.from_unet(base)
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 40]), torch.tensor([1, 2])
    control = (torch.rand(2, 1, 28, 28) > 0.5).float()
    with torch.no_grad():
        ref = base(x, t, class_labels=y)
        convs = [*cn.zero_convs, cn.mid_zero_conv]
        assert len(cn.zero_convs) == 1 + len(base.down)  # conv_in and every module of the down path
        for conv in convs:
            torch.nn.init.normal_(conv.weight, std=0.1)
            out = ControlledUNet(base, cn, control)(x, t, class_labels=y)
            assert (out - ref).abs().max() > 1e-4
            conv.weight.zero_()
            assert torch.equal(ControlledUNet(base, cn, control)(x, t, class_labels=y), ref)
        torch.nn.init.normal_(cn.zero_convs[0].weight, std=0.1)
        same_hint = ControlledUNet(base, cn, control)(x, t, class_labels=y)
        flipped = ControlledUNet(base, cn, 1 - control)(x, t, class_labels=y)
        assert torch.equal(flipped, same_hint)  # the hint encoder's output is still zero
        torch.nn.init.normal_(cn.hint.out.weight, std=0.1)
        a = ControlledUNet(base, cn, control)(x, t, class_labels=y)
        b = ControlledUNet(base, cn, 1 - control)(x, t, class_labels=y)
        assert (a - b).abs().max() > 1e-4
        half = ControlledUNet(base, cn, control, 0.5)(x, t, class_labels=y)
        assert not torch.equal(half, a) and not torch.equal(half, ref)


def test_controlnet_refuses_networks_without_skip_residuals():
    from difflab.nets import default_net_config

    net = build_net(default_net_config("myunet", in_channels=1, image_size=28, n_steps=50))
    with pytest.raises(ValueError, match="difflab's UNet"):
        ControlNet.from_unet(net)


def test_edges_of_a_square_are_its_border():
    """A square with a half-grey one-pixel rim: the rim is where the gradient peaks, exactly."""
    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    x[..., 6:22, 6:22] = 128
    x[..., 7:21, 7:21] = 255
    rim = (x[0, 0] == 128).numpy()
    sharp = compute_control(x, ControlConfig("edges", sigma=0.5))
    assert sharp.dtype == torch.uint8 and sharp.shape == (1, 1, 28, 28)
    assert np.array_equal(sharp[0, 0].numpy().astype(bool), rim)
    # sigma 1 rounds the corners: the same edges away from the four 2x2 corner blocks
    smooth = compute_control(x, ControlConfig("edges"))[0, 0].numpy().astype(bool)
    away = np.ones((28, 28), bool)
    for r in (6, 20):
        for c in (6, 20):
            away[r : r + 2, c : c + 2] = False
    assert np.array_equal(smooth[away], rim[away]) and smooth.sum() == rim.sum()


def test_skeleton_of_a_bar_is_its_centre_line():
    x = torch.zeros(1, 1, 24, 30, dtype=torch.uint8)
    x[..., 10:15, 3:27] = 255  # rows 10..14: the centre line is row 12
    s = compute_control(x, ControlConfig("skeleton"))[0, 0].numpy().astype(bool)
    rows = np.nonzero(s)[0]
    assert np.all(np.abs(rows - 12) <= 1)  # on the centre line (the ends may bend by a pixel)
    assert np.all(s.sum(0) <= 1)  # one pixel wide
    assert np.all(s[12, 6:24]) and not s[:, :5].any()  # the whole inner line, nothing beyond the ends
    mask = compute_control(x, ControlConfig("mask"))[0, 0].numpy().astype(bool)
    assert np.array_equal(mask, x[0, 0].numpy() > 127)


def test_control_cache_is_keyed_by_the_data_and_settings(tmp_path):
    data = load_dataset(DataConfig(source="mnist", limit=16))
    said: list[str] = []
    maps = control_maps(data, ControlConfig("mask"), tmp_path, said.append)
    assert torch.equal(maps[0], compute_control(data.images, ControlConfig("mask")))
    assert torch.equal(control_maps(data, ControlConfig("mask"), tmp_path, said.append), maps)
    assert "reusing" in said[-1]
    other = control_maps(data, ControlConfig("mask", threshold=0.2), tmp_path, said.append)
    assert "other images or settings" in said[-2] and not torch.equal(other, maps)
    (tmp_path / "controls.safetensors").write_bytes(b"not a safetensors file")
    again = control_maps(data, ControlConfig("mask"), tmp_path, said.append)
    assert "unreadable" in said[-2] and torch.equal(again, maps)


def test_flipped_batches_carry_their_own_control_maps(tmp_path):
    data = load_dataset(DataConfig(source="mnist", limit=24, flip=True))
    cfg = ControlConfig("edges")
    maps = control_maps(data, cfg, tmp_path, lambda s: None)
    both = ControlledImages.of(data, maps)
    idx = torch.arange(24)
    x, _ = both.batch(idx, generator=torch.Generator().manual_seed(3))
    plain, _ = data.batch(idx, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, plain)  # the same flips as the plain data set draws
    assert not torch.equal(x, data.batch(idx, flip=False)[0])  # some were flipped
    as_uint8 = ((x + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(both.last_control, compute_control(as_uint8, cfg).float())


def test_only_the_controlnet_trains_and_the_base_folder_is_untouched(runs):
    root, before = runs
    files = load_controlnet(root / "cn")
    base = load_file(root / "base" / "model.safetensors")
    assert files.base_sha256 == sha256_file(root / "base" / "model.safetensors")
    assert set(files.state) == set(ControlNet(NET).state_dict())
    ckpt = torch.load(list_checkpoints(root / "cn" / "checkpoints")[-1][1], weights_only=True)
    assert set(ckpt["model"]) == set(files.state)
    assert not (root / "cn" / "model.safetensors").exists()
    # the encoder's copy trained too (not just the zero convolutions), away from the base's weights
    assert not torch.equal(files.state["down.0.0.conv1.weight"], base["down.0.0.conv1.weight"])
    assert files.state["zero_convs.0.weight"].abs().max() > 0
    # the base run's conditioning was applied: the copy's class embedding learned the digits' rows
    moved = (files.state["class_embed.weight"] - base["class_embed.weight"]).abs().amax(1) > 0
    assert int(moved[:10].sum()) >= 5
    assert (root / "cn" / "samples" / "step_0000006.png").is_file()
    difflab.load(root / "base", "cpu", controlnet=root / "cn").sample(
        2, steps=2, class_labels=[1, 2], control=torch.zeros(1, 28, 28))
    assert tree_digest(root / "base") == before


def test_scale_zero_is_exactly_the_base_and_fresh_is_too(runs):
    root, _ = runs
    base = difflab.load(root / "base", "cpu")
    kw = dict(steps=4, seed=5, class_labels=[3, 7, 0], guidance=3.0)
    digits = load_dataset(DataConfig(source="mnist", limit=3)).images
    control = compute_control(digits, ControlConfig()).float()
    ref = base.sample(3, **kw)
    pipe = base.with_controlnet(root / "cn")
    assert torch.equal(pipe.sample(3, control=control, control_scale=0.0, **kw), ref)
    assert not torch.equal(pipe.sample(3, control=control, **kw), ref)
    fresh = base.attach_controlnet(ControlNet.from_unet(base.net))
    assert torch.equal(fresh.sample(3, control=control, sampler="dpmpp-2m", **{**kw, "steps": 3}),
                       base.sample(3, sampler="dpmpp-2m", **{**kw, "steps": 3}))
    with pytest.raises(ValueError, match="ControlNet needs"):
        pipe.sample(3, control=torch.zeros(3, 1, 14, 14), **kw)
    with pytest.raises(ValueError, match="give control images"):
        pipe.sample(3, **kw)
    with pytest.raises(ValueError, match="need a ControlNet"):
        base.sample(3, control=control, **kw)


def test_controlnet_refuses_other_base_weights_naming_both_hashes(runs, tmp_path, capsys):
    root, _ = runs
    other = tmp_path / "other"
    shutil.copytree(root / "base", other)
    state = load_file(other / "model.safetensors")
    state["conv_in.bias"] = state["conv_in.bias"] + 1e-3
    save_file(state, other / "model.safetensors")
    ours, theirs = sha256_file(root / "base" / "model.safetensors"), sha256_file(other / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        difflab.load(other, "cpu", controlnet=root / "cn")
    msg = str(err.value)
    assert ours[:16] in msg and theirs[:16] in msg and "\n" not in msg
    png = tmp_path / "c.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    assert cli_main(["sample", str(other), "--controlnet", str(root / "cn"), "--control-image", str(png),
                     "--n", "1"]) == 1
    line = capsys.readouterr().err.strip()
    assert ours[:16] in line and theirs[:16] in line and len(line.splitlines()) == 1
    with pytest.raises(CheckpointError, match="ControlNet, not a run"):
        difflab.load(root / "cn", "cpu")


def test_broken_folders_and_flags_get_one_line_errors(runs, tmp_path, capsys):
    root, _ = runs
    broken = tmp_path / "broken"
    shutil.copytree(root / "cn", broken)
    (broken / "controlnet.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        difflab.load(root / "base", "cpu", controlnet=broken)
    with pytest.raises(CheckpointError, match="has no controlnet.json"):
        difflab.load(root / "base", "cpu", controlnet=tmp_path)
    assert cli_main(["train-controlnet", str(root / "base"), "--control", "edges", "--out", str(root / "cn"),
                     "--quiet"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert cli_main(["sample", str(root / "base"), "--control-scale", "0.5"]) == 2
    assert "--control-scale needs --controlnet" in capsys.readouterr().err


def test_sampling_with_a_controlnet_imports_neither_training_nor_scikit_image(runs):
    root, _ = runs
    code = (f"import sys, torch, difflab; p = difflab.load({str(root / 'base')!r}, 'cpu', "
            f"controlnet={str(root / 'cn')!r}); "
            "p.sample(1, steps=1, class_labels=[1], control=torch.zeros(1, 28, 28)); "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'skimage' "
            "or m.startswith('difflab.train')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


class Crash(RuntimeError):
    pass


def test_training_resumes_bit_for_bit(runs, tmp_path):
    root, _ = runs
    kw = dict(control="skeleton", data=DataConfig(source="mnist", limit=40, flip=True), control_drop=0.3,
              steps=7, lr=1e-2, checkpoint_every=3, sample_every=1000, **QUIET)
    train_controlnet(root / "base", tmp_path / "ref", **kw)

    def crash(step, seconds, ema):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train_controlnet(root / "base", tmp_path / "run", on_step=crash, **kw)
    said: list[str] = []
    train_controlnet(root / "base", tmp_path / "run", resume=True, **{**kw, "log": said.append})
    assert any("resuming" in s and "step 3" in s for s in said)
    assert any("reusing" in s for s in said)  # the control cache
    a = load_file(tmp_path / "ref" / "controlnet.safetensors")
    b = load_file(tmp_path / "run" / "controlnet.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(TrainingError, match="different control"):
        train_controlnet(root / "base", tmp_path / "run", resume=True, **{**kw, "control": "mask"})
    with pytest.raises(TrainingError, match="read-only"):
        train_controlnet(root / "base", root / "base", **kw)


def test_cli_trains_and_samples_with_a_control_image(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "mask"
    assert cli_main(["train-controlnet", str(root / "base"), "--control", "mask", "--steps", "2",
                     "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "controlnet.json").read_text())["control"]["kind"] == "mask"
    images = load_dataset(DataConfig(source="mnist", limit=1)).images
    digit = images[0, 0].numpy()
    Image.fromarray(digit).save(tmp_path / "digit.png")
    edges = compute_control(images, ControlConfig("edges"))[0, 0].numpy()
    Image.fromarray(edges * 255).save(tmp_path / "edges.png")
    Image.fromarray((digit > 127).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    args = ["sample", str(root / "base"), "--controlnet", str(root / "cn"), "--n", "2", "--steps", "3",
            "--class", "3"]
    a, b, c = (str(tmp_path / f"{name}.png") for name in "abc")
    assert cli_main([*args, "--control-image", str(tmp_path / "edges.png"), "--out", a]) == 0
    assert cli_main([*args, "--control-from", str(tmp_path / "digit.png"), "--out", b]) == 0  # its edges
    assert cli_main([*args, "--control-image", str(tmp_path / "mask.png"), "--out", c]) == 0
    assert Image.open(a).tobytes() == Image.open(b).tobytes()
    # --control-from computes the control kind of the ControlNet it is given (here: mask)
    flags = build_parser().parse_args(["sample", str(root / "base"), "--controlnet", str(out),
                                       "--control-from", str(tmp_path / "digit.png")])
    got = control_kwargs(difflab.load(root / "base", "cpu", controlnet=out), flags)["control"]
    assert torch.equal(got, compute_control(images, ControlConfig("mask")).float())
    assert cli_main([*args, "--out", str(tmp_path / "c.png")]) == 2
    assert "--control-image" in capsys.readouterr().err
    Image.fromarray(np.zeros((14, 14), np.uint8)).save(tmp_path / "small.png")
    assert cli_main([*args, "--control-image", str(tmp_path / "small.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "14x14" in err and "28x28" in err and len(err.splitlines()) == 1
    assert cli_main(["sample", str(root / "base"), "--control-image", str(tmp_path / "mask.png")]) == 2
