"""The Trainer of `run.py --dry_run`: the configured task, or for a text task the same
shapes on generated text, so that no dataset is read."""

from __future__ import annotations

import copy
import inspect
import os
from typing import Any

import gin

from experiments.data.sources import GeneratedTextSource
from experiments.data.text_tasks import TextExamples, resolve_tokenizer
from experiments.data.tokenizers import ByteTokenizer
from launch.trainer.config import train_config
from launch.trainer.loop import Trainer

# `run.py --dry_run`: the vocabulary size assumed when a text task's tokenizer file is
# absent (gin macro DRY_RUN_VOCAB_SIZE, gin_configs/train_defaults.gin).
DRY_RUN_VOCAB_SIZE = 32000
_STAND_IN_CHARS = 200_000
_AS_A_RUN = "the configured task, built as a run builds it (reading what its constructor reads)"


class _Given:
    """A value bound in gin as it is: gin deep-copies bound values when it calls a
    configurable, and this one hands over the object itself instead of a copy."""

    def __init__(self, value: Any):
        self.value = value

    def __deepcopy__(self, memo) -> Any:
        return self.value


class _VocabularyOf:
    """A task that tells the model another vocabulary size than its tokenizer's (the
    dry run's stand-in, whose tokenizer is not the configured one)."""

    def __init__(self, task: Any, vocab_size: int):
        self.wrapped, self.vocab_size = task, vocab_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def model_kwargs(self) -> dict[str, Any]:
        return {**self.wrapped.model_kwargs(), "vocab_size": self.vocab_size}


def _bound(selector: str, name: str, default: Any) -> Any:
    """The evaluated gin binding `selector.name`, or `default` if there is none."""
    try:
        return copy.deepcopy(gin.query_parameter(f"{selector}.{name}"))
    except ValueError:
        return default


def _configured_task() -> Any:
    """`train.task`'s reference, through the TASK macro that binds it
    (gin_configs/train_defaults.gin) when it does."""
    reference = gin.query_parameter("train.task")
    if getattr(reference, "selector", None) == "gin.macro":
        return gin.query_parameter(f"%{reference.scoped_selector.split('/')[0]}")
    return reference


def dry_run_task() -> tuple[Any, str]:
    """The task for `run.py --dry_run`, and a line saying where its data comes from.

    A text task (experiments/data/text_tasks.py: masked LM, span corruption) is the
    configured class with its configured lengths and objective, on generated text instead
    of its source, so that nothing of the dataset is read and the dataset need not exist:
    only the batch shapes matter to a dry run, and they do not depend on the text. Its
    vocabulary is the configured tokenizer's when that file exists (the tokenizer alone
    is read), else DRY_RUN_VOCAB_SIZE. Any other task is built as a run builds it: tasks
    that hold their data in memory (character and word corpora, images, seqio) read it
    when they are built, to know their vocabulary or their examples.
    """
    reference = _configured_task()
    cls = getattr(getattr(reference, "configurable", None), "wrapped", None)
    if not (isinstance(cls, type) and issubclass(cls, TextExamples)):
        return copy.deepcopy(reference), _AS_A_RUN
    signature = inspect.signature(cls)
    positional = list(signature.parameters)[:2]
    default = signature.parameters["tokenizer"].default if "tokenizer" in positional else None
    tokenizer = _bound(reference.selector, "tokenizer", default)
    if positional != ["source", "tokenizer"] or tokenizer == "char":
        # 'char' takes its alphabet from the text itself.
        return copy.deepcopy(reference), _AS_A_RUN
    source = GeneratedTextSource(num_chars=_STAND_IN_CHARS)
    path = tokenizer if isinstance(tokenizer, str) and tokenizer.endswith(".model") else None
    if path is None or os.path.exists(path):
        # Positional, so that gin does not build the configured source (it evaluates
        # every bound keyword argument, even those a caller passes).
        task = reference.scoped_configurable_fn(source, resolve_tokenizer(tokenizer, source))
        return task, f"none read: generated text in the configured shapes; vocabulary {tokenizer!r}"
    try:
        vocab_size = gin.query_parameter("%DRY_RUN_VOCAB_SIZE")
    except ValueError:
        vocab_size = DRY_RUN_VOCAB_SIZE
    task = reference.scoped_configurable_fn(source, ByteTokenizer())
    note = (
        f"none read: generated text in the configured shapes; vocabulary size {vocab_size} "
        f"(DRY_RUN_VOCAB_SIZE: the tokenizer {path!r} is absent)"
    )
    return _VocabularyOf(task, vocab_size), note


def dry_run_trainer() -> tuple[Trainer, str]:
    """The Trainer of the gin configuration for `run.py --dry_run`, on `dry_run_task()`,
    and that function's line about the data. Building it allocates nothing: the state is
    a `jax.eval_shape` (`abstract_state`) and the steps are jitted lazily."""
    task, note = dry_run_task()
    # The TASK macro too, so that what else reads it (Amos' xi_guidance) reads no data.
    selectors = ["train.task", *(["TASK/gin.macro.value"] if _has_task_macro() else [])]
    previous = {s: gin.query_parameter(s) for s in selectors}
    with gin.unlock_config():
        for selector in selectors:
            gin.bind_parameter(selector, _Given(task))
    try:
        return Trainer(train_config(dry_run=True)), note
    finally:
        with gin.unlock_config():
            for selector, value in previous.items():
                gin.bind_parameter(selector, value)


def _has_task_macro() -> bool:
    try:
        gin.query_parameter("%TASK")
    except ValueError:
        return False
    return True
