"""Tokenizers stored as Hugging Face ``tokenizer.json`` files (SigLIP and other hub-hosted text towers).

The files come from a local directory or a hub repo (downloaded once into the hub cache, then read offline). The
``tokenizers`` library runs them directly, with the padding, truncation and special-token choices that
open_clip's ``HFTokenizer`` gets from ``transformers``: pad to the context length on the tokenizer's padding
side, truncate leaving room for the tokens its post-processor adds, optionally replace the separator with 0.
"""
from __future__ import annotations

import json
import os

import numpy as np
from tokenizers import Tokenizer

from clipforge.tokenizer._inputs import as_text_list, check_context_length
from clipforge.tokenizer.clean import get_clean_fn

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
MODEL_CONFIG_FILE = "config.json"  # the model's config: its model_type names the tokenizer class transformers picks

# transformers fills the special tokens a tokenizer's files leave out from its tokenizer class's defaults
# (bert-base-uncased, the CLIPA text tokenizer, declares neither its pad nor its separator token). The families
# open_clip's text towers use, by tokenizer class (without "Fast") or by the model config's model_type:
_FAMILY_DEFAULTS = {
    "bert": {"pad_token": "[PAD]", "sep_token": "[SEP]"},
    "roberta": {"pad_token": "<pad>", "sep_token": "</s>"},
    "t5": {"pad_token": "<pad>"},
}
_FAMILY_OF = {"bert": "bert", "berttokenizer": "bert", "roberta": "roberta", "robertatokenizer": "roberta",
              "xlm-roberta": "roberta", "xlmrobertatokenizer": "roberta", "nllbtokenizer": "roberta",
              "m2m_100": "roberta", "t5": "t5", "t5tokenizer": "t5", "mt5": "t5", "mt5tokenizer": "t5"}
HUB_PREFIX = "hf-hub:"


def _download(repo_id: str, filename: str, cache_dir, local_files_only: bool, required: bool) -> str | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=local_files_only)
    except LocalEntryNotFoundError as e:
        if not required:
            return None
        raise FileNotFoundError(
            f"{filename} of tokenizer repo '{repo_id}' is not in the Hugging Face cache "
            f"({cache_dir or 'default cache'}) and downloading is off (local_files_only or HF_HUB_OFFLINE=1); "
            "run once with network access, or pass a local directory that holds the file") from e
    except EntryNotFoundError as e:
        if not required:
            return None
        raise FileNotFoundError(f"tokenizer repo '{repo_id}' has no {filename}; clipforge reads tokenizers "
                                f"saved in the `tokenizers` format ({TOKENIZER_FILE})") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"tokenizer repo '{repo_id}' was not found on the Hugging Face hub "
                                "(check the name, or log in if it is private)") from e


def resolve_files(name: str, cache_dir=None, local_files_only: bool = False) -> dict[str, str | None]:
    """Paths of ``tokenizer.json`` (required) and the optional config files, from a directory or a hub repo."""
    name = name[len(HUB_PREFIX):] if name.startswith(HUB_PREFIX) else name
    names = (TOKENIZER_FILE, *CONFIG_FILES, MODEL_CONFIG_FILE)
    if os.path.isdir(name):
        paths = {f: os.path.join(name, f) for f in names}
        if not os.path.isfile(paths[TOKENIZER_FILE]):
            raise FileNotFoundError(f"{name} holds no {TOKENIZER_FILE}; save the tokenizer there with "
                                    "`tokenizers.Tokenizer.save` or point at a hub repo id")
        return {f: p if os.path.isfile(p) else None for f, p in paths.items()}
    return {f: _download(name, f, cache_dir, local_files_only, required=f == TOKENIZER_FILE) for f in names}


def _read_json(path: str | None) -> dict:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token_text(value) -> str | None:
    # Special tokens are saved either as plain strings or as serialized AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value


def _family_defaults(configs: list[dict], model_config: dict) -> dict:
    """The special tokens transformers' tokenizer class would supply where the files are silent (lowest precedence)."""
    name = str(_setting("tokenizer_class", configs) or model_config.get("model_type") or "").lower()
    name = name[:-len("fast")] if name.endswith("fast") else name
    return dict(_FAMILY_DEFAULTS.get(_FAMILY_OF.get(name, ""), {}))


def _setting(key: str, configs: list[dict]):
    for config in configs:
        if config.get(key) is not None:
            return config[key]
    return None


class HFTokenizer:
    """A ``tokenizer.json`` tokenizer: ``tok(texts) -> (N, context_length)`` LongTensor, padded and truncated."""

    def __init__(self, name: str, *, context_length: int = 64, max_context_length: int | None = None,
                 clean: str = "whitespace", strip_sep_token: bool = False, cache_dir=None,
                 local_files_only: bool = False):
        self.name = name
        self.max_context_length = max_context_length
        self.context_length = check_context_length(context_length, max_context_length)
        self.clean_mode = clean
        self._clean = get_clean_fn(clean)
        self.strip_sep_token = strip_sep_token
        files = resolve_files(name, cache_dir=cache_dir, local_files_only=local_files_only)
        self._tokenizer = Tokenizer.from_file(files[TOKENIZER_FILE])
        configs = [_read_json(files[f]) for f in CONFIG_FILES]
        configs.append(_family_defaults(configs, _read_json(files.get(MODEL_CONFIG_FILE))))
        self._configure_specials(configs)
        self._length = None

    def _configure_specials(self, configs: list[dict]) -> None:
        # Precedence as in transformers: tokenizer_config.json, special_tokens_map.json, then tokenizer.json itself.
        padding = self._tokenizer.padding or {}
        truncation = self._tokenizer.truncation or {}
        self.pad_token = _token_text(_setting("pad_token", configs)) or padding.get("pad_token")
        self.sep_token = _token_text(_setting("sep_token", configs))
        self.padding_side = _setting("padding_side", configs) or padding.get("direction") or "right"
        self.truncation_side = _setting("truncation_side", configs) or truncation.get("direction") or "right"
        self.pad_token_id = self._token_id(self.pad_token, "pad_token")
        self.sep_token_id = self._token_id(self.sep_token, "sep_token") if self.sep_token else None
        if self.pad_token_id is None:
            raise ValueError(f"tokenizer '{self.name}' defines no pad token, so it cannot pad to a fixed "
                             "context length; add \"pad_token\" to its tokenizer_config.json")
        if self.strip_sep_token and self.sep_token_id is None:
            raise ValueError(f"strip_sep_token=True but tokenizer '{self.name}' defines no sep_token")
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _token_id(self, token: str | None, role: str) -> int | None:
        if token is None:
            return None
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer '{self.name}': its {role} {token!r} is not in the vocabulary")
        return token_id

    def __repr__(self) -> str:
        return (f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, context_length={self.context_length}, "
                f"clean={self.clean_mode!r})")

    def _set_length(self, length: int) -> None:
        if self._length == length:
            return
        self._tokenizer.enable_truncation(max_length=length, strategy="longest_first", direction=self.truncation_side)
        self._tokenizer.enable_padding(length=length, pad_id=self.pad_token_id, pad_token=self.pad_token,
                                       direction=self.padding_side)
        self._length = length

    def __call__(self, texts, context_length: int | None = None):
        """``(N, context_length)`` LongTensor of ids with the tokenizer's own special tokens, padded."""
        import torch  # imported here so that the torch-free runtime can use ``numpy``

        return torch.from_numpy(self.numpy(texts, context_length))

    def numpy(self, texts, context_length: int | None = None) -> np.ndarray:
        """The same ids as ``__call__``, as an int64 numpy array."""
        texts = [self._clean(text) for text in as_text_list(texts)]
        if context_length is None:
            context_length = self.context_length
        check_context_length(context_length, self.max_context_length)
        self._set_length(context_length)
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=True)
        tokens = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), context_length)
        if self.strip_sep_token:
            tokens[tokens == self.sep_token_id] = 0
        return tokens

    def encode(self, text: str) -> list[int]:
        """Ids of one cleaned text, without special tokens, padding or truncation."""
        if not isinstance(text, str):
            as_text_list(text)
            raise TypeError(f"encode takes one str, got {type(text).__name__}")
        self._length = None
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        return self._tokenizer.encode(self._clean(text), add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        if hasattr(ids, "dim"):  # a torch tensor
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence of ids (1-D), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
