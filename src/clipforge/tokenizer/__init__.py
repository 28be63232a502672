"""Tokenizers: CLIP's byte-level BPE (exact and fast) and an adapter for Hugging Face ``tokenizers`` files."""
from clipforge.tokenizer.bpe import ClipTokenizer

__all__ = ["ClipTokenizer"]
