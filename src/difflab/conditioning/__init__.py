"""What a model is conditioned on: class labels (:mod:`.classes`) and, through a frozen text
encoder, prompts. Each kind gives the network's keyword inputs for a batch and the null
condition it was trained with, which classifier-free guidance uses as its unconditional branch."""

from difflab.conditioning.classes import ClassCondition, parse_classes

__all__ = ["ClassCondition", "parse_classes"]
