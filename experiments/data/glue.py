"""GLUE-style sequence classification for the BERT family: tfds ``glue/<task>`` read from a
prepared data directory, tokenized into BERT's single-sentence or sentence-pair inputs.

The harness (``experiments/task.py``) gets ``input_ids``, ``segment_ids``,
``attention_mask`` (``(batch, seq_length)`` int32), ``labels`` (``(batch,)`` int32) and
``weights`` (``(batch,)`` float32) per batch; the objective is
``experiments.objectives.SequenceClassification`` and the model
``experiments.bert.models.BertClassifier``.

Encoding, as BERT's ``run_classifier.py``: ``[CLS] a [SEP]`` (segment 0), then for a pair
``b [SEP]`` (segment 1), then padding (id 0, segment 0, attention mask 0). The separator is
``[SEP]`` (EOS where a tokenizer has none, as the masked-LM data does); ``[CLS]`` is
required, since the classifier pools it. A pair longer than ``seq_length`` loses tokens
from the end of its longer text, one at a time (BERT's ``_truncate_seq_pair``); a single
text is cut at ``seq_length - 2``.

The splits are held in memory, tokenized once, in the dataset's ``idx`` order. Training
batches are drawn with replacement by ``experiments.task.batch_rng`` from
``(seed, step)``, as every in-memory task here. Evaluation batch ``i`` is examples
``i * batch_size`` onwards of the split in order; the split's last batch is completed
with padding rows of weight 0, so ``ceil(examples / batch_size)`` batches cover it
exactly (asking for more is a ConfigError naming ``EVAL_BATCHES``). The harness weighs
each batch by its ``num_targets``, so the padding rows count for nothing and the result
is the exact per-example mean over the split. The evaluation split is GLUE's validation
split (MNLI: ``validation_matched``):
GLUE's test labels are hidden (tfds stores -1), so the test splits cannot be scored here,
and split 'test' is a ConfigError: validation stays whole (GLUE's validation sets are
small), and a GLUE score is a validation score.

STS-B is left out: it is a regression task (a similarity score in [0, 5]) and needs a
squared-error objective. TensorFlow and tfds are imported only when data is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.data.mlm import separator_id
from experiments.data.sources import default_tfds_data_dir, tfds_builder
from experiments.data.text_tasks import resolve_tokenizer
from experiments.data.tf_import import tensorflow_datasets
from experiments.data.tokenizers import Tokenizer
from experiments.errors import ConfigError
from experiments.objectives import SequenceClassification
from experiments.task import ObjectiveTask, batch_rng

Batch = dict[str, np.ndarray]

# The text features of each GLUE classification task, in the order they are encoded
# (tfds' glue builder names them so; its FeaturesDict sorts them, which is not this order).
TEXT_FEATURES: dict[str, tuple[str, ...]] = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
VALIDATION_SPLITS: dict[str, str] = {"mnli": "validation_matched"}
_LEFT_OUT: dict[str, str] = {
    "stsb": "a regression task (a similarity score), which needs a squared-error objective",
    "mnli_matched": "validation and test splits only; train on 'mnli' (validation_matched)",
    "mnli_mismatched": "validation and test splits only; train on 'mnli' with "
    "validation_split='validation_mismatched'",
    "ax": "the diagnostic set: a test split only, whose labels are hidden",
}


def truncated_lengths(lengths: Sequence[int], room: int) -> tuple[int, ...]:
    """The lengths the texts of one example keep so that they fit ``room`` tokens.

    One text: ``min(length, room)``. A pair: BERT's ``_truncate_seq_pair`` (drop the last
    token of the longer text, of the second on a tie, until the pair fits), in closed
    form: the shorter text is kept whole if the longer, cut to the rest of ``room``, is
    still at least as long; else the first keeps ``ceil(room / 2)`` tokens and the second
    ``floor(room / 2)``.
    """
    if len(lengths) == 1:
        return (min(lengths[0], room),)
    a, b = lengths
    if a + b <= room:
        return a, b
    short = min(a, b)
    if room - short >= short:
        return (a, room - a) if a == short else (room - b, b)
    return (room + 1) // 2, room // 2


def encode_examples(
    examples: Sequence[Sequence[np.ndarray]], tokenizer: Tokenizer, seq_length: int
) -> Batch:
    """``input_ids``, ``segment_ids``, ``attention_mask``, each ``(len(examples),
    seq_length)`` int32, from examples of one or two token-id arrays each."""
    if tokenizer.cls_id is None:
        raise ConfigError("GLUE classification pools [CLS]; this tokenizer has no [CLS] piece")
    sep = separator_id(tokenizer)
    input_ids = np.full((len(examples), seq_length), tokenizer.pad_id, np.int32)
    segment_ids = np.zeros((len(examples), seq_length), np.int32)
    attention_mask = np.zeros((len(examples), seq_length), np.int32)
    for row, texts in enumerate(examples):
        room = seq_length - 1 - len(texts)  # Less [CLS] and one separator per text.
        keep = truncated_lengths([len(t) for t in texts], room)
        pieces = [np.asarray([tokenizer.cls_id], np.int32)]
        segments = [0]
        for segment, (text, n) in enumerate(zip(texts, keep)):
            pieces.append(np.append(np.asarray(text[:n], np.int32), np.int32(sep)))
            segments.append(segment)
        lengths = [len(p) for p in pieces]
        end = sum(lengths)
        input_ids[row, :end] = np.concatenate(pieces)
        segment_ids[row, :end] = np.repeat(segments, lengths)
        attention_mask[row, :end] = 1
    return {"input_ids": input_ids, "segment_ids": segment_ids, "attention_mask": attention_mask}


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
    """A split in memory: per text feature, all examples' ids in one array with offsets
    (``ids[offsets[i]:offsets[i + 1]]`` is example ``i``), and the labels."""

    texts: tuple[tuple[np.ndarray, np.ndarray], ...]  # (ids, offsets) per text feature
    labels: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.labels)

    def example(self, i: int) -> tuple[np.ndarray, ...]:
        return tuple(ids[offsets[i] : offsets[i + 1]] for ids, offsets in self.texts)


def tokenize_texts(texts: Sequence[str], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """All texts' ids concatenated, and the offsets where each starts (plus the end)."""
    encoded = [np.asarray(tokenizer.encode(t), np.int32) for t in texts]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    ids = np.concatenate(encoded) if encoded else np.zeros(0, np.int32)
    return ids, offsets


def load_split(
    builder: Any,
    split: str,
    text_features: Sequence[str],
    tokenizer: Tokenizer,
    *,
    num_classes: int,
    lowercase: bool,
) -> TokenizedSplit:
    """One split of a prepared GLUE builder, tokenized, in ``idx`` order."""
    tfds = tensorflow_datasets()

    name = f"{builder.name}/{builder.builder_config.name}"
    data = tfds.as_numpy(
        builder.as_dataset(
            split=split,
            batch_size=-1,
            shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False),
        )
    )
    order = np.argsort(data["idx"], kind="stable")
    labels = np.asarray(data["label"])[order].astype(np.int32)
    if len(labels) == 0:
        raise ConfigError(f"GlueTask: the {split!r} split of {name} is empty")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(
            f"GlueTask: the {split!r} split of {name} has labels outside [0, {num_classes}) "
            f"(GLUE's test labels are hidden, stored as -1: evaluate on a validation split)"
        )
    texts = []
    for feature in text_features:
        strings = [s.decode("utf-8") for s in data[feature][order]]
        texts.append(
            tokenize_texts([s.lower() for s in strings] if lowercase else strings, tokenizer)
        )
    return TokenizedSplit(tuple(texts), labels)


class GlueTask(ObjectiveTask):
    """A GLUE classification task (``glue_task``: 'sst2', 'mrpc', 'qnli', 'mnli', 'cola',
    'qqp', 'rte', 'wnli') from tfds ``glue/<glue_task>`` prepared under ``data_dir``;
    never downloads (a missing dataset is a ConfigError naming both).

    ``tokenizer``: 'byte', the path of a sentencepiece ``.model`` (the encoder's
    pre-training vocabulary), or a Tokenizer; it needs ``[CLS]``. ``seq_length``: BERT's
    128 for GLUE. ``validation_split``: the split evaluated as 'val' (default
    'validation', MNLI 'validation_matched'). ``text_features``: the texts encoded, in
    order (default: the task's, ``TEXT_FEATURES``). ``lowercase``: lowercase the text
    first (the reference's fine-tuning does, for its uncased vocabulary; a model
    pre-trained here on cased text should not). ``loss_normalization``: the training loss
    (``experiments.objectives``; default the reference's "sqrt": sum / sqrt(batch)).
    """

    unit_name = "examples"
    units_per_example = 1

    def __init__(
        self,
        glue_task: str = "sst2",
        data_dir: str | None = None,
        tokenizer: str | Tokenizer = "byte",
        seq_length: int = 128,
        *,
        validation_split: str | None = None,
        text_features: Sequence[str] | None = None,
        lowercase: bool = False,
        loss_normalization: str = "sqrt",
    ):
        self.objective = SequenceClassification(normalization=loss_normalization)
        base = glue_task.split(":")[0]  # A version may follow, as tfds takes it.
        if base in _LEFT_OUT:
            raise ConfigError(f"GlueTask.glue_task={glue_task!r} (GLUE_TASK): {_LEFT_OUT[base]}")
        if base not in TEXT_FEATURES:
            raise ConfigError(
                f"GlueTask.glue_task={glue_task!r} (GLUE_TASK) is not a GLUE classification "
                f"task; choose from {sorted(TEXT_FEATURES)}"
            )
        self.text_features = tuple(text_features or TEXT_FEATURES[base])
        if len(self.text_features) not in (1, 2):
            raise ConfigError(
                f"GlueTask.text_features={self.text_features!r}: one text or a pair, not "
                f"{len(self.text_features)}"
            )
        if seq_length < 2 * len(self.text_features) + 1:
            raise ConfigError(
                f"GlueTask.seq_length={seq_length} (SEQ_LENGTH) leaves no room for the text "
                f"beside [CLS] and {len(self.text_features)} separator(s)"
            )
        if tokenizer == "char":
            raise ConfigError(
                "GlueTask.tokenizer='char' (TOKENIZER) has no fixed alphabet for GLUE; use "
                "'byte' or the sentencepiece model the encoder was pre-trained with"
            )
        self.tokenizer = resolve_tokenizer(tokenizer, None)
        if self.tokenizer.cls_id is None:
            raise ConfigError(
                f"GlueTask.tokenizer={tokenizer!r} (TOKENIZER) has no [CLS] piece, which the "
                f"classifier pools (train_sentencepiece adds [CLS], [SEP], [MASK])"
            )
        self.seq_length = seq_length
        self.dataset = f"glue/{glue_task}"
        self.data_dir = default_tfds_data_dir(data_dir)
        self.split_names = {
            "train": "train",
            "val": validation_split or VALIDATION_SPLITS.get(base, "validation"),
        }
        builder = tfds_builder(self.dataset, self.data_dir)
        features = builder.info.features
        missing = [f for f in (*self.text_features, "label", "idx") if f not in features]
        if missing:
            raise ConfigError(
                f"TFDS dataset {self.dataset!r} under {self.data_dir!r} has no feature(s) "
                f"{missing} (GlueTask.text_features); it has {sorted(features.keys())}"
            )
        self.num_classes = getattr(features["label"], "num_classes", None)
        if not self.num_classes:
            raise ConfigError(
                f"TFDS dataset {self.dataset!r}: its label is not a class label (a regression "
                f"task such as STS-B, which GlueTask leaves out)"
            )
        self.splits: dict[str, TokenizedSplit] = {}
        for split, tfds_split in self.split_names.items():
            if tfds_split not in builder.info.splits:
                raise ConfigError(
                    f"TFDS dataset {self.dataset!r} under {self.data_dir!r} has no split "
                    f"{tfds_split!r} (GlueTask.validation_split); it has "
                    f"{sorted(builder.info.splits)}"
                )
            self.splits[split] = load_split(
                builder,
                tfds_split,
                self.text_features,
                self.tokenizer,
                num_classes=self.num_classes,
                lowercase=lowercase,
            )

    def model_kwargs(self) -> dict[str, Any]:
        return {"vocab_size": self.tokenizer.vocab_size, "num_classes": self.num_classes}

    @property
    def num_train_examples(self) -> int:
        """The training split's examples (sentences or pairs)."""
        return len(self.splits["train"])

    def make_batch(self, split: str, picks: np.ndarray, valid: np.ndarray) -> Batch:
        """The batch of examples ``picks`` of ``split``; rows where ``valid`` is False are
        padding (empty texts, label 0, weight 0)."""
        data = self.splits[split]
        empty = tuple(np.zeros(0, np.int32) for _ in self.text_features)
        examples = [data.example(int(i)) if ok else empty for i, ok in zip(picks, valid)]
        batch = encode_examples(examples, self.tokenizer, self.seq_length)
        batch["labels"] = np.where(valid, data.labels[picks], 0).astype(np.int32)
        batch["weights"] = valid.astype(np.float32)
        return batch

    def train_batch(
        self, *, seed: int, step: int, batch_size: int, rows: slice | None = None
    ) -> Batch:
        rng = batch_rng(seed=seed, split="train", purpose="train", index=step)
        picks = rng.integers(0, len(self.splits["train"]), size=batch_size)
        if rows is not None:  # Examples are encoded one by one: slicing first is the same.
            picks = picks[rows]
        return self.make_batch("train", picks, np.ones(len(picks), bool))

    def eval_num_batches(self, split: str, batch_size: int) -> int:
        """Batches of ``batch_size`` that cover ``split`` ('val' or 'train'; 'test' is an
        error: GLUE's test labels are hidden)."""
        return math.ceil(len(self._split(split)) / batch_size)

    def eval_batch(
        self, split: str, *, seed: int, index: int, batch_size: int, rows: slice | None = None
    ) -> Batch:
        del seed  # Evaluation reads the split in order.
        n = len(self._split(split))
        if index >= self.eval_num_batches(split, batch_size):
            raise ConfigError(
                f"{self.dataset} {self.split_names[split]!r} has {n} examples, "
                f"{self.eval_num_batches(split, batch_size)} batches of {batch_size}; "
                f"evaluation batch {index} is past its end (set EVAL_BATCHES to at most "
                f"{self.eval_num_batches(split, batch_size)}, which covers the split)"
            )
        positions = index * batch_size + np.arange(batch_size)
        if rows is not None:
            positions = positions[rows]
        valid = positions < n
        return self.make_batch(split, np.where(valid, positions, 0), valid)

    def _split(self, split: str) -> TokenizedSplit:
        if split == "test":
            raise ConfigError(
                f"GlueTask: {self.dataset} has no test split to score: GLUE's test labels "
                f"are hidden (tfds stores -1). Evaluate and report 'val' "
                f"({self.split_names['val']!r}): drop 'test' from train.eval_splits "
                f"(EVAL_SPLITS)"
            )
        if split not in self.splits:
            raise ConfigError(f"GlueTask: no split {split!r}; evaluation uses 'val' or 'train'")
        return self.splits[split]
