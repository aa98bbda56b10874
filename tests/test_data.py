"""Data modules: stratified seeded splits, train-only normalisation, IDX files, augmentation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data.arrays import random_affine
from workbench.data.images import read_idx
from workbench.registry import create_data


def test_mnist_subset_splits_are_stratified_disjoint_and_seeded():
    data = create_data("mnist_subset", seed=0)
    sizes = {name: len(data.split(name)[1]) for name in ("train", "val", "test")}
    assert sizes == {"train": 4000, "val": 500, "test": 500}
    for name in ("val", "test"):
        assert (
            np.bincount(data.split(name)[1].numpy()).tolist() == [50] * 10
        )  # 10 % of 500 per digit
    train = {row.numpy().tobytes() for row in data.split("train")[0][:, 0]}
    assert not any(row.numpy().tobytes() in train for row in data.split("test")[0][:, 0])
    again = create_data("mnist_subset", seed=0)
    assert torch.equal(again.split("test")[0], data.split("test")[0])
    other = create_data("mnist_subset", seed=1)
    assert not torch.equal(other.split("test")[0], data.split("test")[0])
    assert data.fingerprint_ == again.fingerprint_ != other.fingerprint_


def test_normalisation_is_fitted_on_the_training_split_only():
    data = create_data("digits", seed=0)
    train = data.split("train")[0]
    assert train.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert train.std().item() == pytest.approx(1.0, abs=1e-3)
    assert data.input_shape == (1, 8, 8)
    # Back to pixels: digits are 0..16 scaled to [0, 1].
    pixels = data.to_pixels(data.split("test")[0])
    assert pixels.min().item() == pytest.approx(0.0, abs=1e-5) and pixels.max().item() <= 1.0 + 1e-5


def test_max_samples_subsamples_before_splitting():
    data = create_data("digits", seed=0, max_samples=200)
    total = sum(len(data.split(n)[1]) for n in ("train", "val", "test"))
    assert total == 200


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _write_mnist_dir(
    root: Path, n_train: int = 200, n_test: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (n_train, 28, 28))
    y_train = np.arange(n_train) % 10
    x_test = rng.integers(0, 256, (n_test, 28, 28))
    y_test = np.arange(n_test) % 10
    _write_idx(root / "train-images-idx3-ubyte.gz", x_train)
    _write_idx(root / "train-labels-idx1-ubyte.gz", y_train)
    _write_idx(root / "t10k-images-idx3-ubyte", x_test)  # plain and gzipped both read
    _write_idx(root / "t10k-labels-idx1-ubyte", y_test)
    return x_test, y_test


def test_read_idx_round_trips(tmp_path: Path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3-ubyte", array)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_idx_directory_keeps_its_own_test_split(tmp_path: Path):
    x_test, y_test = _write_mnist_dir(tmp_path)
    data = create_data("idx", path=str(tmp_path), seed=0)
    images, labels = data.split("test")
    assert labels.tolist() == y_test.tolist()
    assert np.allclose(data.to_pixels(images)[:, 0].numpy(), x_test / 255.0, atol=1e-5)
    assert len(data.split("train")[1]) + len(data.split("val")[1]) == 200


def test_idx_missing_file_names_the_path(tmp_path: Path):
    _write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        create_data("idx", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        create_data("idx", path=str(tmp_path / "no_such_dir"))


def test_random_affine_moves_pixels_but_keeps_shape_and_identity_is_identity():
    torch.manual_seed(0)
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0
    moved = random_affine(images)
    assert moved.shape == images.shape
    assert (moved - images).abs().sum() > 1.0
    same = random_affine(images, max_degrees=0.0, max_shift=0.0)
    assert torch.allclose(same, images, atol=1e-5)


# --- tables -----------------------------------------------------------------------------------
def test_tabular_features_are_standardised_with_training_statistics_only():
    data = create_data("breast_cancer", seed=0, test_fraction=0.2)
    train, _ = data.split("train")
    test, _ = data.split("test")
    assert train.shape[1] == 30 and data.model_kwargs()["input_shape"] == (30,)
    torch.testing.assert_close(train.mean(0), torch.zeros(30), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(30), atol=1e-3, rtol=0)
    assert float(test.mean(0).abs().max()) > 1e-3  # the test split was not used to fit
    raw_first = data.to_pixels(test[:1])[0].numpy()
    from sklearn.datasets import load_breast_cancer

    assert any(np.allclose(raw_first, row, rtol=1e-4) for row in load_breast_cancer().data)
    assert data.class_names == ["malignant", "benign"] and len(data.feature_names) == 30


def test_csv_loader_reads_features_and_labels(tmp_path: Path):
    path = tmp_path / "table.csv"
    rows = ["a,b,label"] + [f"{i},{i % 3},{'yes' if i % 2 else 'no'}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    data = create_data("csv", path=str(path), target="label", seed=0)
    x, y = data.split("train")
    assert x.shape[1] == 2 and set(y.tolist()) == {0, 1}
    assert data.feature_names == ["a", "b"] and data.class_names == ["no", "yes"]
    sizes = sum(len(data.split(s)[1]) for s in ("train", "val", "test"))
    assert sizes == 40


def test_csv_loader_names_what_is_wrong(tmp_path: Path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="data.options.target: column 'label' not in"):
        create_data("csv", path=str(path), seed=0)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        create_data("csv", path=str(tmp_path / "missing.csv"), seed=0)
    path.write_text("a,kind,label\n1,x,0\n")
    with pytest.raises(ValueError, match=r"non-numeric feature columns \['kind'\]"):
        create_data("csv", path=str(path), seed=0)


def _table(path: Path, rows: list[str]) -> str:
    path.write_text("\n".join(["a,b,label", *rows]) + "\n")
    return str(path)


def _good_rows(n: int = 40) -> list[str]:
    return [f"{i},{i % 3},{'yes' if i % 2 else 'no'}" for i in range(n)]


def test_csv_empty_labels_are_rejected_not_made_a_class(tmp_path: Path):
    rows = _good_rows()
    for row in (3, 8, 16):  # data rows 4, 9 and 17, counting the first data row as 1
        rows[row] = rows[row].rsplit(",", 1)[0] + ","
    path = _table(tmp_path / "labels.csv", rows)
    with pytest.raises(ValueError) as error:
        create_data("csv", path=path, seed=0)
    message = str(error.value)
    assert message.startswith(f"data.path: {path}: ")
    assert "column 'label' has 3 empty values (data rows 4, 9, 17)" in message
    assert "drop or fill them" in message


def test_csv_empty_or_infinite_features_are_rejected_naming_each_column(tmp_path: Path):
    rows = _good_rows()
    rows[0] = ",0,no"  # an empty feature
    rows[5] = "5,inf,yes"
    rows[6] = "6,-inf,no"
    rows[7] = ",nan,yes"  # two columns in one row
    rows[9] = "9,1e39,yes"  # finite, but infinite as the float32 the model sees
    path = _table(tmp_path / "features.csv", rows)
    with pytest.raises(ValueError) as error:
        create_data("csv", path=path, seed=0)
    message = str(error.value)
    assert "column 'a' has 2 empty values (data rows 1, 8)" in message
    both = "column 'b' has 1 empty value (data row 8) and 3 infinite values (data rows 6, 7, 10)"
    assert both in message
    assert "5 of 40 rows affected" in message


def test_csv_long_lists_of_bad_rows_are_shortened(tmp_path: Path):
    rows = [f"{i},,{i % 2}" for i in range(30)]
    path = _table(tmp_path / "many.csv", rows)
    with pytest.raises(
        ValueError,
        match=r"column 'b' has 30 empty values \(data rows 1, 2, 3, 4, "
        r"5, \.\.\. 30\)",
    ):
        create_data("csv", path=path, seed=0)


def test_csv_needs_rows_and_two_classes(tmp_path: Path):
    path = _table(tmp_path / "header_only.csv", [])
    with pytest.raises(ValueError, match=r"data.path: .*header_only.csv has no data rows"):
        create_data("csv", path=path, seed=0)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"data.path: .*empty.csv is empty"):
        create_data("csv", path=str(empty), seed=0)
    path = _table(tmp_path / "one_class.csv", [f"{i},{i},yes" for i in range(30)])
    with pytest.raises(
        ValueError, match=r"column 'label' .* holds a single class \('yes'\); .* at least two"
    ):
        create_data("csv", path=path, seed=0)


# --- sequences --------------------------------------------------------------------------------
def test_sequential_mnist_reads_rows_as_time_steps():
    data = create_data("sequential_mnist", seed=0, max_samples=200)
    images = create_data("mnist_subset", seed=0, max_samples=200)
    rows, labels = data.split("test")
    assert rows.shape[1:] == (28, 28) and data.model_kwargs()["input_shape"] == (28, 28)
    torch.testing.assert_close(rows, images.split("test")[0][:, 0])  # same digits, same order
    assert torch.equal(labels, images.split("test")[1])


def test_adding_problem_targets_by_hand():
    from workbench.data.sequences import adding_problem

    x, y = adding_problem(500, 20, np.random.default_rng(0))
    assert x.shape == (500, 20, 2) and y.shape == (500,)
    markers = x[:, :, 1]
    assert (markers.sum(1) == 2).all()
    assert (markers[:, :10].sum(1) == 1).all() and (markers[:, 10:].sum(1) == 1).all()
    np.testing.assert_allclose(y, (x[:, :, 0] * markers).sum(1), rtol=1e-6)
    again, _ = adding_problem(500, 20, np.random.default_rng(0))
    assert np.array_equal(x, again)
    # The sum of two U(0, 1) values has variance 1/6: the baseline of predicting the mean.
    _, many = adding_problem(20_000, 20, np.random.default_rng(1))
    assert many.var() == pytest.approx(1 / 6, rel=0.03)


def test_adding_data_module_splits_are_seeded_and_options_checked():
    data = create_data("adding", length=30, n_train=64, n_val=16, n_test=16, seed=3)
    assert data.split("train")[0].shape == (64, 30, 2)
    assert data.model_kwargs() == {"input_shape": (30, 2), "num_classes": 1, "task": "regression"}
    other = create_data("adding", length=30, n_train=128, n_val=16, n_test=16, seed=3)
    assert torch.equal(data.split("test")[0], other.split("test")[0])  # test set stays put
    with pytest.raises(ValueError, match="data.options.lenght"):
        create_data("adding", lenght=30)


# --- environments -----------------------------------------------------------------------------
def test_gym_module_sizes_the_agent_and_rejects_bad_environments():
    data = create_data("gym", env="CartPole-v1", steps_per_epoch=50, seed=0)
    assert data.model_kwargs() == {"input_shape": (4,), "num_classes": 2, "env": "CartPole-v1"}
    assert len(data.train_dataloader()) == 50
    states, _ = data.split("test")
    assert states.shape[1] == 4
    with pytest.raises(ValueError, match="data.options.env: cannot make 'NoSuchEnv-v0'"):
        create_data("gym", env="NoSuchEnv-v0")
    with pytest.raises(ValueError, match="needs discrete actions"):
        create_data("gym", env="Pendulum-v1")
