"""Input checks shared by the tokenizers: what callers may pass, and the error when they pass something else."""
from __future__ import annotations

_ACCEPTED = "a str or a list/tuple of str"


def as_text_list(texts) -> list[str]:
    """``texts`` as a list of str; a clear TypeError for anything else (None, numbers, bytes, nested lists)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError(f"the tokenizer takes {_ACCEPTED}, got bytes; decode them first, e.g. data.decode('utf-8')")
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"the tokenizer takes {_ACCEPTED}, got {type(texts).__name__}")
    if set(map(type, texts)) <= {str}:  # the common case, checked at C speed
        return list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            hint = "; decode bytes first, e.g. data.decode('utf-8')" if isinstance(text, (bytes, bytearray)) else ""
            raise TypeError(f"the tokenizer takes {_ACCEPTED}, but item {i} is {type(text).__name__}{hint}")
    return list(texts)


def check_context_length(context_length, max_context_length: int | None, minimum: int = 1) -> int:
    """A valid context length: an int >= ``minimum`` that the model's positional embedding can hold."""
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise TypeError(f"context_length must be an int, got {type(context_length).__name__}")
    if context_length < minimum:
        raise ValueError(f"context_length must be at least {minimum}, got {context_length}")
    if max_context_length is not None and context_length > max_context_length:
        raise ValueError(
            f"context_length {context_length} is longer than the model's positional embedding "
            f"({max_context_length} positions); use context_length <= {max_context_length}"
        )
    return context_length
