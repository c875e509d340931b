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

Splits: training as given (``train_split``); the held-out split (``val_split``: the digits'
fixed 20%, CIFAR's ``test``, ImageNet's ``validation``) is cut in two in its fixed order,
the first half validation and the second half test (``experiments.data.splits``), unless
``test_split`` names a labelled test split of the dataset's own, which is then the test
split and the whole ``val_split`` validation. ``split_names`` records what each is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from experiments.data.splits import first_fraction, halve_tfds_split, halves
from experiments.data.tf_import import tensorflow, tensorflow_datasets
from experiments.errors import ConfigError
from experiments.objectives import Classification
from experiments.task import (
    SPLITS,
    ObjectiveTask,
    batch_rng,
    reads_whole_split,
    whole_split_num_batches,
    whole_split_windows,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
AUGMENTATIONS = ("cifar", "digits", "imagenet", "none")


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    train_images: np.ndarray  # (N, H, W, C) uint8 or float
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of split ``name``: 'train', 'val' or 'test'."""
        if name not in SPLITS:
            raise ConfigError(f"no split {name!r}; the images have 'train', 'val' and 'test'")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


DIGITS_HELD_OUT = 0.2  # The fraction of the digits held out (validation, then test).


def held_out_order(n: int, held_out_fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Indices of ``n`` examples per split: a fixed permutation, its first
    ``held_out_fraction`` held out (validation, then test), the rest training."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = int(n * held_out_fraction)
    val, test = halves(order[:n_held])
    return {"train": order[n_held:], "val": val, "test": test}


def load_digits(held_out_fraction: float = DIGITS_HELD_OUT, seed: int = 0) -> ImageSplits:
    """scikit-learn's 1797 8x8 digits (values 0..16), a fixed shuffled split."""
    # Here: scikit-learn is slow to import, and every run imports this module (gin).
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = (data.images[..., None] * (255.0 / 16.0)).astype(np.float32)
    labels = data.target.astype(np.int32)
    order = held_out_order(len(images), held_out_fraction, seed)
    arrays = [x for split in SPLITS for x in (images[order[split]], labels[order[split]])]
    return ImageSplits(*arrays, num_classes=10)


def digits_split_names(splits: ImageSplits, train_subset: float = 1.0) -> dict[str, str]:
    """The digits' splits as positions in their fixed permutation, for run.json."""
    n_val = len(splits.val_labels)
    n_held = n_val + len(splits.test_labels)
    train_end = "" if train_subset == 1.0 else str(n_held + len(splits.train_labels))
    return {
        "train": f"permutation[{n_held}:{train_end}]",
        "val": f"permutation[:{n_val}]",
        "test": f"permutation[{n_val}:{n_held}]",
    }


def _tfds_builder(name: str, data_dir: str):
    tfds = tensorflow_datasets()

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


def tfds_split_names(
    builder, train_split: str, val_split: str, test_split: str | None
) -> dict[str, str]:
    """The TFDS split specs of 'train', 'val' and 'test' (see the module docstring)."""
    name = builder.name
    given = {"train_split": train_split, "val_split": val_split, "test_split": test_split}
    for binding, spec in given.items():
        if spec is not None and spec.split("[")[0] not in builder.info.splits:
            raise ConfigError(
                f"tfds dataset {name!r} has no split {spec!r} (ImageClassificationTask."
                f"{binding}); it has {sorted(builder.info.splits)}"
            )
    if test_split is None:
        val, test = halve_tfds_split(
            val_split, builder.info.splits, "ImageClassificationTask.val_split"
        )
        return {"train": train_split, "val": val, "test": test}
    return {"train": train_split, "val": val_split, "test": test_split}


def load_tfds_images(builder, split_names: dict[str, str]) -> ImageSplits:
    """A prepared tfds image dataset (features ``image``, ``label``) held in memory; a
    split with hidden labels (stored as -1) is an error."""
    tfds = tensorflow_datasets()

    arrays = []
    for split in SPLITS:
        data = tfds.as_numpy(builder.as_dataset(split=split_names[split], batch_size=-1))
        labels = np.asarray(data["label"], np.int32)
        if len(labels) and labels.min() < 0:
            raise ConfigError(
                f"tfds dataset {builder.name!r}: split {split_names[split]!r} ({split}) has "
                f"hidden labels (-1); choose a labelled split"
            )
        arrays += [np.asarray(data["image"]), labels]
    return ImageSplits(*arrays, num_classes=builder.info.features["label"].num_classes)


def _first_training_part(splits: ImageSplits, fraction: float) -> ImageSplits:
    """``splits`` with the first ``fraction`` of its training examples (see
    ``experiments.data.splits.first_fraction``); the held-out splits unchanged."""
    if fraction == 1.0:
        return splits
    binding = "ImageClassificationTask.train_subset"
    return dataclasses.replace(
        splits,
        train_images=first_fraction(splits.train_images, fraction, binding),
        train_labels=first_fraction(splits.train_labels, fraction, binding),
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
      train_split, val_split, test_split: the tfds splits (module docstring); with
        ``test_split`` None, ``val_split`` is cut into validation and test halves.
      in_memory: hold the splits as arrays (small datasets); False streams with tf.data.
      image_size: output size when streaming (random-resized / center crops).
      loss_normalization: of the ``Classification`` objective; 'mean' over the batch.
      train_subset: train on the first ``int(n * train_subset)`` training examples only
        (in their fixed order; 0.25: the first quarter), in memory; validation and test
        are unchanged, and the normalization statistics are the subset's (all the model
        is trained on).
      eval_whole_split: evaluation reads each held-out split once, in order, in
        ``eval_num_batches`` batches (the last one's padding rows weigh 0), whatever
        EVAL_BATCHES says, instead of drawing EVAL_BATCHES batches with replacement: the
        loss of the split itself, for splits small enough that draws would add noise
        (the digits' 180 images). In memory only.
      model_call: how the model is called (``experiments.objectives.MODEL_CALLS``):
        "batch_norm" (``train=``, batch statistics; the ResNet) or "dropout"
        (``deterministic=``; a ViT).
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
        test_split: str | None = None,
        in_memory: bool = True,
        image_size: int = 224,
        loss_normalization: str = "mean",
        train_subset: float = 1.0,
        eval_whole_split: bool = False,
        model_call: str = "batch_norm",
    ):
        if eval_whole_split and not in_memory:
            raise ConfigError(
                "ImageClassificationTask.eval_whole_split needs the dataset in memory "
                "(in_memory=True)"
            )
        self.eval_whole_split = eval_whole_split
        # Whole splits pad their last batch with rows that must weigh nothing.
        weights = "weights" if eval_whole_split else None
        self.objective = Classification(
            normalization=loss_normalization, weights=weights, model_call=model_call
        )
        if augmentation not in AUGMENTATIONS:
            raise ConfigError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
        self.augmentation, self.in_memory, self.image_size = augmentation, in_memory, image_size
        # Where the data comes from, for run.json (launch.trainer.describe_data).
        self.dataset, self.data_dir = dataset, data_dir
        if dataset == "digits":
            if not in_memory:
                raise ConfigError("the digits are held in memory (in_memory=True)")
            self.splits = _first_training_part(load_digits(), train_subset)
            self.split_names = digits_split_names(self.splits, train_subset)
        else:
            if not data_dir:
                raise ConfigError(
                    f"tfds dataset {dataset!r} needs a data_dir (gin binding DATA_DIR)"
                )
            builder = _tfds_builder(dataset, data_dir)
            self.split_names = tfds_split_names(builder, train_split, val_split, test_split)
            if not in_memory:
                if train_subset != 1.0:
                    raise ConfigError(
                        "ImageClassificationTask.train_subset needs the dataset in memory "
                        "(in_memory=True); give a TFDS slice as train_split instead"
                    )
                self._stream = _ImageStream(builder, self.split_names, augmentation, image_size)
                self.num_classes = self._stream.num_classes
                # The dataset's metadata counts a split (or a slice of it) without reading it.
                self._streamed_train_examples = builder.info.splits[
                    self.split_names["train"]
                ].num_examples
                return
            self.splits = _first_training_part(
                load_tfds_images(builder, self.split_names), train_subset
            )
        self.num_classes = self.splits.num_classes
        train = self.splits.train_images.astype(np.float32)
        self.mean = train.mean(axis=(0, 1, 2))
        self.std = train.std(axis=(0, 1, 2)) + 1e-6

    def model_kwargs(self) -> dict[str, int]:
        return {"num_classes": self.num_classes}

    @property
    def num_train_examples(self) -> int:
        """The number of training images (after ``train_subset``; streamed, the tfds
        split's count): an epoch is this many examples, ``num_train_examples /
        batch_size`` iterations."""
        if not self.in_memory:
            return self._streamed_train_examples
        return len(self.splits.train_labels)

    def _batch(self, images, labels, rng, batch_size, rows, train):
        picks = rng.integers(0, len(images), size=batch_size)
        batch = images[picks].astype(np.float32)
        if train:
            # The whole global batch is augmented, then sliced: a host's rows do not
            # depend on the number of hosts.
            batch = augment(batch, self.augmentation, rng)
        if rows is not None:
            batch, picks = batch[rows], picks[rows]
        out = {"images": (batch - self.mean) / self.std, "labels": labels[picks]}
        if self.eval_whole_split:  # Every batch has the same keys, so one objective reads both.
            out["weights"] = np.ones(len(picks), np.float32)
        return out

    def eval_num_batches(self, split: str, batch_size: int) -> int:
        """Batches of ``batch_size`` that cover ``split`` (``eval_whole_split``)."""
        n = len(self.splits.split(split)[1])
        return whole_split_num_batches(n, window=1, stride=1, batch_size=batch_size)

    def _whole_split_batch(self, split, index, batch_size, rows):
        images, labels = self.splits.split(split)
        picks, valid = whole_split_windows(
            len(labels), window=1, stride=1, index=index, batch_size=batch_size, name=split
        )
        if rows is not None:
            picks, valid = picks[rows], valid[rows]
        batch = images[picks].astype(np.float32)
        return {
            "images": (batch - self.mean) / self.std,
            "labels": labels[picks],
            "weights": valid.astype(np.float32),
        }

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
        if reads_whole_split(self, split):
            return self._whole_split_batch(split, index, batch_size, rows)
        rng = batch_rng(seed=seed, split=split, purpose="eval", index=index)
        images, labels = self.splits.split(split)
        return self._batch(images, labels, rng, batch_size, rows, train=False)


class _ImageStream:
    """tf.data batches for datasets too large for memory (ImageNet).

    The order is fixed by the seed (shuffled files and a seeded shuffle buffer, with
    deterministic tf.data), and augmentation draws stateless randomness from (seed, example
    index); batch ``step`` is reached by skipping the records before it, so a resumed run
    sees the same batches. Iterators are kept while steps arrive in order.
    """

    def __init__(self, builder, split_names: dict[str, str], augmentation: str, image_size: int):
        self.builder, self.augmentation, self.image_size = builder, augmentation, image_size
        self.splits = dict(split_names)
        self.num_classes = builder.info.features["label"].num_classes
        self._iterators: dict[tuple, tuple[int, Any]] = {}

    def _dataset(self, split: str, seed: int, batch_size: int, train: bool, skip_batches: int):
        tf, tfds = tensorflow(), tensorflow_datasets()

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
        tfds = tensorflow_datasets()

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
        if split not in self.splits:
            raise ConfigError(f"no split {split!r}; the images have {sorted(self.splits)}")
        return self._next(split, seed, index, batch_size, rows, train=False)
