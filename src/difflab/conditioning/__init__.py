"""What a model is conditioned on: class labels (:mod:`.classes`) and, through a frozen text
encoder, prompts (:mod:`.text`, with captions made from labels or read from files in
:mod:`.captions`). Each kind gives the network's keyword inputs for a batch and the null
condition it was trained with, which classifier-free guidance uses as its unconditional branch."""

from difflab.conditioning.classes import ClassCondition, parse_classes
from difflab.conditioning.text import TextCondition, TextConfig, TextEncoder, get_encoder

__all__ = ["ClassCondition", "TextCondition", "TextConfig", "TextEncoder", "get_encoder", "parse_classes"]
