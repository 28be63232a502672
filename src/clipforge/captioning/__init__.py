"""Captioning with CoCa models: decoding (greedy, beam search, top-k / top-p sampling) and caption metrics.

``generate(model, images, method="beam")`` returns one caption per image; ``clipforge caption`` is its command.
``clipforge.captioning.metrics`` scores captions against references (CIDEr, BLEU-4; needs the ``caption`` extra).
"""
from clipforge.captioning.config import METHODS, GenerationConfig
from clipforge.captioning.generate import NotACaptioner, check_captioner, generate, generate_tokens

__all__ = ["METHODS", "GenerationConfig", "NotACaptioner", "check_captioner", "generate", "generate_tokens"]
