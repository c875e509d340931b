"""Registers with gin everything the config files name; `amos/` and `experiments/` stay
free of gin. Importing this module is what makes the models (`@gpt_model`, `@bert_model`,
`@t5_model`, `@lstm_model`, `@resnet_model`), the tasks (`@CharTextTask()`, ...) and the
optimizer factories resolvable. Each family's Amos eta and slot rules are plain rule maps
bound in its model gin file (`amos_optimizer.gains`, `eta_overrides`, `shape_overrides`)."""

from __future__ import annotations

import functools

import flax.linen as nn
import gin

from experiments.bert.models import BertClassifier, BertConfig, BertMlm
from experiments.data.char_text import CharTextTask
from experiments.data.glue import GlueTask
from experiments.data.images import ImageClassificationTask
from experiments.data.seqio_tasks import SeqioSpanCorruptionTask
from experiments.data.sources import TfdsSource
from experiments.data.text_tasks import MaskedLMTask, SpanCorruptionTask
from experiments.data.word_lm import WordLMTask
from experiments.gpt.models import GPT
from experiments.layers import check_remat
from experiments.lstm.models import lstm_model
from experiments.resnet.models import resnet_model
from experiments.t5.models import T5, T5Config
from launch import optimizers
from launch.trainer import config as _train_config  # noqa: F401  (registers `train`)


@gin.configurable
def gpt_model(
    vocab_size: int,
    *,
    block_size: int = gin.REQUIRED,
    num_layers: int = 4,
    num_heads: int = 4,
    width: int = 128,
    dropout: float = 0.0,
    use_bias: bool = False,
    remat: str = "none",
) -> nn.Module:
    """The nanoGPT-shaped decoder; `vocab_size` comes from the data task."""
    check_remat(remat)
    return GPT(
        vocab_size=vocab_size,
        block_size=block_size,
        num_layers=num_layers,
        num_heads=num_heads,
        width=width,
        dropout=dropout,
        use_bias=use_bias,
        remat=remat,
    )


@gin.configurable
def bert_model(vocab_size: int, *, size: str = "tiny", **overrides) -> nn.Module:
    """BERT / RoPE / RPE (`position_type`) at a named size, any BertConfig field overridden."""
    return BertMlm(BertConfig.from_size(size, vocab_size=vocab_size, **overrides))


@gin.configurable
def bert_classifier(
    vocab_size: int, num_classes: int, *, size: str = "tiny", **overrides
) -> nn.Module:
    """The BERT-family encoder with BERT's pooler and a classifier (GLUE); its encoder
    parameters have `bert_model`'s names, so a pretrained encoder loads by name."""
    config = BertConfig.from_size(size, vocab_size=vocab_size, **overrides)
    return BertClassifier(config, num_classes=num_classes)


@gin.configurable
def t5_model(vocab_size: int, *, size: str = "tiny", **overrides) -> nn.Module:
    """T5 1.1 at a named size, any T5Config field overridden."""
    return T5(T5Config.from_size(size, vocab_size=vocab_size, **overrides))


for _fn, _name in [
    (CharTextTask, "CharTextTask"),
    (WordLMTask, "WordLMTask"),
    (MaskedLMTask, "MaskedLMTask"),
    (SpanCorruptionTask, "SpanCorruptionTask"),
    (ImageClassificationTask, "ImageClassificationTask"),
    (TfdsSource, "TfdsSource"),
    (lstm_model, "lstm_model"),
    (resnet_model, "resnet_model"),
    (SeqioSpanCorruptionTask, "SeqioSpanCorruptionTask"),
    (GlueTask, "GlueTask"),
]:
    gin.external_configurable(_fn, _name)
gin.external_configurable(optimizers.amos_optimizer, "amos_optimizer")
gin.external_configurable(optimizers.adamw_optimizer, "adamw_optimizer")
# The plug-and-play arms (gin_configs/optimizers/<arm>.gin binds
# `train.optimizer = @<arm>_optimizer`), and the train-set size of AdamW's EMA timescale.
for _arm, _variant in optimizers.PNP_ARMS.items():
    gin.external_configurable(
        functools.partial(optimizers.adam_pnp_optimizer, variant=_variant), f"{_arm}_optimizer"
    )
gin.external_configurable(optimizers.train_examples, "train_examples")
