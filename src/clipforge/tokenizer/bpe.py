"""The CLIP byte-level BPE tokenizer (49,408 ids), id-for-id identical to open_clip's ``SimpleTokenizer``.

A caption goes through four stages:

1. cleaning (``clean.py``): ftfy repair only where it can change the text, HTML unescaping, whitespace, case;
2. pre-tokenization with CLIP's regex (the ``regex`` module, or an equivalent stdlib pattern on ASCII text);
3. BPE per word, through a word -> ids table seeded with the vocabulary's whole words; the words it lacks are
   joined with spaces and encoded by one call to a Rust ``tokenizers`` BPE configured as CLIP's (byte-level
   alphabet, ``</w>`` suffix, same merge ranks), then split back at the end-of-word ids;
4. sot + ids + eot, truncated with eot kept in the last position, packed into a ``(N, L)`` LongTensor.

Cleaned text is single-spaced and no pre-token spans a space, so each space-separated chunk ("dog,") can be
encoded once and cached: a chunk cache skips stages 2 and 3 for chunks seen before. Captions that need no repair
(nearly all) are cleaned, split and looked up as one stream for the whole batch, through flat id tables
(``_idtable.py``) and numpy, with no Python loop per caption, chunk or new word; the others (ftfy repairs, HTML
entities) are cleaned one caption at a time, remembered per caption, and join the same stream as cleaned text.
Small batches and other clean modes go through the same steps one caption at a time, with a dict as chunk cache,
and one caption per call takes a lean version of that path. The seeded tables are built once per process and
copied into each tokenizer.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import gzip
import os
import re
from importlib import resources
from itertools import accumulate, chain, repeat

import numpy as np
import regex
from tokenizers import Tokenizer, models, pre_tokenizers

from clipforge.tokenizer._idtable import IdTable
from clipforge.tokenizer._inputs import as_text_list, check_context_length
from clipforge.tokenizer.clean import BULK_MODES, SEPARATOR, bulk_chunks, fast_path_flags, get_chunk_fn
from clipforge.tokenizer.reduction import get_reduction, truncate_ids

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP was trained with; the file holds more
EOW = "</w>"

# CLIP's pre-tokenizer. The special tokens come first so that a caption quoting them yields their ids, as in CLIP.
_WORD_RE = regex.compile(
    "<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+",
    regex.IGNORECASE,
)
# The same split for ASCII text, in the faster stdlib engine: on ASCII, \p{L} is [A-Za-z], \p{N} is [0-9] and the
# regex module's \s is [\t\n\v\f\r ] (stdlib's \s would also take \x1c-\x1f, hence the explicit class).
_ASCII_WORD_RE = re.compile(
    "<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[A-Za-z]+|[0-9]|[^\t\n\x0b\x0c\r A-Za-z0-9]+",
    re.IGNORECASE,
)
_CACHE_LIMIT = 1_000_000  # entries per cache; reset when full, so an endless stream of rare words is harmless
_WORDS_PER_PIECE = 2048
# Below this many texts the per-text path (dict lookups, no numpy) is faster than the batched stream: one caption at
# a time is how a training pipeline's dataset calls the tokenizer.
_STREAM_MIN_TEXTS = 16
_FEW = 64  # fewer new words or chunks than this are learnt in plain Python
_CLEANED_CHARS_LIMIT = 1 << 22  # characters (texts and cleaned texts) the cache of repaired texts may hold (~10 MB)
_clean_whitespace_chunks = get_chunk_fn("whitespace")


def default_vocab_path() -> str:
    return str(resources.files("clipforge.tokenizer") / VOCAB_FILE)


def _split_words(chunk: str) -> list[str]:
    """CLIP's pre-tokens of one space-free chunk of cleaned text."""
    if chunk.isascii():
        # An all-letter ASCII chunk is one pre-token: no other alternative of the regex starts with a letter.
        return [chunk] if chunk.isalpha() else _ASCII_WORD_RE.findall(chunk)
    return _WORD_RE.findall(chunk)


def _leading_chunks(to_chunks, text: str, count: int) -> list[str]:
    """``to_chunks(text)[:count]``, cleaning only as many whole lines of a long text as that takes.

    Cleaning works line by line (ftfy repairs each line alone, and no HTML entity, whitespace run or case rule
    reaches across a newline), so the chunks of a text's first lines are the first chunks of the whole text.
    """
    if len(text) <= 8 * count:
        return to_chunks(text)[:count]
    end = 8 * count
    while True:
        cut = text.find("\n", end) + 1
        if cut == 0:
            return to_chunks(text)[:count]
        chunks = to_chunks(text[:cut])
        if len(chunks) >= count:
            return chunks[:count]
        end = 2 * cut


@functools.lru_cache()
def byte_alphabet() -> dict[int, str]:
    """Byte -> printable character, the reversible map that lets BPE run on text without whitespace or controls.

    Insertion order matters: the first 256 vocabulary ids follow it (bytes that are printable Latin-1 first, keeping
    their own character, then the other 68 bytes, moved to U+0100 onwards).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return mapping


@functools.lru_cache(maxsize=4)
def load_vocab(path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges in rank order) from a CLIP merges file (gzipped text, one merge per line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLIP BPE vocabulary not found at {path}; the package data file {VOCAB_FILE} "
                                "ships with clipforge, so reinstall it or pass the path of a copy")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a version header
    bad = [i for i, m in enumerate(merges) if len(m) != 2]
    if len(merges) != NUM_MERGES or bad:
        raise ValueError(f"{path} is not a CLIP merges file: expected {NUM_MERGES} pairs after the header")
    alphabet = list(byte_alphabet().values())
    tokens = alphabet + [c + EOW for c in alphabet] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def _is_shipped_vocab(path: str) -> bool:
    """True when ``path`` holds the same bytes as the shipped vocabulary (a copy, e.g. in an ONNX bundle): its
    whole-word table is known to be exact, so the check a custom vocabulary needs is skipped."""
    shipped = default_vocab_path()
    try:
        if os.path.getsize(path) != os.path.getsize(shipped):
            return False
        with open(path, "rb") as a, open(shipped, "rb") as b:
            return a.read() == b.read()
    except OSError:
        return False


@functools.lru_cache(maxsize=4)
def whole_word_ids(path: str, verify: bool) -> dict[str, tuple[int]]:
    """Words whose BPE is one vocabulary token, read straight from the vocabulary: ``"photo" -> (1125,)``.

    A token ``w</w>`` is the BPE of the word ``w`` only if the merge order actually builds it, which BPE does not
    promise in general. For the shipped vocabulary every one of its 34,483 whole-word tokens is built this way (a
    test checks all of them); a custom vocabulary is checked here, once, and tokens that fail are left out.
    """
    vocab, merges = load_vocab(path)
    byte_of = {c: b for b, c in byte_alphabet().items()}
    words = {}
    for token, token_id in vocab.items():
        if token.endswith(EOW) and len(token) > len(EOW):
            try:
                words[bytes(byte_of[c] for c in token[:-len(EOW)]).decode("utf-8")] = (token_id,)
            except UnicodeDecodeError:  # a token holding part of a multi-byte character is never a whole word
                continue
    if verify:
        rust = _rust_bpe(vocab, merges)
        batch = list(words)
        for word, encoding in zip(batch, rust.encode_batch_fast(batch, add_special_tokens=False)):
            if tuple(encoding.ids) != words[word]:
                del words[word]
    return words


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector: a batch allocates ~10 lists per caption and creates no cycles, yet the
    allocations trigger full collections over the large caches, a third of the time of a cold batch."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _rust_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], cache_capacity: int = 10_000) -> Tokenizer:
    """A ``tokenizers`` pipeline that encodes one pre-split word the way CLIP's BPE does."""
    tokenizer = Tokenizer(models.BPE(vocab, merges, end_of_word_suffix=EOW, cache_capacity=cache_capacity))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return tokenizer


def _rust_stream_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A ``tokenizers`` pipeline for many pre-split words in one string, separated by single spaces: each word is
    encoded as ``_rust_bpe`` encodes it alone, except the special tokens, which keep their own ids.

    No pre-token holds a space (they come from space-separated chunks), and a special token is only ever a whole
    pre-token (no other alternative of CLIP's regex can hold ``<`` together with letters), so splitting on spaces and
    extracting the special tokens gives back exactly the words.
    """
    tokenizer = _rust_bpe(vocab, merges, cache_capacity=0)  # it only ever sees words not seen before
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.add_special_tokens([SOT_TOKEN, EOT_TOKEN])
    return tokenizer


@functools.lru_cache(maxsize=4)
def _seed_words(path: str, verify: bool) -> dict[str, tuple[int, ...]]:
    """Words known without running BPE: every whole-word vocabulary entry, and the special tokens."""
    vocab, _ = load_vocab(path)
    return {**whole_word_ids(path, verify), SOT_TOKEN: (vocab[SOT_TOKEN],), EOT_TOKEN: (vocab[EOT_TOKEN],)}


@functools.lru_cache(maxsize=4)
def _seed_chunk_ids(path: str, verify: bool) -> dict[str, tuple[int, ...]]:
    """The seed words that are also one pre-token, hence a whole chunk: "photo", not "2019" (four digits)."""
    return {word: ids for word, ids in _seed_words(path, verify).items() if _split_words(word) == [word]}


@functools.lru_cache(maxsize=4)
def _seed_tables(path: str, verify: bool) -> tuple[IdTable, IdTable]:
    """(word table, chunk table) of the seeds, built once per process; each tokenizer works on copies."""
    chunk_table = IdTable.from_dict(_seed_chunk_ids(path, verify), reserved=SEPARATOR)  # "\x01" is a seed word
    return IdTable.from_dict(_seed_words(path, verify)), chunk_table


class ClipTokenizer:
    """CLIP's tokenizer: ``tok(texts) -> (N, context_length)`` LongTensor, identical ids to open_clip's."""

    def __init__(self, vocab_path: str | None = None, *, context_length: int = 77,
                 max_context_length: int | None = None, clean: str = "lower", reduction: str | None = None):
        self.max_context_length = max_context_length
        self.context_length = check_context_length(context_length, max_context_length, minimum=2)
        self.clean_mode = clean
        self._chunks = get_chunk_fn(clean)
        self.reduction = reduction
        self._reduce = get_reduction(reduction) if reduction else None
        path = vocab_path or default_vocab_path()
        verify = vocab_path is not None and not _is_shipped_vocab(vocab_path)
        vocab, merges = load_vocab(path)
        self._rust = _rust_stream_bpe(vocab, merges)
        # Ids that end a word: "</w>" tokens, and the special tokens (always whole words, without "</w>").
        self._ends_word = np.array([t.endswith(EOW) or t in (SOT_TOKEN, EOT_TOKEN) for t in vocab], dtype=bool)
        self._alphabet = [byte_alphabet()[b] for b in range(256)]  # byte value -> its character in the BPE alphabet
        self._id_to_token = list(vocab)
        self._byte_of = {c: b for b, c in byte_alphabet().items()}
        self.vocab_size = len(vocab)
        self.sot_token_id = vocab[SOT_TOKEN]
        self.eot_token_id = vocab[EOT_TOKEN]
        self.all_special_ids = [self.sot_token_id, self.eot_token_id]
        # Three caches, all seeded from the vocabulary: word -> ids (a table), space-separated chunk of cleaned
        # text -> ids, as a dict for the per-text path and as a table for the batched path.
        self._seed_chunks = _seed_chunk_ids(path, verify)
        self._chunk_ids: dict[str, tuple[int, ...]] = dict(self._seed_chunks)
        self._seed_word_table, self._seed_chunk_table = _seed_tables(path, verify)
        self._words, self._table = self._seed_word_table.copy(), self._seed_chunk_table.copy()
        # (text, chunks kept) -> its cleaned stand-in in the batched stream, for the texts that need repair.
        self._cleaned: dict[tuple[str, int], str] = {}
        self._cleaned_chars = 0

    def __repr__(self) -> str:
        return (f"ClipTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, "
                f"clean={self.clean_mode!r}, reduction={self.reduction!r})")

    def _bpe_words(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(number of ids of each word, all their ids one word after the other), from one Rust call."""
        # A few strings rather than one, so that ``tokenizers`` can spread them over its threads.
        pieces = [" ".join(words[i:i + _WORDS_PER_PIECE]) for i in range(0, len(words), _WORDS_PER_PIECE)]
        encodings = self._rust.encode_batch_fast(pieces, add_special_tokens=False) if pieces else []
        ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64)  # (T,)
        word_ends = np.flatnonzero(self._ends_word[ids]) + 1  # (W,) end of each word's ids in ``ids``
        if len(word_ends) != len(words):
            raise RuntimeError("internal error: the Rust BPE did not return one end-of-word token per word")
        return np.diff(word_ends, prepend=0), ids

    def _learn_words(self, words: set[str]) -> None:
        """BPE-encode the ``words`` that the word table lacks, and add them to it."""
        missing = words.difference(self._words.index)
        if len(self._words) + len(missing) > _CACHE_LIMIT:
            self._words = self._seed_word_table.copy()
            missing = words.difference(self._words.index)
        missing = list(missing)
        if len(missing) < _FEW:
            self._learn_few_words(missing)
        else:
            self._words.extend(missing, *self._bpe_words(missing))

    def _learn_few_words(self, words: list[str]) -> None:
        """``_learn_words`` for a handful of words, in plain Python, each word through the Rust BPE model directly:
        a pipeline call costs more than the BPE of a few words, and numpy's per-call cost would dominate too."""
        for word in words:
            self._words.append(word, self._bpe_word(word))

    def _bpe_word(self, word: str) -> list[int]:
        """The ids of one word, from the Rust BPE model alone (no pipeline)."""
        if not (word.isascii() and word.isprintable()) or " " in word:
            word = "".join(map(self._alphabet.__getitem__, word.encode()))
        # else: the byte alphabet maps "!".."~" to themselves, so the word is already spelled in it
        return [token.id for token in self._rust.model.tokenize(word)]

    def _bpe_chunks(self, chunks: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(number of ids of each chunk, all their ids one chunk after the other), through the word table: the
        words it lacks are encoded by one Rust call, the others gathered by numpy, without a Python loop."""
        words_of = list(map(_split_words, chunks))
        words = list(chain.from_iterable(words_of))
        self._learn_words(set(words))
        ids, word_lengths = self._words.gather(self._words.rows(words))  # (T,), (W,)
        words_until = np.cumsum(np.fromiter(map(len, words_of), dtype=np.int64, count=len(chunks)))  # (C,)
        ends = np.concatenate([np.zeros(1, np.int64), np.cumsum(word_lengths)])[words_until]  # (C,) end in ids
        return np.diff(ends, prepend=0), ids

    def _learn_chunks(self, chunks: set[str]) -> None:
        """Add ``chunks`` (not yet cached) to the per-text path's chunk dict: many through the batched word
        table, a few (one caption's new chunks) in one plain loop, each new word straight through the Rust model."""
        chunks = list(chunks)
        if len(chunks) >= _FEW:
            lengths, ids = self._bpe_chunks(chunks)
            ids, bounds = ids.tolist(), list(accumulate(lengths.tolist(), initial=0))
            self._chunk_ids.update(zip(chunks, (tuple(ids[a:b]) for a, b in zip(bounds, bounds[1:]))))
            return
        words = self._words
        if len(words) + sum(map(len, chunks)) > _CACHE_LIMIT:  # a chunk of n characters holds at most n words
            words = self._words = self._seed_word_table.copy()
        index, starts, lengths, store, chunk_ids = words.index, words.starts, words.lengths, words.ids, self._chunk_ids
        for chunk in chunks:
            ids = []
            for word in _split_words(chunk):
                row = index.get(word)
                if row is None:
                    new = self._bpe_word(word)
                    words.append(word, new)
                    ids += new
                else:
                    start = starts[row]
                    ids += store[start:start + lengths[row]]
            chunk_ids[chunk] = tuple(ids)

    def _resolve(self, rows: list, pending: list[int]) -> None:
        """Replace the chunk lists at ``pending`` by ids, filling both caches for the chunks not seen before."""
        chunk_ids = self._chunk_ids
        missing = {chunk for i in pending for chunk in rows[i] if chunk not in chunk_ids}
        if len(chunk_ids) + len(missing) > _CACHE_LIMIT:
            chunk_ids = self._chunk_ids = dict(self._seed_chunks)
            missing = {chunk for i in pending for chunk in rows[i] if chunk not in chunk_ids}
        self._learn_chunks(missing)
        for i in pending:
            rows[i] = list(chain.from_iterable(map(chunk_ids.__getitem__, rows[i])))

    def encode_batch(self, texts) -> list[list[int]]:
        """Ids of each caption, without start/end tokens."""
        texts = as_text_list(texts)
        with _gc_paused():
            return self._encode_batch(texts)

    def _encode_batch(self, texts: list[str], max_chunks: int | None = None) -> list[list[int]]:
        """Ids of each text; with ``max_chunks``, of its first ``max_chunks`` chunks only (each chunk gives at
        least one id, so these hold every id that fits in a context of ``max_chunks``)."""
        to_chunks, chunk_ids = self._chunks, self._chunk_ids
        rows: list = []
        pending = []  # rows that still hold chunks, some of them not in the cache yet
        for text in texts:
            # Cleaned text is single-spaced and no pre-token spans a space, so space-separated chunks can be
            # encoded (and cached) independently: most chunks are common words seen before.
            chunks = to_chunks(text) if max_chunks is None else _leading_chunks(to_chunks, text, max_chunks)
            try:
                rows.append(list(chain.from_iterable(map(chunk_ids.__getitem__, chunks))))
            except KeyError:
                pending.append(len(rows))
                rows.append(chunks)
        if pending:
            self._resolve(rows, pending)
        return rows

    def encode(self, text: str) -> list[int]:
        """Ids of one caption, without start/end tokens."""
        if not isinstance(text, str):
            as_text_list(text)  # raises the TypeError that names what is accepted
            raise TypeError(f"encode takes one str, got {type(text).__name__}; use encode_batch for a list")
        return self.encode_batch([text])[0]

    def __call__(self, texts, context_length: int | None = None):
        """``(N, context_length)`` LongTensor: sot, ids, eot, zero padding; eot stays last when truncated."""
        import torch  # imported here so that the torch-free runtime can use ``numpy``

        return torch.from_numpy(self.numpy(texts, context_length))

    def numpy(self, texts, context_length: int | None = None) -> np.ndarray:
        """The same ids as ``__call__``, as an int64 numpy array."""
        if context_length is None:
            context_length = self.context_length
        check_context_length(context_length, self.max_context_length, minimum=2)
        if type(texts) is str and self._reduce is None:  # one caption per call, as a dataset calls it
            return self._encode_one(texts, context_length)
        texts = as_text_list(texts)
        if self._reduce is not None:
            return self._reduce(texts, context_length, self.sot_token_id, self.eot_token_id, self.encode_batch)
        with _gc_paused():
            return self._encode_packed(texts, context_length)

    def _encode_one(self, text: str, context_length: int) -> np.ndarray:
        """``(1, L)`` ids of one caption: the per-text path without its batch machinery (no list of rows, no set
        of missing chunks, no generic packing), as the fixed cost per call is a large share of a short caption.
        The same chunks and the same chunk cache as ``_encode_batch``, so the same ids."""
        keep = context_length - 2
        chunks = _leading_chunks(self._chunks, text, keep)
        chunk_ids = self._chunk_ids
        try:
            ids = list(chain.from_iterable(map(chunk_ids.__getitem__, chunks)))
        except KeyError:
            was_enabled = gc.isenabled()  # see _gc_paused; a context manager costs more than the rest of a call
            gc.disable()
            try:
                ids = self._learn_row(chunks)
            finally:
                if was_enabled:
                    gc.enable()
        n = len(ids) if len(ids) <= keep else keep
        out = np.zeros((1, context_length), dtype=np.int64)
        out[0, 0] = self.sot_token_id
        if n:
            out[0, 1:n + 1] = ids[:n]
        out[0, n + 1] = self.eot_token_id
        return out

    def _learn_row(self, chunks: list[str]) -> list[int]:
        """The ids of one text's chunks, learning the chunks the chunk dict lacks (``_resolve`` for one row, the
        missing chunks found by one set difference)."""
        chunk_ids = self._chunk_ids
        missing = set(chunks).difference(chunk_ids)
        if len(chunk_ids) + len(missing) > _CACHE_LIMIT:
            chunk_ids = self._chunk_ids = dict(self._seed_chunks)
            missing = set(chunks).difference(chunk_ids)
        self._learn_chunks(missing)
        return list(chain.from_iterable(map(chunk_ids.__getitem__, chunks)))

    def _encode_packed(self, texts: list[str], context_length: int) -> np.ndarray:
        """``(N, L)`` ids: the batched stream path, where texts that need repair (ftfy, HTML entities) stand as
        their cleaned text; small batches and the canonicalize mode take the per-text path."""
        if self.clean_mode not in BULK_MODES or len(texts) < _STREAM_MIN_TEXTS:
            rows = self._encode_batch(texts, max_chunks=context_length - 2)
            return truncate_ids(rows, context_length, self.sot_token_id, self.eot_token_id)
        fast = fast_path_flags(texts)
        if all(fast):
            return self._encode_stream(texts, context_length)
        # The others are cleaned here and join the stream as their cleaned text; the rare one whose cleaned text
        # holds the separator stands in as an empty text, and its row is overwritten.
        stand_ins, leftover = list(texts), []
        for i in [i for i, ok in enumerate(fast) if not ok]:
            stand_ins[i] = self._stream_text(texts[i], context_length - 2)
            if stand_ins[i] is None:
                stand_ins[i] = ""
                leftover.append(i)
        out = self._encode_stream(stand_ins, context_length)
        if leftover:
            rows = self._encode_batch([texts[i] for i in leftover], max_chunks=context_length - 2)
            out[leftover] = truncate_ids(rows, context_length, self.sot_token_id, self.eot_token_id)
        return out

    def _stream_text(self, text: str, max_chunks: int) -> str | None:
        """What stands in the stream for a text that needs repair: its first ``max_chunks`` chunks cleaned in
        "whitespace" mode, which ``bulk_chunks`` turns into the chunks of this tokenizer's mode (in "lower" mode
        it lower-cases them, and "lower" is "whitespace" then ``str.lower``, which never makes or removes a
        space). None when the cleaned text holds the separator. Remembered per text: repairs are costly, and
        a training epoch or a classifier's prompts bring the same texts again."""
        key = (text, max_chunks)
        cleaned = self._cleaned.get(key)
        if cleaned is None:
            cleaned = " ".join(_leading_chunks(_clean_whitespace_chunks, text, max_chunks))
            if SEPARATOR in cleaned:
                return None
            self._cleaned_chars += len(text) + len(cleaned)
            if self._cleaned_chars > _CLEANED_CHARS_LIMIT:
                self._cleaned, self._cleaned_chars = {}, len(text) + len(cleaned)
            self._cleaned[key] = cleaned
        return cleaned

    def _learn_stream(self, new: set[str]) -> None:
        missing = list(new.difference(self._table.index))
        self._table.extend(missing, *self._bpe_chunks(missing))

    def _stream_rows(self, chunks: list[str]) -> np.ndarray:
        """``(C,)`` chunk-table row of each chunk, learning the chunks not seen before; 0 between texts."""
        rows = np.fromiter(map(self._table.index.get, chunks, repeat(-1)), dtype=np.int64, count=len(chunks))
        missing_at = np.flatnonzero(rows < 0)  # only these occurrences need Python work beyond the lookup
        if len(missing_at) == 0:
            return rows
        missing = list(map(chunks.__getitem__, missing_at.tolist()))
        new = set(missing)
        if len(self._table) + len(new) > _CACHE_LIMIT:
            # The rows found so far belong to the table being dropped: start again from the seed.
            self._table = self._seed_chunk_table.copy()
            self._learn_stream(set(chunks))
            return self._table.rows(chunks)
        self._learn_stream(new)
        rows[missing_at] = self._table.rows(missing)
        return rows

    def _encode_stream(self, texts: list[str], context_length: int) -> np.ndarray:
        """``(N, L)`` ids of fast-path texts, from one chunk stream and vectorised packing (no per-text Python)."""
        rows = self._stream_rows(bulk_chunks(texts, self.clean_mode, max_chunks=context_length - 2))
        out = np.zeros((len(texts), context_length), dtype=np.int64)
        out[:, 0] = self.sot_token_id
        # Truncation keeps context_length - 2 ids: eot then takes the last position.
        counts = self._table.pack_into(out, rows, np.cumsum(rows == 0), 1, context_length - 2)  # (N,) ids per text
        out[np.arange(len(texts)), np.minimum(counts, context_length - 2) + 1] = self.eot_token_id
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of a 1-D id sequence. With ``skip_special_tokens`` it returns the cleaned words between sot and
        eot (padding dropped); without, every id is rendered, as open_clip's ``decode`` does."""
        if hasattr(ids, "dim"):  # a torch tensor
            if ids.dim() != 1:
                raise ValueError(f"decode takes one sequence of ids (1-D), got shape {tuple(ids.shape)}; "
                                 "decode rows one by one: [tok.decode(row) for row in tokens]")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        if skip_special_tokens:
            ids = self._between_specials(ids)
        text = "".join(self._id_to_token[i] for i in ids)
        # Every vocabulary entry, "</w>" included, is spelled in the byte alphabet, so this inverts exactly.
        text = bytes(self._byte_of[c] for c in text).decode("utf-8", errors="replace").replace(EOW, " ")
        return text.rstrip(" ") if skip_special_tokens else text

    def _between_specials(self, ids: list[int]) -> list[int]:
        if ids and ids[0] == self.sot_token_id:
            ids = ids[1:]
        if self.eot_token_id in ids:
            ids = ids[:ids.index(self.eot_token_id)]
        return [i for i in ids if i not in self.all_special_ids]
