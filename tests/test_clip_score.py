"""CLIP-score (Hessel et al. 2021): no CLIP weights exist offline, so a tiny CLIPModel built from a
CLIPConfig, with a character-level CLIP tokenizer, is saved to a temporary folder (as the Inception
path is tested with a stand-in). The score must equal an independent computation through
transformers' own pieces: CLIPImageProcessorPil, the tokenizer and CLIPModel.forward's
normalised embeddings."""

import json
import string

import numpy as np
import pytest
import torch

from difflab.cli import main
from difflab.data import DataConfig
from difflab.eval.clip_score import ClipScorer, Preprocessing, clip_score, prompted_samples, score_prompts
from difflab.io import save_weights
from difflab.nets import UNetConfig, build_net
from difflab.pipeline import load
from difflab.run_config import TrainConfig

transformers = pytest.importorskip("transformers")

CROP, EDGE = 30, 34


def tiny_clip(folder, preprocessor=True, seed=0):
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ",:()-"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"], "pad_token_id": vocab["<|endoftext|>"]}
    vision = {"image_size": CROP, "patch_size": 6, "hidden_size": 32, "intermediate_size": 37,
              "num_hidden_layers": 2, "num_attention_heads": 4}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if preprocessor:
        CLIPImageProcessorPil(size={"shortest_edge": EDGE}, crop_size={"height": CROP, "width": CROP}
                              ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip") / "tinyclip")


def images(n, shape=(1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g) * 2 - 1


def to_pixels(x):
    """What a saved PNG holds: uint8 HWC."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [a.squeeze(-1) if a.shape[-1] == 1 else a for a in arr]


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 10, 16), (1, 20, 12)])
def test_preprocessing_equals_clip_image_processor(clip_dir, shape):
    from transformers import CLIPImageProcessorPil

    x = images(5, shape)
    ref = CLIPImageProcessorPil.from_pretrained(clip_dir)(
        images=[np.stack([p] * 3, -1) if p.ndim == 2 else p for p in to_pixels(x)], return_tensors="pt")
    got = Preprocessing.from_folder(clip_dir, CROP)(x)
    assert got.shape == (5, 3, CROP, CROP)
    torch.testing.assert_close(got, ref["pixel_values"], rtol=0, atol=1e-5)


def test_without_a_preprocessor_config_the_vision_size_and_openai_statistics_are_used(tmp_path):
    from transformers import CLIPImageProcessorPil

    folder = tiny_clip(tmp_path / "bare", preprocessor=False)
    x = images(3, (1, 12, 12))
    ref = CLIPImageProcessorPil(size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP})(
        images=[np.stack([p] * 3, -1) for p in to_pixels(x)], return_tensors="pt")
    torch.testing.assert_close(ClipScorer(folder).preprocess(x), ref["pixel_values"], rtol=0, atol=1e-5)


def independent_scores(folder, x, prompts):
    """100 * max(cos, 0) per pair through transformers' processor, tokenizer and forward pass."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    pixels = CLIPImageProcessorPil.from_pretrained(folder)(
        images=[np.stack([p] * 3, -1) if p.ndim == 2 else p for p in to_pixels(x)], return_tensors="pt")
    tokens = AutoTokenizer.from_pretrained(folder)(list(prompts), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=pixels["pixel_values"])
    cos = (out.image_embeds * out.text_embeds).sum(-1).double()
    return cos, 100 * cos.clamp(min=0)


def test_clip_score_equals_an_independent_computation(clip_dir):
    prompts = ["a handwritten 7", "the digit seven", "number 3", "zero", "a sloppy eight", "label: 1",
               "an image of a four", "two", "the numeral 9", "six (the digit)", "five", "a thick 0"]
    x = images(len(prompts), (1, 8, 8), seed=3)
    cos, want = independent_scores(clip_dir, x, prompts)
    assert (cos < 0).any() and (cos > 0).any(), "pick pairs on both sides of 0 so max(cos, 0) is tested"
    scorer = ClipScorer(clip_dir)
    result = scorer.score(x, prompts, batch_size=5)
    torch.testing.assert_close(result.scores, want, rtol=1e-5, atol=1e-4)
    assert result.value == pytest.approx(float(want.mean()), abs=1e-4)
    assert result.stderr == pytest.approx(float(want.std() / len(want) ** 0.5), abs=1e-4)
    assert result.label == "CLIP-score (tinyclip)"
    assert clip_score(x, prompts, clip_dir) == pytest.approx(result.value, abs=1e-6)
    other = ClipScorer(tiny_clip(clip_dir.parent / "other", seed=1)).score(x, prompts).value
    assert abs(other - result.value) > 1e-3  # the score depends on the CLIP weights


def test_clip_score_errors(clip_dir, tmp_path):
    with pytest.raises(ValueError, match="--clip-weights .* no CLIP model there"):
        ClipScorer(tmp_path / "missing")
    with pytest.raises(ValueError, match="pairs each image with its prompt"):
        ClipScorer(clip_dir).score(images(2), ["one"])


# ---- difflab eval --metrics clip-score ---------------------------------------------------------

DIGITS = tuple(str(i) for i in range(10))


def tiny_run(folder, text=True):
    """A run folder of an untrained tiny UNet with random weights (cross-attending to the text
    encoder when ``text``)."""
    from difflab.conditioning.text import TextConfig

    net = UNetConfig(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4,
                     image_size=8, context_dim=384 if text else 0)
    data = DataConfig(source="digits", image_size=8, channels=1)
    cfg = TrainConfig(data=data, net=net, T=20, sample_sampler="ddim", sample_steps=2,
                      cond="text" if text else "none", text=TextConfig(templates="digits") if text else None,
                      class_names=DIGITS if text else ())
    folder.mkdir()
    (folder / "config.json").write_text(cfg.to_json() + "\n")
    torch.manual_seed(0)
    model = build_net(net)
    with torch.no_grad():  # wake the zero-initialised outputs, so the prompt and the guidance matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_weights(model.state_dict(), folder / "model.safetensors")
    return folder


def test_eval_clip_score_is_the_score_of_the_prompted_samples(clip_dir, tmp_path, capsys):
    run = tiny_run(tmp_path / "text")
    code = main(["eval", str(run), "--metrics", "clip-score", "--clip-weights", str(clip_dir), "--n", "6",
                 "--steps", "2", "--guidance", "2", "--no-progress", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "| CLIP-score (tinyclip) |" in out.out
    score = json.loads((tmp_path / "r.json").read_text())["scores"][0]
    pipe = load(run, "cpu")
    prompts, source = score_prompts(pipe)
    assert "held-out" in source
    x, assigned = prompted_samples(pipe, prompts, 6, guidance=2.0, sampler="ddim", steps=2, seed=0)
    assert assigned == prompts[:6]
    _, want = independent_scores(clip_dir, x, assigned)
    assert score["value"] == pytest.approx(float(want.mean()), abs=1e-4)


def test_eval_clip_score_errors_are_one_line(clip_dir, tmp_path, capsys):
    plain = tiny_run(tmp_path / "plain", text=False)
    assert main(["eval", str(plain), "--metrics", "clip-score", "--n", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--clip-weights DIR" in err and err.count("\n") == 1
    assert main(["eval", str(plain), "--metrics", "clip-score", "--clip-weights", str(clip_dir), "--n", "2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "runs sampled with prompts" in err and err.count("\n") == 1
