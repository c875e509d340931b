"""Train a sentencepiece model on text files, with T5's special-id layout.

    python -m experiments.data.train_sentencepiece --input=corpus.txt \\
        --model_prefix=/tmp/spm/shakespeare --vocab_size=1000

writes ``<model_prefix>.model`` and ``<model_prefix>.vocab``. Ids: pad 0, EOS 1, UNK 2
and no BOS (T5's convention, what ``SentencePieceTokenizer`` and seqio expect), then the
user-defined symbols (by default BERT's ``[CLS]``, ``[SEP]``, ``[MASK]``, so the same
model serves the masked-LM objective). T5 sentinels are *not* trained: the tokenizer and
``seqio.SentencePieceVocabulary(extra_ids=...)`` append them after the pieces.

Sentencepiece reads one sentence per line; ``input_sentence_size`` samples that many lines
(seeded by sentencepiece itself) so training on a large corpus stays fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

MODEL_TYPES = ("unigram", "bpe", "char", "word")
BERT_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")


def train_sentencepiece(
    input_files: Sequence[str],
    model_prefix: str,
    *,
    vocab_size: int = 32000,
    model_type: str = "unigram",
    user_defined_symbols: Sequence[str] = BERT_SYMBOLS,
    input_sentence_size: int = 1_000_000,
    character_coverage: float = 1.0,
    max_sentence_length: int = 4192,
    seed_sentencepiece_size: int = 1_000_000,
    num_threads: int = 2,
) -> str:
    """Trains the model and returns the path of ``<model_prefix>.model``."""
    import sentencepiece as spm  # here: only training a tokenizer needs its trainer

    if isinstance(input_files, str):
        input_files = [input_files]
    if not input_files:
        raise FileNotFoundError("train_sentencepiece: no input files given (--input)")
    for path in input_files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"train_sentencepiece: input file not found: {path!r}")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"train_sentencepiece: model_type={model_type!r} is not one of {MODEL_TYPES}"
        )
    if vocab_size < 4 + len(user_defined_symbols):
        raise ValueError(
            f"train_sentencepiece: vocab_size={vocab_size} is too small for the "
            f"3 fixed pieces and {len(user_defined_symbols)} user-defined symbols"
        )
    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=list(input_files),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        user_defined_symbols=list(user_defined_symbols),
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        character_coverage=character_coverage,
        max_sentence_length=max_sentence_length,
        seed_sentencepiece_size=seed_sentencepiece_size,
        num_threads=num_threads,
        # Without this, a vocab_size the data cannot fill is a hard error; a smaller
        # vocabulary is what one wants from a tiny test corpus.
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model_prefix + ".model"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input",
        required=True,
        action="append",
        help="a text file, one sentence per line (repeat for several)",
    )
    parser.add_argument("--model_prefix", required=True)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--model_type", default="unigram", choices=MODEL_TYPES)
    parser.add_argument(
        "--user_defined_symbols",
        default=",".join(BERT_SYMBOLS),
        help="comma-separated pieces kept whole, e.g. '[CLS],[SEP],[MASK]'",
    )
    parser.add_argument(
        "--input_sentence_size",
        type=int,
        default=1_000_000,
        help="lines sampled from the input (0: all of them)",
    )
    parser.add_argument("--character_coverage", type=float, default=1.0)
    args = parser.parse_args(argv)
    symbols = [s for s in args.user_defined_symbols.split(",") if s]
    path = train_sentencepiece(
        args.input,
        args.model_prefix,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        user_defined_symbols=symbols,
        input_sentence_size=args.input_sentence_size,
        character_coverage=args.character_coverage,
    )
    print(path)


if __name__ == "__main__":
    main()
