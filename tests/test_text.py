"""Text prompts: the frozen encoder (offline, cached, padding-free, truncating), captions from
labels and from caption files, text-conditional training with exact resume, sampling from the
API and the CLI (prompts, negative prompts, prompt files, errors) and prompt-agreement-digit."""

import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from difflab.cli import main as cli_main
from difflab.conditioning import TextCondition, get_encoder
from difflab.conditioning.captions import (
    DIGIT_WORDS,
    TEMPLATE_SETS,
    CaptionTable,
    captions,
    class_named,
    held_out_prompts,
    template_set_for,
)
from difflab.conditioning.text import PIP_HINT, TextEncoder, read_prompt_file
from difflab.data import DataConfig, DataError, load_dataset
from difflab.data.formats import CIFAR10_NAMES, FASHION_NAMES
from difflab.nets import UNet, UNetConfig, default_net_config
from difflab.pipeline import Pipeline, load
from difflab.train import TrainConfig, train
from difflab.train.checkpoint import list_checkpoints
from tests.test_train import Crash, crash_at, epoch_records

QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return get_encoder()


# ---- the encoder ------------------------------------------------------------------------------
def test_encoder_loads_with_hf_offline_and_no_network():
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network access during the test')\n"
        "socket.socket.connect = refuse; socket.getaddrinfo = refuse; socket.create_connection = refuse\n"
        "from difflab.conditioning import get_encoder\n"
        "e = get_encoder().encode(['a handwritten seven'])\n"
        "print(tuple(e.states.shape), round(float(e.pooled.norm()), 4))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["(1,", "6,", "384)", "1.0"]
    assert "Loading weights" not in r.stderr  # transformers' progress bar is silenced


def test_importing_difflab_and_the_pipeline_does_not_load_the_encoder():
    code = ("import sys, difflab, difflab.pipeline, difflab.conditioning\n"
            "print(sorted(m for m in ('transformers', 'sentence_transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_missing_encoder_package_is_a_one_line_error_naming_the_extra():
    enc = TextEncoder()
    enc.spec = replace(enc.spec, module="difflab_no_such_text_encoder")
    with pytest.raises(ImportError) as err:
        enc.encode(["a seven"])
    assert PIP_HINT in str(err.value) and "\n" not in str(err.value)


def test_same_prompt_same_embedding_in_any_batch_and_after_the_cache(encoder):
    alone = encoder.encode(["a handwritten seven"])
    batch = encoder.encode(["the digit three, written very carefully by a person", "a handwritten seven"])
    n = alone.states.shape[1]
    assert torch.equal(batch.states[1, :n], alone.states[0])
    assert torch.equal(batch.pooled[1], alone.pooled[0])
    fresh = TextEncoder()  # its own cache: computed again
    fresh._tokenizer, fresh._model = encoder._tokenizer, encoder._model
    assert torch.equal(fresh.token_states("a handwritten seven"), alone.states[0])
    assert encoder.token_states("a handwritten seven") is encoder.token_states("a handwritten seven")


def test_padding_is_exactly_zero_and_real_tokens_never_are(encoder):
    e = encoder.encode(["7", "a handwritten seven", "number seven, written by hand", ""])
    lengths = e.mask.sum(1).tolist()
    assert lengths == [3, 6, 8, 2]  # [CLS] ... [SEP]
    for i, n in enumerate(lengths):
        assert torch.all(e.states[i, n:] == 0)
        assert bool((e.states[i, :n].abs().amax(-1) > 0).all())
        assert torch.equal(e.mask[i], e.states[i].abs().amax(-1) > 0)


def test_pooled_is_sentence_transformers_encode(encoder):
    from sentence_transformers import SentenceTransformer

    prompts = ["a handwritten seven", "the digit 7", "a photo of an ankle boot", ""]
    st = SentenceTransformer(str(encoder.model_path()), device="cpu", local_files_only=True)
    want = torch.from_numpy(st.encode(prompts, convert_to_numpy=True))
    got = encoder.encode(prompts).pooled
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(4))
    assert st.max_seq_length == encoder.max_length == 256


def test_prompts_beyond_256_word_pieces_are_truncated_with_a_warning(encoder):
    long = "seven " * 300
    with pytest.warns(UserWarning, match="302 word pieces truncated to 256"):
        states = encoder.token_states(long)
    assert states.shape == (256, 384)
    fits = "seven " * 254  # 254 pieces + [CLS] + [SEP]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert encoder.token_states(fits).shape == (256, 384)


def test_the_null_condition_is_the_encoded_empty_prompt_not_zeros(encoder):
    text = TextCondition(encoder)
    null = text.null(3)["context"]
    assert null.shape == (3, 2, 384) and bool((null.abs().amax(-1) > 0).all())
    assert torch.equal(null, text.cond(["", "", ""])["context"])
    assert "" in encoder._cache


def _woken_text_unet() -> UNet:
    """A tiny UNet with cross-attention whose zero-initialised outputs are woken, so the context
    changes the output."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, groups=8,
                          context_dim=384, image_size=8, attention_resolutions=(8, 4))).eval()
    for p in net.parameters():
        if torch.all(p == 0):
            torch.nn.init.normal_(p, std=0.05)
    return net


@torch.no_grad()
def test_a_prompt_padded_to_any_length_gives_the_same_unet_output(encoder):
    net = _woken_text_unet()
    x, t = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([10])
    alone = encoder.encode(["a handwritten seven"]).states
    longer = "the digit three, drawn slowly and with great care"
    padded = encoder.encode(["a handwritten seven", longer]).states
    assert padded.shape[1] > alone.shape[1] + 5
    out_alone, out_padded = net(x, t, context=alone), net(x, t, context=padded[:1])
    torch.testing.assert_close(out_alone, out_padded, atol=1e-5, rtol=0)
    other = net(x, t, context=encoder.encode(["a handwritten three"]).states)
    assert (other - out_alone).abs().max() > 1e-3  # the prompt matters
    assert torch.equal(net(x, t, context=torch.zeros(1, 4, 384)), net(x, t))  # all padding = no context


def test_default_unet_for_text_cross_attends_at_7_and_in_the_middle():
    cfg = default_net_config("unet", in_channels=1, image_size=28, context_dim=384)
    assert cfg.context_dim == 384 and cfg.level_sizes() == (28, 14, 7)
    assert cfg.attention_resolutions == (7,) and cfg.mid_attention


# ---- captions ---------------------------------------------------------------------------------
DIGITS = [str(i) for i in range(10)]


@pytest.mark.parametrize(("name", "classes"), [("digits", DIGITS), ("objects", FASHION_NAMES),
                                               ("objects", CIFAR10_NAMES), ("objects", ["golden_retriever",
                                                                                        "tabby_cat"])])
def test_every_caption_names_its_own_class_and_no_other(name, classes):
    for held_out in (False, True):
        table = captions(name, classes, held_out)
        assert len(table) == len(TEMPLATE_SETS[name].held_out if held_out else TEMPLATE_SETS[name].train)
        for row in table:
            assert len(row) == len(classes)
            for c, caption in enumerate(row):
                assert class_named(caption, name, classes) == c, caption
                assert re.search(rf"(^|\W){expected_words(name, classes[c])}(\W|$)", caption), caption


def expected_words(name: str, cls: str) -> str:
    """What a caption of ``cls`` must say, written out independently of the captions module."""
    if name == "digits":
        words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
        return f"({cls}|{words[int(cls)]})"
    key = cls.lower().replace("_", " ").split("/")[0]
    return re.escape({"automobile": "car", "trouser": "trousers"}.get(key, key))


def test_held_out_templates_are_disjoint_from_the_training_ones():
    for name, classes in (("digits", DIGITS), ("objects", FASHION_NAMES)):
        s = TEMPLATE_SETS[name]
        assert len(s.train) >= 20 and len(s.held_out) >= 8
        assert not set(s.train) & set(s.held_out)
        assert len(set(s.train)) == len(s.train) and len(set(s.held_out)) == len(s.held_out)
        seen = {c for row in captions(name, classes) for c in row}
        unseen = set(held_out_prompts(name, classes)[0])
        assert not seen & unseen


def test_digit_captions_use_numerals_and_words_in_varied_order():
    table = captions("digits", DIGITS)
    sevens = {row[7] for row in table}
    assert {"a handwritten 7", "the digit seven", "number seven, written by hand", "7", "seven"} <= sevens
    assert sum("7" in c for c in sevens) >= 10 and sum("seven" in c for c in sevens) >= 10
    assert "an 8" in {row[8] for row in table} and "an eight" in {row[8] for row in table}
    assert sum(c.startswith("seven") or c.startswith("7") for c in sevens) >= 3  # the class first
    assert template_set_for(DIGITS) == "digits" and template_set_for(FASHION_NAMES) == "objects"
    assert "a photo of an ankle boot" in {row[9] for row in captions("objects", FASHION_NAMES)}


def test_a_prompt_naming_no_class_or_two_is_an_error():
    with pytest.raises(ValueError, match="names no class"):
        class_named("a handwritten digit", "digits", DIGITS)
    with pytest.raises(ValueError, match="several classes"):
        class_named("a 3 or a seven", "digits", DIGITS)
    assert class_named("someone wrote a 4", "digits", DIGITS) == 4  # "one" inside a word is not 1
    assert class_named("a t-shirt", "objects", FASHION_NAMES) == 0  # not "shirt"
    assert DIGIT_WORDS[class_named("an eight", "digits", DIGITS)] == "eight"


def test_caption_table_draws_templates_and_the_null_row_from_the_generator(encoder):
    table = CaptionTable.from_templates("digits", DIGITS, encoder)
    assert table.context.shape[0] == len(table.captions) + 1 == 10 * len(TEMPLATE_SETS["digits"].train) + 1
    assert torch.equal(table.context[-1, :2], encoder.token_states(""))
    labels = torch.arange(10).repeat(20)
    a = table.draw(200, labels, None, 0.25, torch.Generator().manual_seed(3))
    b = table.draw(200, labels, None, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    rows = [int(torch.nonzero((table.context == ctx).all(-1).all(-1))[0]) for ctx in a]
    dropped = sum(r == table.null_row for r in rows)
    assert 25 <= dropped <= 75  # p = 0.25 of 200
    assert all(r % 10 == int(y) for r, y in zip(rows, labels, strict=True) if r != table.null_row)
    assert len({r // 10 for r in rows if r != table.null_row}) > 20  # many templates


# ---- caption files ----------------------------------------------------------------------------
def _image_folder(root, n=4):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def test_metadata_jsonl_gives_each_image_its_caption(tmp_path):
    root = _image_folder(tmp_path / "f")
    rows = [{"file_name": f"img{i}.png", "text": f"caption {i}"} for i in (0, 1, 3)]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_dataset(DataConfig(source="folder", path=str(root)))
    assert data.captions == ["caption 0", "caption 1", "", "caption 3"]
    assert "1 image(s) without a caption" in data.summary()


def test_csv_captions_with_file_and_caption_columns(tmp_path):
    root = _image_folder(tmp_path / "f")
    (root / "captions.csv").write_text('file,caption\nimg0.png,"a red, round thing"\n./img2.png,two\n')
    data = load_dataset(DataConfig(source="folder", path=str(root), limit=4))
    assert data.captions == ["a red, round thing", "", "two", ""]
    assert load_dataset(DataConfig(source="folder", path=str(_image_folder(tmp_path / "g")))).captions is None


@pytest.mark.parametrize(("name", "text", "match"), [
    ("metadata.jsonl", '{"file_name": "img9.png", "text": "x"}\n', "names 'img9.png', which is not an image"),
    ("metadata.jsonl", '{"file": "img0.png"}\n', 'needs "file_name" and "text"'),
    ("metadata.jsonl", "not json\n", "is not JSON"),
    ("captions.csv", "image,label\nimg0.png,x\n", "needs a header row"),
    ("metadata.csv", "file_name,text\nmissing.png,x\nimg0.png,y\ngone.png,z\n",
     "names 'missing.png' \\(and 1 more\\)"),
])
def test_a_bad_captions_file_is_a_one_line_error(tmp_path, name, text, match):
    root = _image_folder(tmp_path / "f")
    (root / name).write_text(text)
    with pytest.raises(DataError, match=match) as err:
        load_dataset(DataConfig(source="folder", path=str(root)))
    assert "\n" not in str(err.value)


# ---- training ---------------------------------------------------------------------------------
TINY_TEXT_UNET = UNetConfig(
    in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, groups=4, num_heads=2,
    attention_resolutions=(4,), dropout=0.3, context_dim=384, image_size=8,
)
TEXT_RUN = dict(
    data=DataConfig(source="digits", limit=24, flip=True), net_kind="unet", net=TINY_TEXT_UNET,
    cond="text", cond_drop=0.3, T=50, batch_size=8, warmup_steps=2, checkpoint_every=4, sample_every=3,
    sample_n=2, sample_steps=2, log_every=1, keep_best=True,
)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "run"
    train(TrainConfig(**TEXT_RUN, steps=9), out, **QUIET)
    return out


def test_text_run_records_what_rebuilds_its_conditioning(text_run):
    saved = json.loads((text_run / "config.json").read_text())
    assert saved["cond"] == "text" and saved["class_names"] == DIGITS
    assert saved["text"] == {"encoder": "all-MiniLM-L6-v2", "max_length": 256, "captions": "templates",
                             "templates": "digits"}
    assert saved["net"]["context_dim"] == 384


def test_text_run_crashed_and_resumed_is_bit_identical(tmp_path, text_run):
    cfg = TrainConfig(**TEXT_RUN, steps=9)
    with pytest.raises(Crash):  # mid epoch 2, one step after the checkpoint at step 4
        train(cfg, tmp_path / "run", on_step=crash_at(5), **QUIET)
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [4]
    train(cfg, tmp_path / "run", resume=True, on_step=crash_at(-1), **QUIET)
    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(text_run / name), load_file(tmp_path / "run" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert epoch_records(text_run) == epoch_records(tmp_path / "run")


def test_the_captions_reach_the_network(tmp_path, text_run):
    """With other captions dropped, the context projections train differently; were the captions
    never used (or always the empty prompt), they would train the same."""
    cfg = TrainConfig(**{**TEXT_RUN, "cond_drop": 0.9}, steps=9)
    train(cfg, tmp_path / "drop", **QUIET)
    a, b = load_file(text_run / "model.safetensors"), load_file(tmp_path / "drop" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a if "to_kv" in k)


def test_training_on_a_captions_file(tmp_path):
    root = _image_folder(tmp_path / "f", n=6)
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"img{i}.png", "text": t}) + "\n"
                                                 for i, t in enumerate(["a cat", "a dog", "a cat", "x"])))
    said: list[str] = []
    cfg = TrainConfig(**{**TEXT_RUN, "data": DataConfig(source="folder", path=str(root))}, steps=2)
    train(cfg, tmp_path / "run", progress=False, log=said.append)
    assert "text: 3 distinct captions from the data's captions file" in " ".join(said)
    saved = TrainConfig.from_json(tmp_path / "run" / "config.json")
    assert saved.text is not None and saved.text.captions == "file" and saved.class_names == ()


def test_text_training_needs_captions_and_the_unet(tmp_path):
    from difflab.train import TrainingError

    root = _image_folder(tmp_path / "f")
    with pytest.raises(TrainingError, match="neither labels .* nor a metadata.jsonl"):
        train(TrainConfig(**{**TEXT_RUN, "data": DataConfig(source="folder", path=str(root))}, steps=1),
              tmp_path / "a", **QUIET)
    with pytest.raises(TrainingError, match="--cond text needs --net unet"):
        train(TrainConfig(data=DataConfig(source="digits", limit=8), net_kind="myunet", cond="text", steps=1),
              tmp_path / "b", **QUIET)


# ---- sampling ---------------------------------------------------------------------------------
def test_guidance_0_samples_the_empty_prompt_which_is_unconditional(text_run):
    pipe = load(text_run)
    kw = dict(steps=3, seed=5)
    uncond = pipe.sample(3, **kw)
    assert torch.equal(pipe.sample(3, prompts="a handwritten seven", guidance=0, **kw), uncond)
    assert torch.equal(pipe.sample(3, prompts="", guidance=4, **kw), uncond)
    assert not torch.equal(pipe.sample(3, prompts="a handwritten seven", guidance=4, **kw), uncond)


def test_negative_prompts_of_another_length_batch_like_two_calls(text_run):
    from difflab.guidance import Guidance

    pipe = load(text_run)
    prompts = ["a handwritten seven", "3", "the digit four, written slowly and very neatly"]
    negatives = ["a blurry smudge of ink that is not a digit at all, with many words", "", "2"]
    kw = dict(steps=3, seed=2, prompts=prompts, negative_prompts=negatives)
    batched = pipe.sample(3, guidance=Guidance(3.0), **kw)
    sequential = pipe.sample(3, guidance=Guidance(3.0, batched=False), **kw)
    torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=0)
    plain = pipe.sample(3, guidance=3.0, steps=3, seed=2, prompts=prompts)
    assert not torch.equal(plain[0], batched[0]) and not torch.equal(plain[2], batched[2])
    torch.testing.assert_close(plain[1], batched[1], atol=1e-5, rtol=0)  # "" is the null condition
    one = pipe.sample(1, guidance=3.0, steps=3, seed=2, prompts=prompts[:1], negative_prompts=negatives[:1])
    torch.testing.assert_close(one[0], batched[0], atol=1e-5, rtol=0)  # any batch


def test_pipeline_prompt_errors(text_run, tmp_path):
    pipe = load(text_run)
    with pytest.raises(ValueError, match="give prompts"):
        pipe.sample(2, class_labels=[1, 2], steps=2)
    with pytest.raises(ValueError, match="one of the prompts per image"):
        pipe.sample(3, prompts=["a", "b"], steps=2)
    other = Pipeline(pipe.net, pipe.config.replace(cond="class"))
    with pytest.raises(ValueError, match="not trained with text"):
        other.sample(2, prompts="a seven", steps=2)


def pixels(folder) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in sorted(folder.glob("*.png"))])


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_samples_with_prompt_negative_prompt_and_prompt_file(text_run, tmp_path, capsys):
    from difflab.viz import to_uint8

    base = ("sample", text_run, "--steps", "2", "--n", "3", "--seed", "4", "--guidance", "4")
    code, _, err = _cli(capsys, *base, "--prompt", "a handwritten seven", "--negative-prompt", "a 1",
                        "--out", tmp_path / "one.png", "--save-dir", tmp_path / "one")
    assert code == 0, err
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten seven\n\nthe digit 3\n")
    code, _, err = _cli(capsys, *base, "--prompt-file", prompts, "--out", tmp_path / "rows.png",
                        "--save-dir", tmp_path / "rows")
    assert code == 0, err
    pipe = load(text_run)
    rows = pipe.sample(6, steps=2, guidance=4.0, prompts=["a handwritten seven"] * 3 + ["the digit 3"] * 3,
                       seeds=[4, 5, 6] * 2)  # one row per prompt, the same seeds in each
    assert torch.equal(pixels(tmp_path / "rows"), torch.from_numpy(to_uint8(rows)[..., 0]))
    neg = pipe.sample(3, steps=2, guidance=4.0, prompts="a handwritten seven", negative_prompts="a 1", seed=4)
    assert torch.equal(pixels(tmp_path / "one"), torch.from_numpy(to_uint8(neg)[..., 0]))
    assert not torch.equal(neg, rows[:3])


def test_cli_prompt_errors_are_one_line(text_run, tmp_path, capsys):
    class_run = tmp_path / "class"
    train(TrainConfig(**{**TEXT_RUN, "cond": "class", "net": replace(TINY_TEXT_UNET, context_dim=0,
                                                                      num_classes=10)}, steps=1),
          class_run, **QUIET)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = [
        ((class_run, "--prompt", "a seven"), "--prompt needs a run trained with text"),
        ((text_run, "--class", "7"), "--class is for class-conditional runs"),
        ((text_run, "--prompt-file", empty), "holds no prompts"),
        ((text_run, "--prompt-file", tmp_path / "nope.txt"), "does not exist"),
        ((text_run, "--prompt", "a", "--prompt-file", empty), "not both"),
    ]
    for args, match in cases:
        code, _, err = _cli(capsys, "sample", *args, "--steps", "2", "--n", "1", "--out", tmp_path / "x.png")
        assert code == 2 and match in err and err.count("\n") == 1, (args, err)


# ---- prompt agreement -------------------------------------------------------------------------
def test_prompt_agreement_counts_samples_of_the_named_digit(text_run, tmp_path):
    """Samples replaced by real MNIST digits of the named class score ~1; of a shifted class ~0."""
    from difflab.data import load_dataset as load_data
    from difflab.eval.features import get_extractor
    from difflab.eval.prompts import agreement_prompts, prompt_agreement

    pipe = load(text_run)
    mnist = load_data(DataConfig(source="mnist"))
    by_class = {c: mnist.batch(torch.nonzero(mnist.labels == c)[:40, 0])[0] for c in range(10)}

    def fake_sample(shift):
        def sample(n, prompts, seeds, **kw):
            named = [class_named(p, "digits", DIGITS) for p in prompts]
            pairs = zip(named, seeds, strict=True)
            return torch.stack([by_class[(c + shift) % 10][s % 40] for c, s in pairs])
        return sample

    digit = get_extractor("digit", "cpu")
    prompts, classes, source = agreement_prompts(pipe)
    assert (prompts, classes) == held_out_prompts("digits", DIGITS) and "held-out" in source
    pipe.sample = fake_sample(0)
    good = prompt_agreement(pipe, digit.probs, n=240, batch_size=64)
    pipe.sample = fake_sample(3)
    bad = prompt_agreement(pipe, digit.probs, n=240, batch_size=64)
    assert good.share > 0.95 and bad.share < 0.05 and good.n == 240
    assert set(good.per_class) == set(DIGITS)
    file = tmp_path / "p.txt"
    file.write_text("a handwritten 7\nthe digit two\n")
    assert agreement_prompts(pipe, file)[1] == [7, 2]


def test_eval_reports_prompt_agreement_digit(text_run, capsys):
    code, out, err = _cli(capsys, "eval", text_run, "--metrics", "prompt-agreement", "--n", "4",
                          "--steps", "2", "--no-progress", "--guidance", "2")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("| prompt-agreement-digit"))
    assert "held-out prompts" in line and "guidance 2" in line


def test_prompt_agreement_refuses_runs_it_cannot_score(text_run, tmp_path):
    from difflab.eval.prompts import agreement_prompts

    pipe = load(text_run)
    with pytest.raises(ValueError, match="made from class labels"):
        agreement_prompts(Pipeline(pipe.net, pipe.config.replace(text=replace(pipe.config.text,
                                                                               captions="file"))))
    with pytest.raises(ValueError, match="text-conditional runs"):
        agreement_prompts(Pipeline(pipe.net, pipe.config.replace(cond="class")))
    bad = tmp_path / "p.txt"
    bad.write_text("a handwritten digit\n")
    with pytest.raises(ValueError, match="names no class"):
        agreement_prompts(pipe, bad)


def test_read_prompt_file_skips_blank_lines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("  one prompt \n\n\ttwo\n")
    assert read_prompt_file(f) == ["one prompt", "two"]
