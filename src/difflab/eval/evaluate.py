"""``difflab eval`` and ``difflab fd``: sample a run with fixed seeds and score it against its data.

Every number is labelled with the extractor it was computed on (``FD-EffNetLite0``, ``FD-digit``,
``FID``, ``KID-EffNetLite0``, ...), see :mod:`difflab.eval.features`. Real-data features are cached
(:mod:`difflab.eval.stats`); generated image i always comes from seed ``seed + i``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from difflab.config import check_choice
from difflab.eval.features import FeatureExtractor, get_extractor
from difflab.eval.sharded import block, broadcast, gather_rows, rank_and_size
from difflab.eval.stats import FeatureSet, StatsError, cached_features, extract

METRICS: tuple[str, ...] = (
    "fd-effnet", "fd-digit", "fd-inception", "kid", "precision-recall", "digit", "bpd", "prompt-agreement",
    "clip-score",
)
_NO_SAMPLES = ("bpd", "prompt-agreement", "clip-score")  # metrics that do not score the unconditional samples
_FD_EXTRACTOR = {"fd-effnet": "effnet-lite0", "fd-digit": "digit", "fd-inception": "inception"}
DIGIT_SOURCES = ("mnist", "mnist-idx", "digits")


@dataclass
class Score:
    """One reported number: ``metric`` is its honest label, ``spread`` a std or standard error."""

    metric: str
    value: float
    spread: float | None = None
    note: str = ""


@dataclass
class EvalReport:
    run: str
    n: int
    sampler: str
    steps: int
    seed: int
    scores: list[Score] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"# {self.run}: {self.n} samples, {self.sampler} {self.steps} steps, seeds "
                 f"{self.seed}..{self.seed + self.n - 1}", "| metric | value | note |", "|---|---|---|"]
        for s in self.scores:
            value = f"{s.value:.4g}" + (f" ± {s.spread:.2g}" if s.spread is not None else "")
            lines.append(f"| {s.metric} | {value} | {s.note} |")
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return "\n".join([*lines, f"time: {timing}"])

    def to_dict(self) -> dict:
        return asdict(self)


def default_metrics(source: str, channels: int) -> tuple[str, ...]:
    """FD-EffNetLite0, KID and precision/recall always; digit scores on digit data."""
    if source in DIGIT_SOURCES and channels == 1:
        return ("fd-effnet", "fd-digit", "kid", "precision-recall", "digit")
    return ("fd-effnet", "kid", "precision-recall")


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    for m in names:
        check_choice("metric", m, METRICS)
    if not names:
        raise ValueError(f"no metrics given; choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def frechet(a: FeatureSet, b: FeatureSet) -> float:
    from difflab.eval.scores import frechet_distance

    if a.mu.shape != b.mu.shape:
        raise StatsError(f"feature sizes differ ({a.mu.shape[0]} vs {b.mu.shape[0]}): were the two "
                         "sides computed with different --features?")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def rank_note(n: int, dim: int) -> str:
    return "" if n > dim else f"{n} images <= {dim} features: biased upward, use more images"


class _Extractors:
    """Load each extractor once, on first use."""

    def __init__(self, device: torch.device, inception_weights: str | Path | None, allow_download: bool):
        self.device, self.weights, self.allow = device, inception_weights, allow_download
        self._made: dict[str, FeatureExtractor] = {}

    def __call__(self, name: str) -> FeatureExtractor:
        if name not in self._made:
            weights = self.weights if name == "inception" else None
            self._made[name] = get_extractor(name, self.device, weights=weights, allow_download=self.allow)
        return self._made[name]


def evaluate(
    run: str | Path,
    *,
    n: int = 5000,
    metrics: Sequence[str] | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    data: str | None = None,
    real_n: int | None = None,
    features: str = "effnet-lite0",
    bpd_n: int = 256,
    bpd_timesteps: int = 50,
    inception_weights: str | Path | None = None,
    allow_download: bool = False,
    cache: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    prompt_file: str | Path | None = None,
    guidance: float | None = None,
    clip_weights: str | Path | None = None,
    autoencoder: str | Path | None = None,
) -> EvalReport:
    """Generate ``n`` samples of ``run`` (seeds ``seed..seed+n-1``; class-conditional runs cycle
    through the classes) and compute ``metrics`` against the run's training data (or ``data``, a
    data spec such as ``mnist`` or ``folder:PATH``). ``features`` is the extractor of KID and
    precision/recall. ``bpd`` scores ``bpd_n`` real images with the stratified variational bound
    (``bpd_timesteps`` strata). ``prompt-agreement`` (text runs on digit data) samples ``n`` more
    images for the held-out prompts (or ``prompt_file``) at ``guidance`` (the run's scale unless
    given), see :mod:`difflab.eval.prompts`. ``clip-score`` (text runs) samples ``n`` images for the
    same prompts and scores each against its prompt with the CLIP model in the folder
    ``clip_weights``, see :mod:`difflab.eval.clip_score`. ``autoencoder``: a latent run's
    autoencoder when it moved since training (:func:`difflab.load`).

    Under ``torchrun`` (a joined process group) every rank calls this: each samples its block of
    the n seeds and extracts their features, rank 0 gathers exactly n and scores them
    (:mod:`difflab.eval.sharded`; prompt-agreement, clip-score and bpd run on rank 0), and every
    rank returns rank 0's report."""
    from tqdm.auto import tqdm

    from difflab.data import load_dataset, parse_data_spec
    from difflab.pipeline import load

    pipe = load(run, device, autoencoder=autoencoder)
    cfg = pipe.config
    data_cfg = parse_data_spec(data, image_size=cfg.data.image_size, channels=cfg.data.channels) if data \
        else cfg.data
    chosen = parse_metrics(metrics) if metrics else default_metrics(data_cfg.source, pipe.image_shape[0])
    if not metrics and cfg.cond == "text" and "digit" in chosen:
        chosen = (*chosen, "prompt-agreement")
    need_samples = any(m not in _NO_SAMPLES for m in chosen)
    if n < 2:
        raise ValueError(f"--n must be at least 2 samples, got {n}")
    if "clip-score" in chosen:
        from difflab.eval.clip_score import score_prompts

        if clip_weights is None:
            raise ValueError("clip-score needs a CLIP model: pass --clip-weights DIR (a folder written by "
                             "CLIPModel.save_pretrained, with its tokenizer)")
        clip_prompts = score_prompts(pipe, prompt_file)
    sampler = sampler or cfg.sample_sampler
    steps = steps or (cfg.T if sampler == "ddpm" else cfg.sample_steps)
    report = EvalReport(str(run), n, sampler, steps, seed)
    extractors = _Extractors(pipe.device, inception_weights, allow_download)

    t0 = time.perf_counter()
    num_classes = int(getattr(pipe.net, "num_classes", 0) or 0)
    labels = torch.arange(n) % num_classes if num_classes else None
    rank, size = rank_and_size()
    if size > n:
        raise ValueError(f"--n {n} samples cannot be spread over {size} processes; give --n {size} or more")
    span = block(n, rank, size) if need_samples else range(0)
    chunks = []
    with tqdm(total=len(span), desc="sampling", unit="img", disable=not progress or rank > 0,
              dynamic_ncols=True) as bar:
        for start in range(span.start, span.stop, batch_size):
            stop = min(span.stop, start + batch_size)
            chunks.append(pipe.sample(stop - start, sampler=sampler, steps=steps, seed=seed + start,
                                      batch_size=batch_size,
                                      class_labels=None if labels is None else labels[start:stop]))
            bar.update(stop - start)
    fake = torch.cat(chunks) if chunks else torch.empty(0, *pipe.image_shape)
    report.seconds["sampling"] = time.perf_counter() - t0
    fake_sets: dict[str, FeatureSet] = {}
    fake_probs = None
    if size > 1:  # every rank: its samples' features, gathered on rank 0
        for extractor_name in _fake_extractors(chosen, features):
            gathered = _spread_features(fake, extractors(extractor_name))
            if gathered is not None:
                fake_sets[extractor_name] = gathered
        if "digit" in chosen:
            fake_probs = gather_rows(extractors("digit").probs(fake))
        if rank > 0:
            return broadcast(None)

    dataset = load_dataset(data_cfg)
    real = _real_subset(dataset, real_n)
    name = f"{data_cfg.source}-{real.shape[-1]}px"

    def feature_pair(extractor_name: str) -> tuple[FeatureSet, FeatureSet]:
        t = time.perf_counter()
        ex = extractors(extractor_name)
        real_fs = cached_features(real, ex, name=name, cache=cache, log=log)
        fake_fs = fake_sets.get(extractor_name) or extract(fake, ex)
        report.seconds[f"features {ex.label}"] = report.seconds.get(f"features {ex.label}", 0) + \
            time.perf_counter() - t
        return real_fs, fake_fs

    pairs: dict[str, tuple[FeatureSet, FeatureSet]] = {}

    def pair(extractor_name: str) -> tuple[FeatureSet, FeatureSet]:
        if extractor_name not in pairs:
            pairs[extractor_name] = feature_pair(extractor_name)
        return pairs[extractor_name]

    for metric in chosen:
        if metric in _FD_EXTRACTOR:
            r, f = pair(_FD_EXTRACTOR[metric])
            note = "; ".join(filter(None, [f"vs {r.n} real", rank_note(min(r.n, f.n), len(r.mu))]))
            report.scores.append(Score(r.label, frechet(r, f), note=note))
        elif metric == "kid":
            from difflab.eval.kid import kernel_distance

            r, f = pair(features)
            mean, std = kernel_distance(r.need_features("KID"), f.need_features("KID"), seed=seed)
            label = "KID" if features == "inception" else f"KID-{r.label.removeprefix('FD-')}"
            size = min(r.n, f.n, 1000)
            report.scores.append(Score(label, mean, std, note=f"mean ± std over 100 subsets of {size}"))
        elif metric == "precision-recall":
            from difflab.eval.precision_recall import precision_recall

            r, f = pair(features)
            p, rec = precision_recall(r.need_features("precision"), f.need_features("recall"), k=3)
            tag = r.label.removeprefix("FD-")
            report.scores.append(Score(f"precision-{tag}", p, note="k=3 (Kynkaanniemi et al. 2019)"))
            report.scores.append(Score(f"recall-{tag}", rec, note="k=3"))
        elif metric == "digit":
            report.scores.extend(_digit_scores(fake, labels, extractors("digit"), fake_probs))
        elif metric == "prompt-agreement":
            report.scores.append(_prompt_agreement(pipe, n, data_cfg, extractors, prompt_file, guidance,
                                                   sampler=sampler, steps=steps, seed=seed,
                                                   batch_size=batch_size, progress=progress))
        elif metric == "clip-score":
            report.scores.append(_clip_score(pipe, n, clip_weights, clip_prompts, guidance, sampler=sampler,
                                             steps=steps, seed=seed, batch_size=batch_size,
                                             progress=progress))
        elif metric == "bpd":
            t = time.perf_counter()
            report.scores.append(_bpd(pipe, dataset, bpd_n, bpd_timesteps, seed,
                                      held_out=data is not None, batch_size=batch_size))
            report.seconds["bpd"] = time.perf_counter() - t
    report.seconds["total"] = time.perf_counter() - t0
    return broadcast(report) if size > 1 else report


def _fake_extractors(chosen: Sequence[str], features: str) -> list[str]:
    """The extractors whose features of the samples ``chosen`` metrics need, in a fixed order."""
    names = [_FD_EXTRACTOR[m] for m in chosen if m in _FD_EXTRACTOR]
    names += [features for m in chosen if m in ("kid", "precision-recall")]
    return list(dict.fromkeys(names))


def _spread_features(fake: Tensor, extractor: FeatureExtractor) -> FeatureSet | None:
    """This rank's samples' features (in :func:`extract`'s chunks), gathered on rank 0 as one
    set (None on the other ranks)."""
    chunk = 64 * 4
    local = [extractor.features(fake[i : i + chunk], batch_size=64) for i in range(0, len(fake), chunk)]
    gathered = gather_rows(torch.cat(local))
    return None if gathered is None else FeatureSet.from_features(gathered, extractor.label)


def _prompt_agreement(pipe, n: int, data_cfg, extractors: _Extractors, prompt_file: str | Path | None,
                      guidance: float | None, *, progress: bool, **sample_kwargs) -> Score:
    from tqdm.auto import tqdm

    from difflab.eval.prompts import prompt_agreement

    if data_cfg.source not in DIGIT_SOURCES or pipe.image_shape[0] != 1:
        raise ValueError(f"prompt-agreement-digit needs digit data ({', '.join(DIGIT_SOURCES)}): there is "
                         f"no classifier for {data_cfg.source}")
    digit = extractors("digit")
    with tqdm(total=n, desc="prompted sampling", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        result = prompt_agreement(pipe, digit.probs, n=n, prompt_file=prompt_file, guidance=guidance,
                                  progress=bar.update, **sample_kwargs)
    return Score("prompt-agreement-digit", result.share, result.stderr,
                 note=f"classifier finds the digit the prompt names; {result.note}")


def _clip_score(pipe, n: int, weights, prompts: tuple[list[str], str], guidance: float | None, *,
                progress: bool, **sample_kwargs) -> Score:
    from tqdm.auto import tqdm

    from difflab.eval.clip_score import ClipScorer, prompted_samples

    scorer = ClipScorer(weights, pipe.device)
    scale = pipe.config.sample_guidance if guidance is None else guidance
    with tqdm(total=n, desc="prompted sampling", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        images, assigned = prompted_samples(pipe, prompts[0], n, guidance=scale, progress=bar.update,
                                            **sample_kwargs)
    result = scorer.score(images, assigned)
    return Score(result.label, result.value, result.stderr,
                 note=f"100 max(cos, 0) (Hessel et al. 2021); {n} samples of {prompts[1]}, "
                 f"guidance {scale:g}")


def _real_subset(dataset, real_n: int | None) -> Tensor:
    from difflab.data.images import uint8_to_float

    images = dataset.images
    if real_n is not None and real_n < len(images):
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:real_n]
        images = images[keep.sort().values]
    return uint8_to_float(images)


def _digit_scores(fake: Tensor, labels: Tensor | None, digit, probs: Tensor | None = None) -> list[Score]:
    """Digit-classifier scores of ``fake`` (or of the classifier's ``probs`` of them, gathered)."""
    from difflab.eval.scores import class_entropy, confident_share, inception_score

    probs = digit.probs(fake) if probs is None else probs
    out = [Score("confident-digit", confident_share(probs), note="share with p_max >= 0.9"),
           Score("class-entropy-digit", class_entropy(probs), note=f"nats; ln 10 = {math.log(10):.3f}"),
           Score("IS-digit", inception_score(probs), note="1..10")]
    if labels is not None:
        acc = (probs.argmax(1) == labels).double().mean().item()
        out.append(Score("class-accuracy-digit", acc, note="classifier agrees with the requested class"))
    return out


@torch.no_grad()
def _bpd(pipe, dataset, n: int, timesteps: int, seed: int, held_out: bool, batch_size: int) -> Score:
    from difflab.diffusion import Denoiser
    from difflab.losses import bits_per_dim

    if getattr(pipe, "latent", None) is not None:
        raise ValueError("bpd bounds the likelihood of pixels, and a latent run models its autoencoder's "
                         "latents (the bound would need the decoder's likelihood): drop bpd from --metrics")
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    den = Denoiser(pipe.net, pipe.schedule, pipe.config.prediction)
    gen = torch.Generator().manual_seed(seed)
    values = []
    for part in idx.split(batch_size):
        x0, y = dataset.batch(part, device=pipe.device, flip=False)
        cond = {"class_labels": y} if y is not None and getattr(pipe.net, "num_classes", 0) else None
        if pipe.is_text:  # the unconditional bound: the null condition (the encoded empty prompt)
            cond = pipe.text_condition.null(len(x0), pipe.device)
        values.append(bits_per_dim(den, x0, generator=gen, timesteps=timesteps, cond=cond).cpu())
    v = torch.cat(values).double()
    where = "held-out data" if held_out else "training data (pass --data for held-out images)"
    return Score("bpd", v.mean().item(), (v.std() / math.sqrt(len(v))).item() if len(v) > 1 else None,
                 note=f"variational bound on {len(v)} images of the {where}; {timesteps} strata")


def load_side(
    path: str | Path, extractor: FeatureExtractor, *, image_size: int | None = None, batch_size: int = 64,
    log: Callable[[str], None] = print,
) -> FeatureSet:
    """A folder of images (features computed now) or a statistics ``.npz``."""
    from difflab.data import DataError
    from difflab.data.images import read_image_folder, uint8_to_float

    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise StatsError(f"{path} does not exist; give a folder of images or a .npz of statistics")
        return FeatureSet.load(path, extractor.label)
    try:
        images, _, _, notes = read_image_folder(path, image_size, labelled=False)
    except DataError as err:
        raise StatsError(str(err).replace("pass folder:PATH with", "give")) from err
    for note in notes:
        log(f"{path}: {note}")
    if len(images) < 2:
        raise StatsError(f"{path} holds {len(images)} image; a Frechet distance needs at least 2 "
                         "(thousands for a stable number)")
    return extract(uint8_to_float(images), extractor, batch_size)


def fd_paths(
    a: str | Path,
    b: str | Path | None = None,
    *,
    features: str = "effnet-lite0",
    batch_size: int = 64,
    device: str = "auto",
    image_size: int | None = None,
    save_stats: str | Path | None = None,
    inception_weights: str | Path | None = None,
    allow_download: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Frechet distance between two folders / ``.npz`` files (like ``python -m pytorch_fid``);
    with ``save_stats`` and one path, save that side's features and statistics instead."""
    from difflab.device import resolve_device

    extractor = get_extractor(features, resolve_device(device), weights=inception_weights,
                              allow_download=allow_download)
    side_a = load_side(a, extractor, image_size=image_size, batch_size=batch_size, log=log)
    if save_stats is not None:
        side_a.save(save_stats)
        log(f"saved {side_a.label} statistics of {side_a.n} images to {save_stats}")
    if b is None:
        return {"label": extractor.label, "n_a": side_a.n, "saved": str(save_stats)}
    side_b = load_side(b, extractor, image_size=image_size, batch_size=batch_size, log=log)
    for side, p in ((side_a, a), (side_b, b)):
        if side.n and (note := rank_note(side.n, len(side.mu))):
            log(f"{p}: {note}")
    return {"label": extractor.label, "value": frechet(side_a, side_b), "n_a": side_a.n, "n_b": side_b.n,
            "a": str(a), "b": str(b)}


def write_json(obj: dict, path: str | Path) -> None:
    from difflab.io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))
