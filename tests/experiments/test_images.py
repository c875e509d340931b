"""Image data: augmentations, deterministic batches, tfds sources built locally."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments.data.images import ImageClassificationTask, augment
from experiments.errors import ConfigError
from experiments.resnet.models import resnet_model


def test_crop_augmentation_is_a_shift_of_the_padded_image():
    images = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1) + 1
    out = augment(images, "digits", np.random.default_rng(0))
    assert out.shape == images.shape
    for original, shifted in zip(images, out):
        padded = np.pad(original, ((1, 1), (1, 1), (0, 0)))
        matches = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if np.array_equal(padded[dy : dy + 8, dx : dx + 8], shifted)
        ]
        assert matches, "every output is one crop of the padded image"


def test_cifar_augmentation_flips_about_half():
    images = np.random.default_rng(0).random((400, 4, 4, 3)).astype(np.float32)
    out = augment(
        np.pad(images, ((0, 0), (0, 0), (0, 0), (0, 0))), "cifar", np.random.default_rng(1)
    )
    assert out.shape == images.shape
    with pytest.raises(ConfigError, match="augmentation 'imagenet' runs only when streaming"):
        augment(images, "imagenet", np.random.default_rng(0))


def test_digits_task_batches():
    task = ImageClassificationTask("digits", augmentation="digits")
    assert task.model_kwargs() == {"num_classes": 10}
    batch = task.train_batch(seed=0, step=3, batch_size=16)
    assert batch["images"].shape == (16, 8, 8, 1) and batch["labels"].shape == (16,)
    np.testing.assert_array_equal(
        batch["images"], task.train_batch(seed=0, step=3, batch_size=16)["images"]
    )
    assert not np.array_equal(
        batch["images"], task.train_batch(seed=0, step=4, batch_size=16)["images"]
    )
    # A host's rows are its slice of the augmented global batch (any number of hosts).
    half = task.train_batch(seed=0, step=3, batch_size=16, rows=slice(8, 16))
    np.testing.assert_array_equal(half["images"], batch["images"][8:])
    np.testing.assert_array_equal(half["labels"], batch["labels"][8:])
    val = task.eval_batch("val", seed=0, index=0, batch_size=400)
    # Normalized by training statistics: roughly zero mean, unit variance.
    assert abs(float(val["images"].mean())) < 0.2 and 0.7 < float(val["images"].std()) < 1.3
    model = resnet_model(10, "tiny")
    # Jitted: a compile each costs less than op-by-op dispatch.
    variables = jax.jit(lambda key, b: task.init_variables(model, key, b))(
        jax.random.PRNGKey(0), batch
    )
    loss_fn = jax.jit(
        lambda v, b, key, train: task.loss(model, v, b, train=train, rng=key),
        static_argnames="train",
    )
    loss, metrics, updated = loss_fn(variables, batch, jax.random.PRNGKey(1), train=True)
    assert abs(float(loss) - np.log(10)) < 1.0 and "batch_stats" in updated
    few = {k: v[:32] for k, v in val.items()}  # The loss path, not its cost at 400 images.
    eval_loss, _, none = loss_fn(variables, few, jax.random.PRNGKey(1), train=False)
    assert np.isfinite(float(eval_loss)) and none == {}


@pytest.fixture(scope="module")
def tiny_image_tfds(tmp_path_factory):
    import tensorflow_datasets as tfds

    class TinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(40, 48, 3)),
                        "label": tfds.features.ClassLabel(num_classes=3),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(0, 60),
                "test": self._generate_examples(1, 12),
                "hidden": self._generate_examples(2, 4, hidden=True),
            }

        def _generate_examples(self, seed, n, hidden=False):
            rng = np.random.default_rng(seed)
            for i in range(n):
                label = -1 if hidden else i % 3
                image = np.full((40, 48, 3), 60 * max(label, 0), np.uint8) + rng.integers(
                    0, 40, (40, 48, 3), dtype=np.uint8
                )
                yield i, {"image": image, "label": label}  # Label -1: hidden, as GLUE's test.

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyImages(data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_images_in_memory(tiny_image_tfds):
    task = ImageClassificationTask("tiny_images", data_dir=tiny_image_tfds, augmentation="cifar")
    assert task.num_classes == 3 and task.splits.train_images.shape == (60, 40, 48, 3)
    batch = task.train_batch(seed=0, step=1, batch_size=8)
    assert batch["images"].shape == (8, 40, 48, 3)


def test_tfds_images_streaming_resumes_exactly(tiny_image_tfds):
    task = ImageClassificationTask(
        "tiny_images",
        data_dir=tiny_image_tfds,
        augmentation="imagenet",
        in_memory=False,
        image_size=32,
    )
    in_order = [task.train_batch(seed=0, step=s, batch_size=8) for s in (1, 2, 3)]
    assert in_order[0]["images"].shape == (8, 32, 32, 3)
    # Counted from the dataset's metadata, as the in-memory task counts its arrays.
    assert task.num_train_examples == 60
    resumed = ImageClassificationTask(
        "tiny_images",
        data_dir=tiny_image_tfds,
        augmentation="imagenet",
        in_memory=False,
        image_size=32,
    )
    third = resumed.train_batch(seed=0, step=3, batch_size=8)
    np.testing.assert_allclose(third["images"], in_order[2]["images"], rtol=1e-6)
    np.testing.assert_array_equal(third["labels"], in_order[2]["labels"])
    val = task.eval_batch("val", seed=0, index=0, batch_size=4)
    assert val["images"].shape == (4, 32, 32, 3)


def test_missing_tfds_dataset_names_data_dir_and_dataset(tmp_path):
    with pytest.raises(
        ConfigError,
        match=rf"'cifar10' is not prepared in data_dir "
        rf"'{tmp_path}'",
    ):
        ImageClassificationTask("cifar10", data_dir=str(tmp_path), augmentation="cifar")
    with pytest.raises(ConfigError, match="needs a data_dir"):
        ImageClassificationTask("cifar10", augmentation="cifar")


# ------------------------------------------------------------------------------ splits


def _same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


def test_digits_splits_are_disjoint_cover_the_data_and_keep_the_training_split():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images[..., None] * (255.0 / 16.0)).astype(np.float32)
    # The split before the test split existed, computed here from its definition: a fixed
    # permutation (seed 0), its first 20% held out, the rest training.
    order = np.random.default_rng(0).permutation(1797)
    old_train, held = order[359:], order[:359]
    task = ImageClassificationTask("digits")
    s = task.splits
    assert _same_rows(s.train_images, images[old_train])
    np.testing.assert_array_equal(s.train_labels, data.target[old_train])
    # Validation: the first 180 held-out images; test: the other 179.
    assert _same_rows(s.val_images, images[held[:180]])
    assert _same_rows(s.test_images, images[held[180:]])
    np.testing.assert_array_equal(s.test_labels, data.target[held[180:]])
    assert len(s.train_labels) + len(s.val_labels) + len(s.test_labels) == 1797
    assert task.split_names == {
        "train": "permutation[359:]",
        "val": "permutation[:180]",
        "test": "permutation[180:359]",
    }
    # The normalization is the training split's, as before.
    np.testing.assert_allclose(task.mean, images[old_train].mean(axis=(0, 1, 2)), rtol=1e-5)


def test_digits_test_batches_are_pure_and_drawn_from_the_test_split():
    task = ImageClassificationTask("digits")
    a = task.eval_batch("test", seed=0, index=2, batch_size=32)
    b = ImageClassificationTask("digits").eval_batch("test", seed=0, index=2, batch_size=32)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert not np.array_equal(
        a["images"], task.eval_batch("test", seed=0, index=3, batch_size=32)["images"]
    )
    assert not np.array_equal(
        a["images"], task.eval_batch("val", seed=0, index=2, batch_size=32)["images"]
    )
    # Every image is one of the test split's (normalized, not augmented).
    test = (task.splits.test_images - task.mean) / task.std
    for image in a["images"]:
        assert np.any(np.all(np.isclose(test, image), axis=(1, 2, 3)))
    with pytest.raises(ConfigError, match="split='dev'"):
        task.eval_batch("dev", seed=0, index=0, batch_size=4)


def test_tfds_images_held_out_split_is_halved_or_the_own_test_split_used(tiny_image_tfds):
    import tensorflow_datasets as tfds

    builder = tfds.builder("tiny_images", data_dir=tiny_image_tfds)
    train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    task = ImageClassificationTask("tiny_images", data_dir=tiny_image_tfds, augmentation="cifar")
    assert task.split_names == {"train": "train", "val": "test[0:6]", "test": "test[6:12]"}
    s = task.splits
    assert _same_rows(s.train_images, train["image"])  # training as before
    assert _same_rows(np.concatenate([s.val_images, s.test_images]), test["image"])
    np.testing.assert_array_equal(np.concatenate([s.val_labels, s.test_labels]), test["label"])
    own = ImageClassificationTask(
        "tiny_images",
        data_dir=tiny_image_tfds,
        augmentation="cifar",
        train_split="train[:50]",
        val_split="train[50:]",
        test_split="test",
    )
    assert _same_rows(own.splits.test_images, test["image"])
    assert _same_rows(own.splits.val_images, train["image"][50:])
    with pytest.raises(ConfigError, match="'hidden' .* hidden labels"):
        ImageClassificationTask(
            "tiny_images", data_dir=tiny_image_tfds, augmentation="cifar", test_split="hidden"
        )
    with pytest.raises(ConfigError, match="no split 'dev' .*test_split"):
        ImageClassificationTask(
            "tiny_images", data_dir=tiny_image_tfds, augmentation="cifar", test_split="dev"
        )


def test_tfds_images_streaming_test_batches_are_pure(tiny_image_tfds):
    def make():
        return ImageClassificationTask(
            "tiny_images",
            data_dir=tiny_image_tfds,
            augmentation="imagenet",
            in_memory=False,
            image_size=32,
        )

    task = make()
    first = [task.eval_batch("test", seed=0, index=i, batch_size=3) for i in range(2)]
    again = make().eval_batch("test", seed=0, index=1, batch_size=3)  # out of order
    np.testing.assert_allclose(again["images"], first[1]["images"], rtol=1e-6)
    np.testing.assert_array_equal(again["labels"], first[1]["labels"])
    val = task.eval_batch("val", seed=0, index=0, batch_size=3)
    assert not np.allclose(val["images"], first[0]["images"])


def test_a_whole_split_evaluation_reads_every_held_out_image_once():
    task = ImageClassificationTask("digits", augmentation="digits", eval_whole_split=True)
    images, labels = task.splits.split("val")
    n = len(labels)
    assert task.eval_num_batches("val", 32) == -(-n // 32) and n % 32  # a padded last batch
    batches = [
        task.eval_batch("val", seed=s, index=i, batch_size=32)
        for s, i in [(0, k) for k in range(task.eval_num_batches("val", 32))]
    ]
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.sum() == n and weights[:n].all() and not weights[n:].any()
    # In order, each image once, normalized as the drawn batches are.
    got = np.concatenate([b["images"] for b in batches])[:n]
    np.testing.assert_allclose(got, (images.astype(np.float32) - task.mean) / task.std)
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches])[:n], labels)
    # The seed does not matter (no draws), a host's rows are its slice, and past the end
    # is an error naming the split's size.
    again = task.eval_batch("val", seed=7, index=1, batch_size=32, rows=slice(16, 32))
    np.testing.assert_array_equal(again["images"], batches[1]["images"][16:])
    with pytest.raises(ConfigError, match=f"val: {n} examples make"):
        task.eval_batch("val", seed=0, index=len(batches), batch_size=32)
    # The padding weighs nothing in the loss: the last batch's loss is that of its images.
    model = resnet_model(10, "tiny")
    train = task.train_batch(seed=0, step=0, batch_size=8)
    assert train["weights"].tolist() == [1.0] * 8  # one objective reads both kinds of batch
    variables = task.init_variables(model, jax.random.PRNGKey(0), train)
    last = batches[-1]
    loss, _, _ = task.loss(model, variables, last, train=False, rng=jax.random.PRNGKey(1))
    real = {k: v[last["weights"] > 0] for k, v in last.items()}
    expected, _, _ = task.loss(model, variables, real, train=False, rng=jax.random.PRNGKey(1))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ConfigError, match="in memory"):
        ImageClassificationTask("digits", in_memory=False, eval_whole_split=True)
