"""Tokenizers: round trips, the special-id layout, T5 sentinels, sentencepiece by path."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data import train_sentencepiece as tsp
from experiments.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    make_tokenizer,
)


def test_char_round_trip_and_layout():
    text = "To be, or not to be: that is the question.\n"
    tok = CharTokenizer.from_text(text, num_sentinels=10)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (
        0,
        1,
        2,
        3,
        4,
        5,
    )
    assert tok.vocab_size == 6 + len(set(text)) + 10
    assert min(ids) == 6 and max(ids) < tok.first_sentinel_id
    # T5: sentinels are the last ids, counting down.
    assert tok.sentinel_id(0) == tok.vocab_size - 1 and tok.sentinel_id(9) == tok.vocab_size - 10
    assert (
        tok.decode([tok.cls_id, *ids[:2], tok.sentinel_id(1), tok.pad_id, tok.eos_id])
        == "[CLS]To<extra_id_1>"
    )
    assert tok.encode("Z") == [tok.unk_id]
    with pytest.raises(TokenizerError, match="sentinel 10"):
        tok.sentinel_id(10)


def test_specials_and_normal_ids():
    tok = CharTokenizer("abc", num_sentinels=3)
    assert sorted(tok.special_ids) == [0, 1, 3, 4, 5]
    assert list(tok.is_special([0, 2, 5, 6, 9, 11])) == [True, False, True, False, True, True]
    assert list(tok.normal_ids()) == [6, 7, 8]


def test_byte_round_trip_unicode():
    tok = ByteTokenizer()
    text = "naïve café — ∑ 😀"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.vocab_size == 6 + 256 + 100
    assert tok.decode([*tok.encode("é"), tok.sentinel_id(0), *tok.encode("x")]) == "é<extra_id_0>x"


def test_make_tokenizer_errors_name_the_option():
    assert isinstance(make_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(TokenizerError, match="kind 'wordpiece'"):
        make_tokenizer("wordpiece")
    with pytest.raises(TokenizerError, match="needs the text"):
        make_tokenizer("char")
    with pytest.raises(TokenizerError, match="model_path"):
        make_tokenizer("sentencepiece")
    with pytest.raises(TokenizerError, match="not found: '/nonexistent/x.model'"):
        SentencePieceTokenizer("/nonexistent/x.model")


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory, shakespeare) -> str:
    prefix = tmp_path_factory.mktemp("spm") / "shakespeare"
    return tsp.train_sentencepiece(
        [str(shakespeare)],
        str(prefix),
        vocab_size=1000,
        input_sentence_size=5000,
        seed_sentencepiece_size=50_000,
    )


def test_sentencepiece_trained_on_shakespeare(spm_path):
    tok = SentencePieceTokenizer(spm_path)
    assert tok.num_pieces == 1000 and tok.vocab_size == 1100
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (3, 4, 5)  # user-defined symbols
    line = "First Citizen: Before we proceed any further, hear me speak."
    ids = tok.encode(line)
    assert tok.decode(ids) == line
    assert len(ids) < len(line) / 2  # Pieces, not characters.
    assert max(ids) < tok.num_pieces
    assert tok.encode("[MASK]")[-1] == tok.mask_id
    assert tok.decode([*ids[:3], tok.sentinel_id(0), tok.eos_id]).endswith("<extra_id_0>")
    assert not tok.is_sentinel(ids).any() and tok.is_sentinel(tok.vocab_size - 1)


def test_sentencepiece_without_bert_symbols_has_no_mask(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"line {i} of some text" for i in range(200)))
    path = tsp.train_sentencepiece(
        [str(text)], str(tmp_path / "m"), vocab_size=40, user_defined_symbols=()
    )
    tok = SentencePieceTokenizer(path, num_sentinels=5)
    assert tok.mask_id is None and tok.cls_id is None and tok.vocab_size == tok.num_pieces + 5
    assert tok.decode(tok.encode("line 7 of some text")) == "line 7 of some text"


def test_train_sentencepiece_cli_and_errors(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"another line {i}" for i in range(100)))
    tsp.main(
        [
            f"--input={text}",
            f"--model_prefix={tmp_path / 'cli'}",
            "--vocab_size=30",
            "--model_type=bpe",
        ]
    )
    assert (tmp_path / "cli.model").is_file()
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        tsp.train_sentencepiece([missing], str(tmp_path / "m"))
    with pytest.raises(ValueError, match="model_type='wordpiece'"):
        tsp.train_sentencepiece([str(text)], str(tmp_path / "m"), model_type="wordpiece")


def test_encode_is_deterministic_array_friendly():
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(np.array(tok.encode("cab"), np.int32)) == "cab"
