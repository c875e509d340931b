"""TensorFlow and TFDS for the input pipelines, imported on first use and kept off the GPUs.

TensorFlow only reads and preprocesses data here (tfds, tf.data, seqio); left alone, it
would claim the GPUs' memory JAX needs at its first op. So every place that reads through
TensorFlow imports it from here, which hides the GPUs from it first, as t5x does before
building its datasets. `import amos` never comes here.
"""

from __future__ import annotations

from typing import Any


def tensorflow() -> Any:
    """The `tensorflow` module, with no GPU visible to it."""
    import tensorflow as tf  # here, on first use: the module docstring

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialized its devices: nothing to hide now.
        pass
    return tf


def tensorflow_datasets() -> Any:
    """The `tensorflow_datasets` module, TensorFlow kept off the GPUs (`tensorflow`)."""
    tensorflow()
    import tensorflow_datasets as tfds  # here, after the GPUs are hidden

    return tfds


def seqio_module() -> Any:
    """The `seqio` module (which imports TensorFlow), TensorFlow kept off the GPUs."""
    tensorflow()
    import seqio  # here, after the GPUs are hidden

    return seqio
