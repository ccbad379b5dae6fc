"""LoRA fine-tuning (difflab.nets.lora, difflab.train.finetune): scale 0 is exactly the base model,
merged equals unmerged (peft's layers against the plain-torch merge), adapters refuse other base
weights naming both digests, the base run folder is never written, only the adapter trains, and a
fine-tune resumes bit for bit."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import difflab
from difflab.cli import main as cli_main
from difflab.data import DataConfig
from difflab.io import CheckpointError
from difflab.nets import UNetConfig
from difflab.nets.lora import (
    TARGETS,
    LoRAConfig,
    adapter_state,
    inject,
    load_adapter,
    load_adapter_state,
    merge,
    set_scale,
    sha256_file,
    target_modules,
)
from difflab.train import TrainConfig, train
from difflab.train.checkpoint import list_checkpoints
from difflab.train.finetune import finetune, merge_into
from difflab.train.loop import TrainingError

QUIET = dict(progress=False, log=lambda s: None)
NET = UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(14,),
                 num_heads=2, groups=4, image_size=28, num_classes=10)
BASE = dict(data=DataConfig(source="mnist", limit=64), net=NET, cond="class", T=50, batch_size=8,
            checkpoint_every=100, sample_every=1000, sample_n=4, sample_steps=3, log_every=2)
NEW_DATA = DataConfig(source="digits", limit=64)  # scikit-learn's 8x8 digits, resized to the base's 28x28
LORA = LoRAConfig(rank=2, targets=TARGETS)  # every group: attention, convolutions, embeddings


def tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its sha256 and modification time (ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class-conditional base run and a LoRA fine-tune of it on other digits."""
    root = tmp_path_factory.mktemp("lora")
    train(TrainConfig(**BASE, steps=6, seed=1), root / "base", **QUIET)
    before = tree_digest(root / "base")
    finetune(root / "base", root / "style", data=NEW_DATA, lora=LORA, steps=6, lr=5e-2, seed=0,
             checkpoint_every=3, **QUIET)
    return root, before


def test_only_the_adapter_trains_and_checkpoints_hold_only_it(runs):
    root, _ = runs
    adapter = load_adapter(root / "style")
    assert adapter.base_sha256 == sha256_file(root / "base" / "model.safetensors")
    assert set(adapter.state) == {f"{m}.{ab}.weight" for m in adapter.modules for ab in ("lora_A", "lora_B")}
    assert any(v.abs().max() > 0 for k, v in adapter.state.items() if "lora_B" in k)  # it learned
    assert adapter.info["parameters"] == sum(v.numel() for v in adapter.state.values())
    kinds = set(adapter.info["modules"].values())
    assert kinds == {"conv", "linear", "embedding"}
    ckpt = torch.load(list_checkpoints(root / "style" / "checkpoints")[-1][1], weights_only=True)
    assert set(ckpt["model"]) == set(adapter.state) == set(ckpt["ema"]["model"])
    n_opt = sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    assert n_opt == len(adapter.state)
    assert not (root / "style" / "model.safetensors").exists()


def test_training_leaves_every_base_weight_as_it_was(runs, tmp_path):
    root, _ = runs
    base = load_file(root / "base" / "model.safetensors")
    seen = {}

    def grab(step, seconds, ema_model):
        seen.update({k: v.clone() for k, v in ema_model.state_dict().items()})

    finetune(root / "base", tmp_path / "ft", data=NEW_DATA, lora=LORA, steps=3, lr=5e-2, on_step=grab,
             **QUIET)
    frozen = {k.replace(".base_layer", ""): v for k, v in seen.items() if ".lora_" not in k}
    assert frozen.keys() == base.keys()
    for k in base:
        assert torch.equal(frozen[k], base[k]), k
    assert any(v.abs().max() > 0 for k, v in seen.items() if "lora_B" in k)


def test_base_run_folder_is_byte_for_byte_unchanged(runs, tmp_path):
    root, before = runs
    merge_into(root / "base", root / "style", tmp_path / "merged", 0.5)
    difflab.load(root / "base", "cpu", lora=root / "style").sample(2, steps=2)
    assert tree_digest(root / "base") == before


def test_scale_zero_is_exactly_the_base_model(runs):
    root, _ = runs
    base = difflab.load(root / "base", "cpu")
    labels = [3, 7, 0]
    ref = base.sample(3, steps=4, seed=5, class_labels=labels)
    zero = difflab.load(root / "base", "cpu", lora=root / "style", lora_scale=0.0)
    assert torch.equal(zero.sample(3, steps=4, seed=5, class_labels=labels), ref)
    one = base.with_lora(root / "style", 1.0)
    assert not torch.equal(one.sample(3, steps=4, seed=5, class_labels=labels), ref)
    # peft's unmerged layers at scale 0 too
    wrapped = inject(difflab.load(root / "base", "cpu").net, LORA, load_adapter(root / "style").modules)
    load_adapter_state(wrapped, load_adapter(root / "style").state)
    set_scale(wrapped, 0.0)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([1, 20, 49])
    with torch.no_grad():
        assert torch.equal(wrapped(x, t, class_labels=torch.tensor(labels)),
                           base.net(x, t, class_labels=torch.tensor(labels)))


@pytest.mark.parametrize("scale", [0.7, 1.0, 2.0])
def test_merged_adapter_equals_unmerged(runs, scale):
    root, _ = runs
    adapter = load_adapter(root / "style")
    base = difflab.load(root / "base", "cpu")
    wrapped = inject(difflab.load(root / "base", "cpu").net, LORA, adapter.modules)
    load_adapter_state(wrapped, adapter.state)
    set_scale(wrapped, scale)
    merged = merge(base.net, [(adapter, scale)])
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 10, 30, 49]), torch.tensor([1, 2, 10, 9])
    with torch.no_grad():
        a, b = wrapped(x, t, class_labels=y), merged(x, t, class_labels=y)
        assert not torch.allclose(a, base.net(x, t, class_labels=y), atol=1e-4)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_several_adapters_add_and_merge_into_a_run(runs, tmp_path):
    root, _ = runs
    base = difflab.load(root / "base", "cpu")
    two = base.with_lora([root / "style", root / "style"], [0.3, 0.4])
    one = base.with_lora(root / "style", 0.7)
    for (k, a), b in zip(two.net.state_dict().items(), one.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)
    out = merge_into(root / "base", [root / "style", root / "style"], tmp_path / "merged", [0.3, 0.4])
    folder = difflab.load(out, "cpu")
    for (k, a), b in zip(folder.net.state_dict().items(), two.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    record = json.loads((out / "merged.json").read_text())
    assert [a["scale"] for a in record["adapters"]] == [0.3, 0.4]
    assert record["base"]["sha256"] == sha256_file(root / "base" / "model.safetensors")


def test_adapter_refuses_other_base_weights_naming_both_hashes(runs, tmp_path, capsys):
    root, _ = runs
    other = tmp_path / "other"
    shutil.copytree(root / "base", other)
    state = load_file(other / "model.safetensors")
    state["conv_in.bias"] = state["conv_in.bias"] + 1e-3
    save_file(state, other / "model.safetensors")
    ours, theirs = sha256_file(root / "base" / "model.safetensors"), sha256_file(other / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        difflab.load(other, "cpu", lora=root / "style")
    msg = str(err.value)
    assert ours[:16] in msg and theirs[:16] in msg and "\n" not in msg
    assert cli_main(["sample", str(other), "--lora", str(root / "style"), "--n", "1"]) == 1
    line = capsys.readouterr().err.strip()
    assert ours[:16] in line and theirs[:16] in line and len(line.splitlines()) == 1
    with pytest.raises(CheckpointError, match="LoRA adapter, not a run"):
        difflab.load(root / "style", "cpu")


class Crash(RuntimeError):
    pass


def test_finetune_resumes_bit_for_bit(runs, tmp_path):
    root, _ = runs
    kw = dict(data=NEW_DATA, lora=LoRAConfig(rank=3, targets=("attention", "conv"), dropout=0.1), steps=7,
              lr=1e-2, checkpoint_every=3, **QUIET)
    finetune(root / "base", tmp_path / "ref", **kw)

    def crash(step, seconds, ema):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        finetune(root / "base", tmp_path / "run", on_step=crash, **kw)
    said: list[str] = []
    finetune(root / "base", tmp_path / "run", resume=True, **{**kw, "log": said.append})
    assert any("resuming" in s and "step 3" in s for s in said)
    a = load_file(tmp_path / "ref" / "adapter.safetensors")
    b = load_file(tmp_path / "run" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = torch.load(tmp_path / "ref" / "checkpoints" / "step_0000007.pt", weights_only=True)
    cb = torch.load(tmp_path / "run" / "checkpoints" / "step_0000007.pt", weights_only=True)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    with pytest.raises(TrainingError, match="different LoRA"):
        finetune(root / "base", tmp_path / "run", resume=True, **{**kw, "lora": LoRAConfig(rank=2)})


def test_cli_finetune_sample_and_merge(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "cli-style"
    assert cli_main(["finetune", str(root / "base"), "--method", "lora", "--rank", "2", "--data", "digits",
                     "--targets", "attention", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "adapter.json").read_text())["lora"]["targets"] == ["attention"]
    assert cli_main(["sample", str(root / "base"), "--lora", str(out), "--lora", str(root / "style"),
                     "--lora-scale", "0.5", "--lora-scale", "0.7", "--n", "2", "--steps", "2",
                     "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()
    assert cli_main(["sample", str(root / "base"), "--lora", str(out), "--lora-scale", "1",
                     "--lora-scale", "2", "--lora-scale", "3", "--n", "1"]) == 2
    assert "once per --lora" in capsys.readouterr().err
    assert cli_main(["merge-lora", str(root / "base"), "--lora", str(out), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_sampling_with_an_adapter_imports_neither_peft_nor_training(runs):
    root, _ = runs
    code = (f"import sys, difflab; p = difflab.load({str(root / 'base')!r}, 'cpu', "
            f"lora={str(root / 'style')!r}); "
            "p.sample(1, steps=1, class_labels=[1]); "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'peft' or m.startswith('difflab.train')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_lora_refuses_networks_it_cannot_adapt():
    from difflab.nets import build_net, default_net_config

    net = build_net(default_net_config("myunet", in_channels=1, image_size=28, n_steps=50))
    with pytest.raises(ValueError, match="difflab's UNet"):
        target_modules(net, ("attention",))
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    plain = build_net(NET.replace(attention_resolutions=(), mid_attention=False))
    with pytest.raises(ValueError, match="no layer"):
        target_modules(plain, ("attention",))
    assert adapter_state(plain) == {}


def test_cross_attention_layers_merge_like_peft():
    """A text-conditional UNet's cross-attention projections (to_q, to_kv, cross_proj) and the time
    MLP: peft's unmerged layers at scale 0.6 against the plain-torch merge, on random weights."""
    import copy
    from pathlib import Path as P

    from difflab.nets import build_net
    from difflab.nets.lora import Adapter, adapter_info

    torch.manual_seed(0)
    net = build_net(NET.replace(num_classes=0, context_dim=6)).eval()
    for p in net.parameters():  # random everywhere (a fresh UNet's zero-initialised outputs hide everything)
        torch.nn.init.normal_(p, std=0.1)
    lora = LoRAConfig(rank=3, alpha=1.5, targets=("attention", "embed"))
    modules = target_modules(net, lora.targets)
    assert {m.rsplit(".", 1)[1] for m in modules} >= {"to_q", "to_kv", "cross_proj", "qkv", "proj"}
    info = adapter_info(lora, net, modules, "base", "model.safetensors", "0" * 64, {})
    wrapped = inject(copy.deepcopy(net), lora, modules)
    for name, p in wrapped.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    set_scale(wrapped, 0.6)
    adapter = Adapter(P("mem"), info, adapter_state(wrapped))
    merged = merge(net, [(adapter, 0.6)])
    x, t, ctx = torch.randn(2, 1, 28, 28), torch.tensor([3, 40]), torch.randn(2, 5, 6)
    with torch.no_grad():
        a, b = wrapped(x, t, context=ctx), merged(x, t, context=ctx)
        assert (a - net(x, t, context=ctx)).abs().max() > 1e-3  # the adapter matters
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_unlabelled_folder_teaches_a_class_conditional_run_its_null_class(runs, tmp_path):
    from difflab.data import save_images

    root, _ = runs
    save_images(torch.rand(12, 1, 28, 28) * 2 - 1, tmp_path / "style")  # no subfolders: no labels
    said: list[str] = []
    finetune(root / "base", tmp_path / "ft", data=f"folder:{tmp_path / 'style'}", lora=LORA, steps=3,
             lr=5e-2, progress=False, log=said.append)
    assert any("null-class" in s for s in said)
    base = difflab.load(root / "base", "cpu")
    tuned = base.with_lora(tmp_path / "ft")
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 30])
    with torch.no_grad():
        assert not torch.equal(tuned.net(x, t), base.net(x, t))
