"""Image classification data with the standard augmentations, and its task (the loss is
``experiments.objectives.Classification``).

Sources: scikit-learn's bundled digits (8x8 grayscale, offline), or any tfds image
dataset prepared under a data directory (``cifar10``, ``imagenet2012``, ...; never
downloaded). Small datasets are held in memory and batched in NumPy; ``imagenet2012``-sized
ones stream through tf.data (``in_memory=False``).

Augmentations (training only):
  * ``"cifar"``: zero-pad 4 pixels, random crop back to size, random horizontal flip;
  * ``"digits"``: zero-pad 1 pixel and random crop (no flip: digits are not symmetric);
  * ``"imagenet"``: random-resized crop (8%-100% area, 3/4-4/3 aspect) and flip; evaluation
    resizes to 256/224 of the size and center-crops;
  * ``"none"``.
Images are normalized per channel with the training split's mean and std (ImageNet's
constants when streaming). Every batch is a pure function of (seed, step): in memory, the
examples and the augmentation are drawn by ``experiments.task.batch_rng``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from experiments.errors import ConfigError
from experiments.objectives import Classification
from experiments.task import ObjectiveTask, batch_rng

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
AUGMENTATIONS = ("cifar", "digits", "imagenet", "none")


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    train_images: np.ndarray  # (N, H, W, C) uint8 or float
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int


def load_digits(val_fraction: float = 0.2, seed: int = 0) -> ImageSplits:
    """scikit-learn's 1797 8x8 digits (values 0..16), a fixed shuffled split."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = (data.images[..., None] * (255.0 / 16.0)).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(len(images) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return ImageSplits(
        images[train],
        data.target[train].astype(np.int32),
        images[val],
        data.target[val].astype(np.int32),
        num_classes=10,
    )


def _tfds_builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names.
        raise ConfigError(
            f"tfds dataset {name!r} is unknown or unreadable in data_dir {data_dir!r}: {e}"
        ) from None
    if not builder.is_prepared():
        raise ConfigError(
            f"tfds dataset {name!r} is not prepared in data_dir {data_dir!r}; "
            "prepare it there first (nothing is downloaded at run time)."
        )
    return builder


def load_tfds_images(
    name: str, data_dir: str, train_split: str = "train", val_split: str = "test"
) -> ImageSplits:
    """A prepared tfds image dataset (features ``image``, ``label``) held in memory."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    arrays = {}
    for split in (train_split, val_split):
        if split not in builder.info.splits:
            raise ConfigError(
                f"tfds dataset {name!r} in {data_dir!r} has no split "
                f"{split!r}; it has {sorted(builder.info.splits)}"
            )
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        arrays[split] = (np.asarray(data["image"]), np.asarray(data["label"], np.int32))
    return ImageSplits(
        *arrays[train_split],
        *arrays[val_split],
        num_classes=builder.info.features["label"].num_classes,
    )


def augment(images: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The training augmentation ``kind`` on a batch (B, H, W, C), in NumPy."""
    if kind == "none":
        return images
    if kind not in ("cifar", "digits"):
        raise ConfigError(
            f"augmentation {kind!r} runs only when streaming; in memory use "
            "'cifar', 'digits' or 'none'"
        )
    pad = 4 if kind == "cifar" else 1
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, size=b)
    dx = rng.integers(0, 2 * pad + 1, size=b)
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if kind == "cifar":
        flip = rng.random(b) < 0.5
        out[flip] = out[flip, :, ::-1]
    return out


class ImageClassificationTask(ObjectiveTask):
    """Classification with a model called as ``model.apply(v, images, train=...)``.

    Args:
      dataset: ``"digits"`` (scikit-learn) or a tfds name prepared under ``data_dir``.
      augmentation: one of ``AUGMENTATIONS``.
      in_memory: hold the splits as arrays (small datasets); False streams with tf.data.
      image_size: output size when streaming (random-resized / center crops).
      loss_normalization: of the ``Classification`` objective; 'mean' over the batch.
    """

    unit_name = "examples"
    units_per_example = 1

    def __init__(
        self,
        dataset: str = "digits",
        *,
        data_dir: str | None = None,
        augmentation: str = "digits",
        train_split: str = "train",
        val_split: str = "test",
        in_memory: bool = True,
        image_size: int = 224,
        loss_normalization: str = "mean",
    ):
        self.objective = Classification(normalization=loss_normalization)
        if augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
        self.augmentation, self.in_memory, self.image_size = augmentation, in_memory, image_size
        # Where the data comes from, for run.json (launch.train.describe_data).
        self.dataset, self.data_dir = dataset, data_dir
        self.split_names = {"train": train_split, "val": val_split}
        if dataset != "digits" and not data_dir:
            raise ConfigError(f"tfds dataset {dataset!r} needs a data_dir (gin binding DATA_DIR)")
        if not in_memory:
            self._stream = _ImageStream(
                _tfds_builder(dataset, data_dir), train_split, val_split, augmentation, image_size
            )
            self.num_classes = self._stream.num_classes
            return
        self.splits = (
            load_digits()
            if dataset == "digits"
            else load_tfds_images(dataset, data_dir, train_split, val_split)
        )
        self.num_classes = self.splits.num_classes
        train = self.splits.train_images.astype(np.float32)
        self.mean = train.mean(axis=(0, 1, 2))
        self.std = train.std(axis=(0, 1, 2)) + 1e-6

    def model_kwargs(self) -> dict[str, int]:
        return {"num_classes": self.num_classes}

    def _batch(self, images, labels, rng, batch_size, rows, train):
        picks = rng.integers(0, len(images), size=batch_size)
        batch = images[picks].astype(np.float32)
        if train:
            # The whole global batch is augmented, then sliced: a host's rows do not
            # depend on the number of hosts.
            batch = augment(batch, self.augmentation, rng)
        if rows is not None:
            batch, picks = batch[rows], picks[rows]
        return {"images": (batch - self.mean) / self.std, "labels": labels[picks]}

    def train_batch(
        self, *, seed: int, step: int, batch_size: int, rows: slice | None = None
    ) -> dict[str, np.ndarray]:
        if not self.in_memory:
            return self._stream.train_batch(seed, step, batch_size, rows)
        s = self.splits
        rng = batch_rng(seed=seed, split="train", purpose="train", index=step)
        return self._batch(s.train_images, s.train_labels, rng, batch_size, rows, train=True)

    def eval_batch(
        self, split: str, *, seed: int, index: int, batch_size: int, rows: slice | None = None
    ) -> dict[str, np.ndarray]:
        if not self.in_memory:
            return self._stream.eval_batch(split, seed, index, batch_size, rows)
        s = self.splits
        rng = batch_rng(seed=seed, split=split, purpose="eval", index=index)
        images, labels = (
            (s.val_images, s.val_labels) if split == "val" else (s.train_images, s.train_labels)
        )
        return self._batch(images, labels, rng, batch_size, rows, train=False)


class _ImageStream:
    """tf.data batches for datasets too large for memory (ImageNet).

    The order is fixed by the seed (shuffled files and a seeded shuffle buffer, with
    deterministic tf.data), and augmentation draws stateless randomness from (seed, example
    index); batch ``step`` is reached by skipping the records before it, so a resumed run
    sees the same batches. Iterators are kept while steps arrive in order.
    """

    def __init__(
        self, builder, train_split: str, val_split: str, augmentation: str, image_size: int
    ):
        self.builder, self.augmentation, self.image_size = builder, augmentation, image_size
        self.splits = {"train": train_split, "val": val_split}
        self.num_classes = builder.info.features["label"].num_classes
        self._iterators: dict[tuple, tuple[int, Any]] = {}

    def _dataset(self, split: str, seed: int, batch_size: int, train: bool, skip_batches: int):
        import tensorflow as tf
        import tensorflow_datasets as tfds

        ds = self.builder.as_dataset(
            split=self.splits[split],
            shuffle_files=train,
            read_config=tfds.ReadConfig(shuffle_seed=seed, interleave_cycle_length=1),
        )
        ds = ds.repeat()
        if train:
            ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        ds = ds.enumerate().skip(skip_batches * batch_size)
        size, kind = self.image_size, self.augmentation

        def prepare(index, example):
            image = tf.cast(example["image"], tf.float32)
            if train and kind == "imagenet":
                key = tf.stack([tf.cast(seed, tf.int64), index])
                begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
                    tf.shape(image),
                    tf.zeros([0, 0, 4]),
                    seed=key,
                    area_range=(0.08, 1.0),
                    aspect_ratio_range=(3 / 4, 4 / 3),
                    min_object_covered=0.0,
                    use_image_if_no_bounding_boxes=True,
                )
                image = tf.image.resize(tf.slice(image, begin, crop), [size, size])
                image = tf.image.stateless_random_flip_left_right(image, key)
            else:
                short = tf.cast(tf.reduce_min(tf.shape(image)[:2]), tf.float32)
                scale = size * 256 / 224 / short
                shape = tf.cast(tf.cast(tf.shape(image)[:2], tf.float32) * scale, tf.int32)
                image = tf.image.resize_with_crop_or_pad(tf.image.resize(image, shape), size, size)
            return {
                "images": (image - IMAGENET_MEAN) / IMAGENET_STD,
                "labels": tf.cast(example["label"], tf.int32),
            }

        options = tf.data.Options()
        options.deterministic = True
        return ds.map(prepare).batch(batch_size, drop_remainder=True).with_options(options)

    def _next(self, split, seed, index, batch_size, rows, train):
        import tensorflow_datasets as tfds

        key = (split, seed, batch_size, train)
        position, iterator = self._iterators.get(key, (None, None))
        if position != index:  # Out of order (a resume): rebuild, skipping earlier batches.
            iterator = iter(tfds.as_numpy(self._dataset(split, seed, batch_size, train, index)))
        batch = next(iterator)
        self._iterators[key] = (index + 1, iterator)
        return {k: v[rows] if rows is not None else v for k, v in batch.items()}

    def train_batch(self, seed, step, batch_size, rows):
        return self._next("train", seed, step - 1, batch_size, rows, train=True)

    def eval_batch(self, split, seed, index, batch_size, rows):
        return self._next(split, seed, index, batch_size, rows, train=False)
