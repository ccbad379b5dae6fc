"""DreamBooth as a LoRA on a text-conditional run (difflab.train.dreambooth): prior weight 0 is
exactly a LoRA fine-tune on the instance images captioned with the instance prompt; with a prior the
base model's images are drawn once, cached and reused, and change what is learned; the base run is
never written; non-text runs are refused."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflab.data import DataConfig, save_images
from difflab.nets import UNetConfig
from difflab.nets.lora import LoRAConfig
from difflab.train import TrainConfig, train
from difflab.train.dreambooth import dreambooth
from difflab.train.finetune import finetune
from difflab.train.loop import TrainingError

pytest.importorskip("peft")
QUIET = dict(progress=False, log=lambda s: None)
NET = UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(14,),
                 num_heads=2, groups=4, image_size=28, context_dim=384)
LORA = LoRAConfig(rank=2, targets=("attention", "conv"))
INSTANCE, CLASS = "a sks digit", "a handwritten digit"


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("dreambooth")
    cfg = TrainConfig(data=DataConfig(source="mnist", limit=64), net=NET, cond="text", T=50, batch_size=8,
                      checkpoint_every=100, sample_every=1000, sample_n=2, sample_steps=2, log_every=2,
                      steps=3)
    train(cfg, root / "base", **QUIET)
    gen = torch.Generator().manual_seed(0)
    save_images(torch.rand(5, 1, 28, 28, generator=gen) * 2 - 1, root / "subject")
    return root


def test_prior_weight_zero_is_plain_lora_finetuning_on_the_instance_images(base, tmp_path):
    kw = dict(lora=LORA, steps=4, lr=2e-2, batch_size=4, **QUIET)
    dreambooth(base / "base", tmp_path / "db", instance_images=base / "subject", instance_prompt=INSTANCE,
               class_prompt=CLASS, prior_weight=0.0, **kw)
    plain = tmp_path / "plain-data"
    shutil.copytree(base / "subject", plain)
    (plain / "metadata.jsonl").write_text("".join(json.dumps({"file_name": p.name, "text": INSTANCE}) + "\n"
                                                  for p in sorted(plain.glob("*.png"))))
    finetune(base / "base", tmp_path / "plain", data=f"folder:{plain}", **kw)
    a = load_file(tmp_path / "db" / "adapter.safetensors")
    b = load_file(tmp_path / "plain" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
    assert not (tmp_path / "db" / "prior").exists()


def test_prior_images_are_drawn_once_cached_and_change_the_adapter(base, tmp_path):
    before = tree_digest(base / "base")
    kw = dict(instance_images=base / "subject", instance_prompt=INSTANCE, class_prompt=CLASS, lora=LORA,
              steps=4, lr=2e-2, batch_size=4, num_class_images=6, prior_steps=2)
    said: list[str] = []
    dreambooth(base / "base", tmp_path / "db", prior_weight=1.0, progress=False, log=said.append, **kw)
    assert any("drawing 6 images" in s for s in said)
    assert len(list((tmp_path / "db" / "prior").glob("*.png"))) == 6
    info = json.loads((tmp_path / "db" / "adapter.json").read_text())
    assert info["dreambooth"]["class_prompt"] == CLASS and info["dreambooth"]["prior_weight"] == 1.0
    # the same prior in another folder's cache is reused: copy it and run again
    shutil.copytree(tmp_path / "db" / "prior", tmp_path / "again" / "prior")
    said.clear()
    dreambooth(base / "base", tmp_path / "again", prior_weight=1.0, progress=False, log=said.append, **kw)
    assert any("reusing the 6 images" in s for s in said)
    a = load_file(tmp_path / "db" / "adapter.safetensors")
    b = load_file(tmp_path / "again" / "adapter.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the prior term itself matters: a vanishing weight draws the same batches, timesteps and noise
    shutil.copytree(tmp_path / "db" / "prior", tmp_path / "tiny" / "prior")
    dreambooth(base / "base", tmp_path / "tiny", prior_weight=1e-12, **QUIET, **kw)
    c = load_file(tmp_path / "tiny" / "adapter.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert tree_digest(base / "base") == before


def test_dreambooth_resumes_bit_for_bit(base, tmp_path):
    kw = dict(instance_images=base / "subject", instance_prompt=INSTANCE, class_prompt=CLASS, lora=LORA,
              steps=5, lr=2e-2, batch_size=4, num_class_images=6, prior_steps=2, checkpoint_every=2, **QUIET)
    dreambooth(base / "base", tmp_path / "ref", **kw)

    class Crash(RuntimeError):
        pass

    def crash(step, seconds, ema):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        dreambooth(base / "base", tmp_path / "run", on_step=crash, **kw)
    dreambooth(base / "base", tmp_path / "run", resume=True, **kw)
    a = load_file(tmp_path / "ref" / "adapter.safetensors")
    b = load_file(tmp_path / "run" / "adapter.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dreambooth_refuses_runs_without_text(tmp_path):
    cfg = TrainConfig(data=DataConfig(source="mnist", limit=16), net=NET.replace(context_dim=0), T=50,
                      batch_size=8, sample_every=1000, sample_n=2, sample_steps=2, steps=1)
    train(cfg, tmp_path / "base", **QUIET)
    save_images(torch.zeros(2, 1, 28, 28), tmp_path / "subject")
    with pytest.raises(TrainingError, match="text-conditional"):
        dreambooth(tmp_path / "base", tmp_path / "db", instance_images=tmp_path / "subject",
                   instance_prompt=INSTANCE, class_prompt=CLASS, **QUIET)


def test_cli_dreambooth_then_sample_with_the_identifier(base, tmp_path, capsys):
    from difflab.cli import main

    out = tmp_path / "db"
    assert main(["finetune", str(base / "base"), "--method", "dreambooth", "--instance-images",
                 str(base / "subject"), "--instance-prompt", INSTANCE, "--class-prompt", CLASS,
                 "--num-class-images", "4", "--prior-steps", "2", "--rank", "2", "--steps", "2",
                 "--batch-size", "4", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "adapter.json").read_text())["dreambooth"]["instance_prompt"] == INSTANCE
    assert main(["sample", str(base / "base"), "--lora", str(out), "--prompt", INSTANCE, "--n", "2",
                 "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    assert main(["finetune", str(base / "base"), "--method", "dreambooth", "--instance-images",
                 str(base / "subject"), "--out", str(tmp_path / "x")]) == 2
    assert "--instance-prompt, --class-prompt" in capsys.readouterr().err
    assert main(["finetune", str(base / "base"), "--out", str(tmp_path / "y")]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_several_class_prompts_caption_the_prior_images_in_turn(base, tmp_path):
    from difflab.train.dreambooth import prior_prompts

    assert prior_prompts(["a 1", "a 7"], 5) == ["a 1", "a 7", "a 1", "a 7", "a 1"]
    assert prior_prompts("a digit", 2) == ["a digit", "a digit"]
    classes = ["a handwritten one", "a handwritten seven"]
    said: list[str] = []
    dreambooth(base / "base", tmp_path / "db", instance_images=base / "subject", instance_prompt=INSTANCE,
               class_prompt=classes, lora=LORA, steps=2, batch_size=4, num_class_images=4, prior_steps=2,
               progress=False, log=said.append)
    assert json.loads((tmp_path / "db" / "prior" / "prior.json").read_text())["class_prompt"] == classes
    assert json.loads((tmp_path / "db" / "adapter.json").read_text())["dreambooth"]["class_prompt"] == classes
    assert any("2 distinct captions" in s for s in said)  # the prior stream's table: both prompts
