"""Examples/s of the paper-scale text pipelines on this host against what one v4-8 train
step consumes, and the time to resume at step 150,000.

For BERT-base (masked LM, 512 tokens, batch 256: experiments/bert_base.gin) and T5-base
(span corruption, inputs 512 / targets 114, batch 128: experiments/t5_base.gin), the
streaming text task (experiments/data/packed_stream.py) over a synthetic corpus:

* corpus: documents cut from Tiny Shakespeare at random places, with Wikipedia-like
  lengths (log-normal, median 2,000 characters, mean about 3,300), served as a streaming
  source (numbered documents, a seek); a sentencepiece model trained on the same text.
  Reading the text is not timed (a TFDS source adds its record decoding);
* pipeline rate: consecutive steps' batches of the whole global batch (a v4-8 is one
  host, which builds all of it), built in this process (serial) and by worker processes
  (parallel; --workers, default all cores); the goal is parallel >= 3x the step's need;
* step need: global batch / step time, the step time being the step's FLOPs at the v4-8's
  published peak (4 chips x 275 TFLOP/s bf16) times an assumed MFU (--mfu, 50%). FLOPs
  are analytic, as PaLM counts them (Chowdhery et al. 2022, appendix B): 6 x matmul
  parameters x tokens plus the attention's 12 x layers x width x attended length per
  token, from the models' configs (experiments/bert/models.py, experiments/t5/models.py;
  T5's encoder counted over its 512 input tokens, its decoder and LM head over 114);
* resume: a fresh task whose token index is on disk, to the batch of step 150,000 (worker
  start included), plus loading a token index of Wikipedia's size (--index_documents,
  6.6M documents), which the benchmark corpus is far smaller than; the goal is < 60 s.
  The one-time index build is timed apart.

    .venv/bin/python benchmarks/input_pipeline.py [--smoke] [--workers N] [--write]

prints a table; --write also writes it, with its numbers in JSON, to
results/benchmarks/input_pipeline.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# JAX, Flax and the tasks are imported where they are used: the pipeline's worker
# processes import this module, and need none of them.
from experiments.data import packed_stream

REPO = Path(__file__).resolve().parents[1]

SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
V4_CHIPS, V4_PEAK_FLOPS = 4, 275e12  # A v4-8: 4 chips, 275 TFLOP/s bf16 each.
RESUME_STEP = 150_000
VOCAB_SIZE = 32_100  # A 32k sentencepiece model plus T5's 100 sentinels.
RESULTS = REPO / "results" / "benchmarks"


# ---------------------------------------------------------------------------- FLOPs
def bert_flops_per_example(seq_length: int = 512) -> float:
    from experiments.bert.models import BertConfig

    c = BertConfig.from_size("base", vocab_size=VOCAB_SIZE)
    h, layers = c.hidden_size, c.num_layers
    # Per layer: Q, K, V, output (4 h^2) and the MLP (2 h mlp); the MLM head's transform
    # (h^2) and its (tied) output projection (h vocab), over every position.
    matmul = layers * (4 * h * h + 2 * h * c.mlp_dim) + h * h + h * c.vocab_size
    return seq_length * (6 * matmul + 12 * layers * h * seq_length)


def t5_flops_per_example(inputs: int = 512, targets: int = 114) -> float:
    from experiments.t5.models import T5Config

    c = T5Config.from_size("base", vocab_size=VOCAB_SIZE)
    d, inner, ff = c.d_model, c.num_heads * c.d_kv, c.d_ff
    enc_layers, dec_layers = c.num_encoder_layers, c.num_decoder_layers
    encoder = enc_layers * (4 * d * inner + 3 * d * ff)  # Gated GELU: two input kernels.
    decoder = dec_layers * (8 * d * inner + 3 * d * ff) + d * c.vocab_size  # Untied head.
    attention = (
        12 * inner * (enc_layers * inputs * inputs + dec_layers * targets * (targets + inputs))
    )
    return 6 * (inputs * encoder + targets * decoder) + attention


# ---------------------------------------------------------------------------- the corpus
class DocumentList:
    """A streaming source over in-memory documents: numbered, in a fixed order, with a seek
    (what a TFDS source gives; its reading cost is left out)."""

    in_memory = False
    name = "synthetic_wikipedia_lengths"

    def __init__(self, documents: list[str]):
        n = len(documents)
        held_out = max(2, n // 100)
        self.splits = {
            "train": documents[: n - held_out],
            "validation": documents[n - held_out : n - held_out // 2],
            "test": documents[n - held_out // 2 :],
        }

    def iter_documents(self, split: str, start: int = 0):
        return iter(self.splits[split][start:])

    def index_key(self, split: str) -> str:
        return f"{self.name}|{split}|{len(self.splits[split])}"


def synthetic_documents(text: str, count: int, seed: int = 0) -> list[str]:
    """``count`` documents cut from ``text`` at random line starts, log-normal lengths."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(2000), 1.0, count), 100, 60_000).astype(int)
    line_starts = np.flatnonzero(np.frombuffer(text.encode("latin-1", "replace"), np.uint8) == 10)
    doubled = text + text
    starts = rng.choice(line_starts + 1, size=count)
    return [doubled[s : s + n].strip() for s, n in zip(starts, lengths)]


# ---------------------------------------------------------------------------- measuring
def rate(task: Any, batch_size: int, first_step: int, steps: int) -> float:
    """Examples/s over ``steps`` consecutive batches (after one to warm up)."""
    task.train_batch(seed=0, step=first_step, batch_size=batch_size)
    started = time.perf_counter()
    for step in range(first_step + 1, first_step + 1 + steps):
        task.train_batch(seed=0, step=step, batch_size=batch_size)
    return steps * batch_size / (time.perf_counter() - started)


def index_load_seconds(num_documents: int, directory: str) -> float:
    """Loading a saved token index of ``num_documents`` documents and finding a position in
    it: what a resume adds at that scale."""
    rng = np.random.default_rng(0)
    counts = np.clip(rng.lognormal(np.log(450), 1.0, num_documents), 1, 2**20).astype(np.int32)
    path = os.path.join(directory, f"index_{num_documents}.npy")
    packed_stream.save_counts(path, counts)
    started = time.perf_counter()
    index = packed_stream.TokenIndex(packed_stream.load_counts(path), separator=True)
    index.documents_of(index.num_tokens // 2, 512 * 256)
    return time.perf_counter() - started


def measure(
    name: str,
    make_task: Callable[..., Any],
    *,
    batch_size: int,
    flops_per_example: float,
    workers: int,
    steps: int,
    mfu: float,
    index_dir: str,
) -> dict[str, Any]:
    step_flops = batch_size * flops_per_example
    step_s = step_flops / (V4_CHIPS * V4_PEAK_FLOPS * mfu)
    needed = batch_size / step_s
    started = time.perf_counter()
    serial = make_task(num_workers=0, index_dir=index_dir)
    serial.stream.index("train")  # Built and saved: every later task loads it.
    build_s = time.perf_counter() - started
    serial_rate = rate(serial, batch_size, 1000, steps)
    parallel = make_task(num_workers=workers, index_dir=index_dir)
    started = time.perf_counter()
    try:
        parallel.train_batch(seed=0, step=999, batch_size=batch_size)  # Starts the workers.
        first_batch_s = time.perf_counter() - started
        parallel_rate = rate(parallel, batch_size, 1000, steps) if workers else serial_rate
    finally:
        parallel.close()
    started = time.perf_counter()
    fresh = make_task(num_workers=workers, index_dir=index_dir)
    try:
        fresh.train_batch(seed=0, step=RESUME_STEP, batch_size=batch_size)
    finally:
        fresh.close()
    resume_s = time.perf_counter() - started
    index = serial.stream.index("train")
    return {
        "model": name,
        "batch_size": batch_size,
        "step_tflops": step_flops / 1e12,
        "v4_8_step_ms": 1e3 * step_s,
        "needed_examples_per_s": needed,
        "serial_examples_per_s": serial_rate,
        "parallel_examples_per_s": parallel_rate,
        "workers": workers,
        "ratio": parallel_rate / needed,
        "resume_s": resume_s,
        "first_parallel_batch_s": first_batch_s,
        "index_build_s": build_s,
        "index_documents": index.num_documents,
        "index_tokens": index.num_tokens,
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.optimizer_step import git_revision, machine
    from experiments.data.text_tasks import MaskedLMTask, SpanCorruptionTask
    from experiments.data.tokenizers import SentencePieceTokenizer
    from experiments.data.train_sentencepiece import train_sentencepiece

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--steps", type=int, default=None, help="batches timed per rate")
    parser.add_argument("--documents", type=int, default=None, help="corpus documents")
    parser.add_argument("--index_documents", type=int, default=None)
    parser.add_argument("--mfu", type=float, default=0.5)
    parser.add_argument("--write", action="store_true", help="write input_pipeline.{md,json}")
    parser.add_argument("--results_dir", default=str(RESULTS), help="where --write writes")
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.smoke else 20)
    documents = args.documents or (300 if args.smoke else 20_000)
    index_documents = args.index_documents or (100_000 if args.smoke else 6_600_000)
    vocab = 2000 if args.smoke else 32_000
    if not SHAKESPEARE.is_file():
        print(f"needs {SHAKESPEARE}", file=sys.stderr)
        return 2

    text = SHAKESPEARE.read_text()
    docs = synthetic_documents(text, documents)
    with tempfile.TemporaryDirectory() as tmp:
        model = train_sentencepiece([str(SHAKESPEARE)], f"{tmp}/spm", vocab_size=vocab)
        tokenizer = SentencePieceTokenizer(model)
        source = DocumentList(docs)

        def bert(**kwargs):
            return MaskedLMTask(source, tokenizer, 512, **kwargs)

        def t5(**kwargs):
            return SpanCorruptionTask(source, tokenizer, 512, 114, **kwargs)

        common = dict(workers=args.workers, steps=steps, mfu=args.mfu)
        rows = [
            measure(
                "BERT-base (masked LM, 512)",
                bert,
                batch_size=256,
                flops_per_example=bert_flops_per_example(),
                index_dir=f"{tmp}/bert",
                **common,
            ),
            measure(
                "T5-base (span corruption, 512/114)",
                t5,
                batch_size=128,
                flops_per_example=t5_flops_per_example(),
                index_dir=f"{tmp}/t5",
                **common,
            ),
        ]
        index_s = index_load_seconds(index_documents, tmp)

    chars = sum(len(d) for d in docs)
    lines = [
        f"# input pipeline per host vs a v4-8 step ({V4_CHIPS} x {V4_PEAK_FLOPS / 1e12:.0f} "
        f"TFLOP/s at {args.mfu:.0%} MFU; analytic FLOPs), resume at step {RESUME_STEP:,}",
        f"# command: python {' '.join(sys.argv)}",
        f"# git: {git_revision()}; {machine()}",
        f"# corpus: {documents:,} synthetic documents ({chars / 1e6:.1f}M characters, "
        f"Wikipedia-like lengths), sentencepiece vocabulary {tokenizer.num_pieces:,}; "
        f"{args.workers} worker processes; {steps} batches timed per rate",
        "| model | batch | v4-8 step (ms) | needed ex/s | serial ex/s | parallel ex/s | "
        "parallel / needed (goal >= 3) | resume at 150k (s) (goal < 60) | index build (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        r["resume_s_with_wikipedia_index"] = r["resume_s"] + index_s
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['v4_8_step_ms']:.0f} | "
            f"{r['needed_examples_per_s']:.0f} | {r['serial_examples_per_s']:.0f} | "
            f"{r['parallel_examples_per_s']:.0f} | {r['ratio']:.2f} | "
            f"{r['resume_s_with_wikipedia_index']:.2f} | {r['index_build_s']:.1f} |"
        )
    first = max(r["first_parallel_batch_s"] for r in rows)
    lines.append(
        f"# resume = a fresh task to step {RESUME_STEP:,}'s batch (its index on disk; its "
        f"workers forked from a running server: a new process also starts the server, "
        f"{first:.2f} s at most here for a first batch) + {index_s:.2f} s to load a "
        f"{index_documents:,}-document index; the index is built once per dataset and "
        f"tokenizer"
    )
    report = "\n".join(lines)
    print(report)
    if args.write:
        results = Path(args.results_dir)
        results.mkdir(parents=True, exist_ok=True)
        (results / "input_pipeline.md").write_text(report + "\n")
        record = {
            "command": " ".join(sys.argv),
            "git": git_revision(),
            "machine": machine(),
            "mfu": args.mfu,
            "workers": args.workers,
            "documents": documents,
            "characters": chars,
            "index_load_s": index_s,
            "index_load_documents": index_documents,
            "rows": rows,
        }
        (results / "input_pipeline.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
