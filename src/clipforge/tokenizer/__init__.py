"""Tokenizers: CLIP's byte-level BPE (exact and fast) and Hugging Face ``tokenizer.json`` files (SigLIP).

``create_tokenizer`` is the entry point; the model factory calls it with what the model's text config says.
"""
from __future__ import annotations

from clipforge.tokenizer.bpe import ClipTokenizer
from clipforge.tokenizer.clean import CLEAN_MODES, clean_text
from clipforge.tokenizer.hf import HFTokenizer
from clipforge.tokenizer.reduction import REDUCTIONS, get_reduction

__all__ = ["ClipTokenizer", "HFTokenizer", "create_tokenizer", "tokenize", "clean_text", "get_reduction",
           "CLEAN_MODES", "REDUCTIONS"]

DEFAULT_CLEAN = {"clip": "lower", "hf": "whitespace"}  # open_clip's defaults for each tokenizer family


def create_tokenizer(kind: str = "clip", *, context_length: int | None = None, max_context_length: int | None = None,
                     clean: str | None = None, reduction: str | None = None, cache_dir=None,
                     local_files_only: bool = False, **kwargs):
    """The tokenizer called ``kind``: "clip" for CLIP's BPE, otherwise a hub repo id or a local directory that
    holds a ``tokenizer.json``.

    ``context_length`` defaults to 77 for CLIP and 64 (SigLIP's) otherwise; ``max_context_length`` is the model's
    positional-embedding length, and asking for more raises. ``clean`` is one of open_clip's clean modes (default
    "lower" for CLIP, "whitespace" otherwise, "canonicalize" for SigLIP). ``reduction`` selects a training-time
    shortening strategy (CLIP only). Other keyword arguments go to the tokenizer class (``vocab_path`` for CLIP,
    ``strip_sep_token`` for hub tokenizers).
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind must be 'clip', a hub repo id or a directory, got {kind!r}")
    family = "clip" if kind == "clip" else "hf"
    common = dict(max_context_length=max_context_length, clean=clean or DEFAULT_CLEAN[family])
    if context_length is not None:
        common["context_length"] = context_length
    if family == "clip":
        return ClipTokenizer(reduction=reduction, **common, **kwargs)
    if reduction:
        raise ValueError(f"reduction {reduction!r} is only available for the CLIP tokenizer, not for '{kind}'")
    return HFTokenizer(kind, cache_dir=cache_dir, local_files_only=local_files_only, **common, **kwargs)


_DEFAULT: dict[int, ClipTokenizer] = {}


def tokenize(texts, context_length: int = 77):
    """open_clip's ``tokenize``: CLIP BPE ids of ``texts`` (a string or a list of them) as a (N, context_length)
    LongTensor, start and end tokens included, truncated to the context (one tokenizer per length, reused)."""
    if context_length not in _DEFAULT:
        _DEFAULT[context_length] = ClipTokenizer(context_length=context_length)
    return _DEFAULT[context_length](texts)
