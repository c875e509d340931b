"""Tokenizers for the text objectives: characters, bytes, or a sentencepiece model.

All three share one small interface (:class:`Tokenizer`): ``encode(text) -> list[int]``,
``decode(ids) -> str``, ``vocab_size``, and the special ids the objectives need:

* ``pad_id`` is always 0 (padding, and the decoder start token of T5);
* ``eos_id`` ends T5 inputs and targets; ``unk_id`` stands for an unknown character;
* ``cls_id``, ``sep_id``, ``mask_id`` are BERT's ``[CLS]``, ``[SEP]`` and ``[MASK]``
  (``None`` for a sentencepiece model trained without them);
* sentinels follow T5: ``num_sentinels`` ids at the very end of the vocabulary, counting
  down, so ``sentinel_id(0) == vocab_size - 1`` is ``<extra_id_0>``. For a sentencepiece
  model they are appended after its pieces, exactly as ``seqio.SentencePieceVocabulary(
  path, extra_ids=num_sentinels)`` numbers them, so numpy and seqio pipelines agree.

Character and byte vocabularies lay out ``[PAD] [EOS] [UNK] [CLS] [SEP] [MASK]``, then the
characters (sorted) or the 256 bytes, then the sentinels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from experiments.data import files

NUM_SENTINELS = 100  # T5's `extra_ids`.
SPECIAL_NAMES = ("[PAD]", "[EOS]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID = 0


class TokenizerError(ValueError):
    """A tokenizer that cannot be built (missing model file, bad option)."""


class Tokenizer:
    """The shared interface; subclasses set the ids and implement encode/decode."""

    vocab_size: int
    pad_id: int = PAD_ID
    eos_id: int
    unk_id: int
    cls_id: int | None
    sep_id: int | None
    mask_id: int | None
    num_sentinels: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of each text (a sentencepiece model does the loop in C++)."""
        return [self.encode(t) for t in texts]

    def fingerprint(self) -> str:
        """A digest of what ``encode`` does: equal fingerprints encode alike (it keys the
        token index that experiments.data.packed_stream caches on disk)."""
        raise NotImplementedError

    def sentinel_id(self, i: int) -> int:
        """T5's ``<extra_id_i>``: the i-th id from the end of the vocabulary."""
        if not 0 <= i < self.num_sentinels:
            raise TokenizerError(f"sentinel {i} out of range: num_sentinels={self.num_sentinels}")
        return self.vocab_size - 1 - i

    @property
    def first_sentinel_id(self) -> int:
        """The smallest sentinel id; ids from here to ``vocab_size - 1`` are sentinels."""
        return self.vocab_size - self.num_sentinels

    def is_sentinel(self, ids) -> np.ndarray:
        return np.asarray(ids) >= self.first_sentinel_id

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that are never text: pad, eos, cls, sep, mask (not unk, not sentinels)."""
        ids = (self.pad_id, self.eos_id, self.cls_id, self.sep_id, self.mask_id)
        return frozenset(i for i in ids if i is not None)

    def is_special(self, ids) -> np.ndarray:
        """Mask of ids an objective must not corrupt: the specials and the sentinels."""
        ids = np.asarray(ids)
        special = np.isin(ids, np.fromiter(self.special_ids, dtype=np.int64))
        return special | self.is_sentinel(ids)

    def normal_ids(self) -> np.ndarray:
        """Ids of ordinary tokens, the ones BERT's 10% random replacements draw from."""
        ids = np.arange(self.vocab_size)
        return ids[~self.is_special(ids) & (ids != self.unk_id)]

    def _special_piece(self, i: int) -> str | None:
        if i >= self.first_sentinel_id:
            return f"<extra_id_{self.vocab_size - 1 - i}>"
        return None


class _TableTokenizer(Tokenizer):
    """Six specials, then a table of symbols, then the sentinels."""

    def __init__(self, num_symbols: int, num_sentinels: int):
        if num_sentinels < 0:
            raise TokenizerError(f"num_sentinels={num_sentinels} must be >= 0")
        self.eos_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = 1, 2, 3, 4, 5
        self.offset = len(SPECIAL_NAMES)
        self.num_sentinels = num_sentinels
        self.vocab_size = self.offset + num_symbols + num_sentinels

    def _special_piece(self, i: int) -> str | None:
        if i < self.offset:
            return SPECIAL_NAMES[i]
        return super()._special_piece(i)


class CharTokenizer(_TableTokenizer):
    """One id per character of a fixed alphabet (the sorted characters of a text).

    ``decode`` drops padding and EOS and writes the other specials as ``[CLS]``,
    ``<extra_id_0>``, ...; characters outside the alphabet encode to ``unk_id``.
    """

    def __init__(self, chars: str, num_sentinels: int = NUM_SENTINELS):
        if len(set(chars)) != len(chars):
            raise TokenizerError("CharTokenizer: `chars` has repeated characters")
        super().__init__(len(chars), num_sentinels)
        self.chars = chars
        self._lookup = {c: i + self.offset for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str, num_sentinels: int = NUM_SENTINELS) -> CharTokenizer:
        return cls("".join(sorted(set(text))), num_sentinels)

    def encode(self, text: str) -> list[int]:
        lookup, unk = self._lookup, self.unk_id
        return [lookup.get(c, unk) for c in text]

    def fingerprint(self) -> str:
        return "char:" + hashlib.sha256(self.chars.encode("utf-8")).hexdigest()[:16]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i in (self.pad_id, self.eos_id):
                continue
            piece = self._special_piece(i)
            out.append(piece if piece is not None else self.chars[i - self.offset])
        return "".join(out)


class ByteTokenizer(_TableTokenizer):
    """UTF-8 bytes (ByT5-like): 6 specials + 256 bytes + sentinels; no unknowns."""

    def __init__(self, num_sentinels: int = NUM_SENTINELS):
        super().__init__(256, num_sentinels)

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def fingerprint(self) -> str:
        return "byte"

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        run = bytearray()  # Consecutive bytes decode together: characters span bytes.
        for i in ids:
            i = int(i)
            if i in (self.pad_id, self.eos_id):
                continue
            piece = self._special_piece(i)
            if piece is None:
                run.append(i - self.offset)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append(piece)
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model given by path, plus T5 sentinels after its pieces.

    The model must have ``pad_id`` 0 and an EOS piece (``train_sentencepiece`` trains it
    so, as T5's models are). ``[CLS]``, ``[SEP]`` and ``[MASK]`` are looked up as pieces:
    train with ``user_defined_symbols`` to have them (needed by the masked-LM objective).
    """

    def __init__(self, model_path: str, num_sentinels: int = NUM_SENTINELS):
        import sentencepiece as spm  # Light (no TensorFlow), but only needed here.

        if not files.is_file(model_path):
            raise TokenizerError(f"sentencepiece model not found: {model_path!r}")
        if num_sentinels < 0:
            raise TokenizerError(f"num_sentinels={num_sentinels} must be >= 0")
        self.model_path = model_path
        # From bytes, so a gs:// model loads like a local one.
        self.sp = spm.SentencePieceProcessor(model_proto=files.read_bytes(model_path))
        if self.sp.pad_id() != PAD_ID:
            raise TokenizerError(
                f"sentencepiece model {model_path!r} has pad_id={self.sp.pad_id()}, "
                f"expected {PAD_ID} (train with pad_id=0, as train_sentencepiece does)"
            )
        if self.sp.eos_id() < 0:
            raise TokenizerError(f"sentencepiece model {model_path!r} has no EOS piece")
        self.eos_id = self.sp.eos_id()
        self.unk_id = self.sp.unk_id()
        self.num_pieces = self.sp.get_piece_size()
        self.num_sentinels = num_sentinels
        self.vocab_size = self.num_pieces + num_sentinels

        def piece_id(piece: str) -> int | None:
            i = self.sp.piece_to_id(piece)
            return None if i == self.unk_id and piece != self.sp.id_to_piece(i) else i

        self.cls_id, self.sep_id, self.mask_id = (piece_id(p) for p in ("[CLS]", "[SEP]", "[MASK]"))

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # One thread: parallelism comes from the worker processes that call this.
        return self.sp.encode(list(texts), num_threads=1)

    def fingerprint(self) -> str:
        proto = self.sp.serialized_model_proto()
        return "sentencepiece:" + hashlib.sha256(proto).hexdigest()[:16]

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i in (self.pad_id, self.eos_id):
                continue
            if i < self.num_pieces:
                run.append(i)
                continue
            out.append(self.sp.decode(run))
            run = []
            out.append(self._special_piece(i))
        out.append(self.sp.decode(run))
        return "".join(out)


TOKENIZER_KINDS = ("char", "byte", "sentencepiece")


def make_tokenizer(
    kind: str,
    *,
    text: str | None = None,
    model_path: str | None = None,
    num_sentinels: int = NUM_SENTINELS,
) -> Tokenizer:
    """The tokenizer named by ``kind``: 'char' (alphabet of ``text``), 'byte', or
    'sentencepiece' (``model_path``). For gin configs and command lines."""
    if kind == "char":
        if not text:
            raise TokenizerError("tokenizer kind 'char' needs the text to build its alphabet")
        return CharTokenizer.from_text(text, num_sentinels)
    if kind == "byte":
        return ByteTokenizer(num_sentinels)
    if kind == "sentencepiece":
        if not model_path:
            raise TokenizerError("tokenizer kind 'sentencepiece' needs model_path")
        return SentencePieceTokenizer(model_path, num_sentinels)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")


def encode_documents(tokenizer: Tokenizer, documents: Sequence[str]) -> list[np.ndarray]:
    """Each document as an int32 array of ids."""
    return [np.asarray(tokenizer.encode(d), dtype=np.int32) for d in documents]
