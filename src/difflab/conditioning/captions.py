"""Captions from class labels, and the table of encoded captions a text-conditional run trains on.

Labelled data sets get captions from many templates, so a model learns to read the class out of
varied wording rather than one fixed sentence (the caption-templating of Radford et al. 2021,
"Learning Transferable Visual Models From Natural Language Supervision", sec. 3.1.4, used here to
*train* instead of to classify). Each template set has a separate *held-out* set that training
never uses: prompts phrased in unseen ways, for measuring whether the model follows the class a
prompt names rather than memorised sentences.

- ``digits`` (mnist, mnist-idx, digits, folders whose classes are 0..9): numerals and words in many
  styles and word orders: "a handwritten 7", "the digit seven", "number seven, written by hand".
- ``objects`` (fashion-mnist, cifar10, folders with class subfolders): "a photo of an ankle boot",
  "a blurry photo of a cat", ...; class names become phrases ("Ankle boot" -> "ankle boot",
  "T-shirt/top" -> "t-shirt", ``golden_retriever`` -> "golden retriever").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from difflab.conditioning.text import TextEncoder

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Fields: {n} numeral, {word}, {a_n} / {a_word} with their article ("an 8", "an eight").
DIGIT_TEMPLATES: tuple[str, ...] = (
    "a handwritten {n}", "a handwritten {word}", "the digit {word}", "the digit {n}",
    "number {word}, written by hand", "number {n}", "{n}", "{word}", "a drawing of the number {n}",
    "an image of {a_word}", "digit: {n}", "handwritten digit {word}", "a scanned {n}",
    "the numeral {n}", "{a_word} written in ink", "a white {n} on a black background",
    "someone wrote the number {word}", "a photo of the digit {n}", "{word}, handwritten",
    "an MNIST digit: {word}", "the number {n}", "a sloppy {word}", "a neat handwritten {n}", "{a_n}",
    "a picture of {a_n}", "the handwritten digit {n}", "a quickly scribbled {word}",
    "{word} (the digit)", "a black and white image of the number {word}", "hand-drawn {n}",
    "a thick {n}", "a thin, slanted {word}", "label: {n}", "the figure {word}", "{a_word}",
    "write the number {n}", "digit {word} in pencil", "an old scan of {a_n}", "it is {a_word}",
    "a bold {word} drawn with a marker",
)
DIGIT_HELD_OUT: tuple[str, ...] = (
    "a picture of a handwritten {word}", "this is the number {word}", "I wrote {a_n}",
    "the handwritten numeral {word}", "{a_n} in someone's handwriting", "digit {n}, drawn with a pen",
    "a small image showing the digit {word}", "there is {a_word} here", "my handwriting: {n}",
    "a grayscale digit {word}", "a number written by hand: {word}", "the character {n}",
)

# Fields: {name} the class phrase, {a_name} with its article.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of {a_name}", "{a_name}", "{name}", "a picture of {a_name}", "an image of {a_name}",
    "a close-up photo of {a_name}", "a small photo of {a_name}", "a blurry photo of {a_name}",
    "a black and white photo of {a_name}", "a low-resolution image of {a_name}", "the {name}",
    "a photo of the {name}", "a product photo of {a_name}", "a cropped photo of {a_name}",
    "a bright photo of {a_name}", "a dark photo of {a_name}", "a good photo of {a_name}",
    "{name}, photographed", "a thumbnail of {a_name}", "a pixelated {name}", "an icon of {a_name}",
    "category: {name}", "this shows {a_name}", "{a_name} on a plain background",
)
OBJECT_HELD_OUT: tuple[str, ...] = (
    "a snapshot of {a_name}", "this is {a_name}", "a tiny picture showing {a_name}", "my {name}",
    "a jpeg of the {name}", "{a_name}, captured on camera", "look, {a_name}",
    "an old photograph of {a_name}",
)


@dataclass(frozen=True)
class TemplateSet:
    """Training templates and the held-out ones, over the fields of one kind of class names."""

    name: str
    train: tuple[str, ...]
    held_out: tuple[str, ...]


TEMPLATE_SETS: dict[str, TemplateSet] = {
    "digits": TemplateSet("digits", DIGIT_TEMPLATES, DIGIT_HELD_OUT),
    "objects": TemplateSet("objects", OBJECT_TEMPLATES, OBJECT_HELD_OUT),
}

# Class names of the built-in sets that read better as other phrases.
PHRASES = {"t-shirt/top": "t-shirt", "trouser": "pair of trousers", "automobile": "car"}


def template_set_for(class_names: Sequence[str]) -> str:
    """``digits`` when the classes are the ten digits, else ``objects``."""
    return "digits" if [str(c) for c in class_names] == [str(i) for i in range(10)] else "objects"


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou8" else "a"


def class_phrase(name: str) -> str:
    """How a class name reads in a caption: ``Ankle boot`` -> ``ankle boot``."""
    key = " ".join(name.replace("_", " ").split()).lower()
    return PHRASES.get(key, key)


def class_fields(template_set: str, name: str) -> dict[str, str]:
    """The template fields of one class."""
    if template_set == "digits":
        n = str(name)
        word = DIGIT_WORDS[int(n)]
        return {"n": n, "word": word, "a_n": f"{_article(n)} {n}", "a_word": f"{_article(word)} {word}"}
    phrase = class_phrase(name)
    return {"name": phrase, "a_name": f"{_article(phrase)} {phrase}"}


def _templates(template_set: str, held_out: bool) -> tuple[str, ...]:
    if template_set not in TEMPLATE_SETS:
        raise ValueError(f"unknown caption template set {template_set!r}; known: {', '.join(TEMPLATE_SETS)}")
    s = TEMPLATE_SETS[template_set]
    return s.held_out if held_out else s.train


def captions(template_set: str, class_names: Sequence[str], held_out: bool = False) -> list[list[str]]:
    """``out[k][c]``: template ``k`` of the set (training or held-out) filled in for class ``c``."""
    fields = [class_fields(template_set, c) for c in class_names]
    return [[t.format(**f) for f in fields] for t in _templates(template_set, held_out)]


def held_out_prompts(template_set: str, class_names: Sequence[str]) -> tuple[list[str], list[int]]:
    """Every held-out template for every class: (prompts, the class each names)."""
    table = captions(template_set, class_names, held_out=True)
    return [p for row in table for p in row], [c for row in table for c in range(len(row))]


def class_named(prompt: str, template_set: str, class_names: Sequence[str]) -> int:
    """The one class a prompt names (a digit's numeral or word; an object's phrase or name)."""
    text = prompt.lower()
    found = set()
    for c, name in enumerate(class_names):
        fields = class_fields(template_set, name)
        words = [fields["n"], fields["word"]] if template_set == "digits" else \
            [fields["name"], " ".join(str(name).replace("_", " ").split()).lower()]
        if any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text) for w in words):
            found.add(c)
    if len(found) != 1:
        what = "no class" if not found else "several classes (" + ", ".join(
            str(class_names[c]) for c in sorted(found)) + ")"
        raise ValueError(f"prompt {prompt!r} names {what}; each prompt must name one of: "
                         f"{', '.join(map(str, class_names))}")
    return found.pop()


@dataclass
class CaptionTable:
    """Every caption a run trains on, encoded once and kept on the training device.

    ``context`` [R + 1, L, D]: row ``k * C + c`` is training template ``k`` for class ``c`` (label
    captions) or row ``r`` the r-th distinct caption of a captions file; the last row is the empty
    prompt, the null condition. :meth:`draw` picks each sample's row with the run's generator."""

    captions: list[str]
    context: Tensor
    num_templates: int = 0
    num_classes: int = 0
    image_rows: Tensor | None = None

    @property
    def null_row(self) -> int:
        return len(self.captions)

    @classmethod
    def from_templates(cls, template_set: str, class_names: Sequence[str], encoder: TextEncoder,
                       device: torch.device | str = "cpu") -> CaptionTable:
        table = captions(template_set, class_names)
        flat = [p for row in table for p in row]
        states = encoder.encode([*flat, ""]).states.to(device)
        return cls(flat, states, num_templates=len(table), num_classes=len(class_names))

    @classmethod
    def from_captions(cls, per_image: Sequence[str], encoder: TextEncoder,
                      device: torch.device | str = "cpu") -> CaptionTable:
        distinct = sorted(set(per_image) - {""})
        row = {c: i for i, c in enumerate(distinct)}
        row[""] = len(distinct)
        states = encoder.encode([*distinct, ""]).states.to(device)
        image_rows = torch.tensor([row[c] for c in per_image], dtype=torch.long, device=device)
        return cls(distinct, states, image_rows=image_rows)

    def draw(self, b: int, labels: Tensor | None, indices: Tensor | None, drop_p: float,
             generator: torch.Generator) -> Tensor:
        """The contexts [b, L, D] of one batch: a random training template per sample for its
        class ``labels``, or the caption of each image ``indices`` names, replaced by the empty
        prompt with probability ``drop_p`` (Ho & Salimans 2022, Algorithm 1). Draws from
        ``generator``: template indices, then the dropout."""
        device = self.context.device
        if self.image_rows is not None:
            if indices is None:
                raise ValueError("captions from a file need the indices of the batch's images")
            rows = self.image_rows[indices.to(device)]
        else:
            if labels is None:
                raise ValueError("captions from templates need class labels")
            k = torch.randint(0, self.num_templates, (b,), generator=generator).to(device)
            rows = k * self.num_classes + labels.to(device)
        drop = torch.rand(b, generator=generator).to(device) < drop_p
        return self.context[torch.where(drop, self.null_row, rows)]
