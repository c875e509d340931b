"""`describe_data`: what a task reads (dataset, files, splits, vocabulary), as plain JSON
for run.json."""

from __future__ import annotations

from typing import Any

# Attributes of tasks and sources (experiments/data/) that name where their data is.
_PATH_ATTRS = ("path", "corpus_path", "valid_path", "test_path", "data_dir")


def describe_data(task: Any) -> dict[str, Any]:
    """What a task reads, readable in run.json: its class, the dataset (a name, a corpus
    path or the generated text), the split names, the files and the tokenizer or
    vocabulary. Built from the attributes the task and its source happen to have, so any
    task is described as far as it exposes itself (and nothing is an object repr)."""
    out: dict[str, Any] = {"task": type(task).__name__}
    source = getattr(task, "source", None)
    if isinstance(source, str):  # A corpus path, or a description of generated text.
        out["dataset"] = source
    elif source is not None:
        out["source"] = type(source).__name__
        out["dataset"] = _plain(getattr(source, "name", None)) or type(source).__name__
        out.update(_paths(source))
        out.update(_splits(source))
    if getattr(task, "dataset", None):
        out["dataset"] = _plain(task.dataset)
    out.update(_paths(task))
    out.update(_splits(task))
    vocabulary = _describe_vocabulary(task)
    if vocabulary:
        out["vocabulary"] = vocabulary
    return out


def _plain(value: Any) -> Any:
    """`value` if JSON holds it as is, else its str()."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _paths(obj: Any) -> dict[str, Any]:
    return {a: _plain(getattr(obj, a)) for a in _PATH_ATTRS if getattr(obj, a, None)}


def _splits(obj: Any) -> dict[str, Any]:
    """Our split names mapped to the dataset's (TFDS sources, image tasks), or the sizes
    of in-memory token splits (`corpus` with `train`, `val` and maybe `test` ids)."""
    names = getattr(obj, "split_names", None)
    if isinstance(names, dict):
        return {"splits": _plain(names)}
    corpus = getattr(obj, "corpus", None)
    if corpus is not None and hasattr(corpus, "train") and hasattr(corpus, "val"):
        names = ("train", "val", "test")  # 'test' where the corpus holds one out too.
        sizes = {n: len(getattr(corpus, n)) for n in names if getattr(corpus, n, None) is not None}
        return {"split_tokens": sizes}
    return {}


def _describe_vocabulary(task: Any) -> dict[str, Any]:
    """The tokenizer (its kind and model file) or word vocabulary, with its size."""
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is not None:
        out = {"tokenizer": type(tokenizer).__name__}
        if getattr(tokenizer, "model_path", None):
            out["path"] = tokenizer.model_path
        if getattr(tokenizer, "vocab_size", None):
            out["size"] = int(tokenizer.vocab_size)
        return out
    out = {}
    if getattr(task, "vocab_path", None):
        out["path"] = task.vocab_path
    vocab = getattr(task, "vocab", None)
    if vocab is not None and hasattr(vocab, "__len__"):
        out["size"] = len(vocab)
    elif getattr(task, "vocab_size", None):
        out["size"] = int(task.vocab_size)
    return out
