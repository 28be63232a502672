"""``GenerationConfig``: how captions are decoded. Frozen and validated on construction, like the other configs."""
from __future__ import annotations

import dataclasses
from typing import Literal

from clipforge.config import ConfigError

METHODS = ("greedy", "beam", "top_k", "top_p")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Decoding options.

    method: "greedy" (most likely token), "beam" (beam search over ``num_beams`` hypotheses), "top_k" / "top_p"
        (sampling from the ``top_k`` most likely tokens / the smallest set holding ``top_p`` of the probability).
    max_length: most tokens in a caption *including* the start and end tokens (open_clip's ``seq_len``); at
        ``max_length - 1`` the end token is forced. min_length: the end is banned while the sequence (start token
        included) is shorter than this (open_clip's ``min_seq_len``); at or above max_length, every caption runs to
        max_length.
    temperature: divides the logits before sampling. repetition_penalty: > 1 makes tokens already in the caption
        less likely (divides positive logits, multiplies negative ones); 1 is off. length_penalty: beam scores are
        the summed log-probabilities divided by length ** length_penalty.
    seed: seeds sampling (a private generator: the global random state is left alone); None draws from torch's.
    """

    method: Literal["greedy", "beam", "top_k", "top_p"] = "beam"
    max_length: int = 30
    min_length: int = 5
    num_beams: int = 6
    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown generation method '{self.method}'; use one of {', '.join(METHODS)}")
        if not 2 <= self.max_length:
            raise ConfigError(f"max_length must be >= 2 (start and end tokens), got {self.max_length}")
        if self.min_length < 0:
            raise ConfigError(f"min_length must be >= 0, got {self.min_length}")
        if self.num_beams < 1 or self.top_k < 1:
            raise ConfigError(f"num_beams and top_k must be >= 1, got {self.num_beams} and {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0 or self.repetition_penalty <= 0:
            raise ConfigError("temperature and repetition_penalty must be > 0")
