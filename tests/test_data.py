import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_JPEG, write_class_folders, write_official_archive

from beluga import data
from beluga.data import images


def test_official_archive_and_png_folders_import_to_the_same_arrays(tmp_path: Path):
    md5 = write_official_archive(tmp_path / "cifar-10-python.tar.gz")
    write_class_folders(tmp_path / "folders")
    from_archive = data.read_source(tmp_path / "cifar-10-python.tar.gz", md5)
    from_folders = data.read_source(tmp_path / "folders")
    assert from_archive.train.images.shape == (50, 32, 32, 3)
    assert from_archive.test.images.shape == (20, 32, 32, 3)
    assert from_archive.train.images.dtype == np.uint8
    # Folders are read class by class; the archive keeps its own order. Same multiset per class:
    for split in ("train", "test"):
        a, b = getattr(from_archive, split), getattr(from_folders, split)
        for label in range(10):
            ia = np.sort(a.images[a.labels == label].reshape(-1))
            ib = np.sort(b.images[b.labels == label].reshape(-1))
            np.testing.assert_array_equal(ia, ib)
    assert from_archive.classes == from_folders.classes == data.CLASSES


def test_extracted_official_folder_imports_like_the_archive(tmp_path: Path):
    md5 = write_official_archive(tmp_path / "cifar-10-python.tar.gz")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as archive:
        archive.extractall(tmp_path / "x", filter="data")
    a = data.read_source(tmp_path / "cifar-10-python.tar.gz", md5)
    b = data.read_source(tmp_path / "x" / "cifar-10-batches-py")
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)


def test_wrong_md5_is_a_clear_error(tmp_path: Path):
    write_official_archive(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(data.DataError, match="md5 is .*expected 0+ "):
        data.read_source(tmp_path / "cifar-10-python.tar.gz", "0" * 32)


def test_missing_class_folder_is_a_clear_error(tmp_path: Path):
    write_class_folders(tmp_path / "f")
    for image in (tmp_path / "f" / "test" / "cat").iterdir():
        image.unlink()
    (tmp_path / "f" / "test" / "cat").rmdir()
    with pytest.raises(data.DataError, match="test/cat is missing or empty"):
        data.read_source(tmp_path / "f")


def test_subset_takes_the_first_images_of_each_class(tmp_path: Path):
    md5 = write_official_archive(tmp_path / "c.tar.gz", train_per_class=5)
    full = data.read_source(tmp_path / "c.tar.gz", md5)
    small = data.subset(full, 3, 1)
    assert np.bincount(small.train.labels).tolist() == [3] * 10
    assert np.bincount(small.test.labels).tolist() == [1] * 10
    first_cat = np.flatnonzero(full.train.labels == 3)[0]
    np.testing.assert_array_equal(small.train.images[small.train.labels == 3][0],
                                  full.train.images[first_cat])  # fmt: skip
    with pytest.raises(data.DataError, match="data.train_per_class: 6 is more than the 5"):
        data.subset(full, 6, None)


def test_saved_file_round_trips_and_is_byte_stable(tmp_path: Path):
    md5 = write_official_archive(tmp_path / "c.tar.gz")
    cifar = data.read_source(tmp_path / "c.tar.gz", md5)
    data.save(tmp_path / "a.npz", cifar)
    data.save(tmp_path / "b.npz", cifar)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = data.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.train.images, cifar.train.images)
    np.testing.assert_array_equal(back.test.labels, cifar.test.labels)
    assert back.classes == data.CLASSES


@pytest.mark.skipif(not SHARED_JPEG.exists(), reason=f"{SHARED_JPEG} is absent on this machine")
def test_real_offline_jpeg_copy_imports_whole():
    cifar = data.read_source(SHARED_JPEG)
    assert cifar.train.images.shape == (50_000, 32, 32, 3)
    assert cifar.test.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(cifar.train.labels).tolist() == [5000] * 10
    assert np.bincount(cifar.test.labels).tolist() == [1000] * 10
    mean = cifar.train.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=5e-4)


def test_decoding_in_processes_gives_the_same_arrays_and_the_first_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    write_class_folders(tmp_path / "f")
    alone = data.read_source(tmp_path / "f")
    monkeypatch.setattr(images, "DECODE_CHUNK", 3)  # 17 chunks of the 50 training images
    shared = data.read_source(tmp_path / "f")
    np.testing.assert_array_equal(shared.train.images, alone.train.images)
    np.testing.assert_array_equal(shared.train.labels, alone.train.labels)
    np.testing.assert_array_equal(shared.test.images, alone.test.images)
    for name in ("dog/0001.png", "frog/0003.png"):  # in two chunks; the first in order is named
        (tmp_path / "f" / "train" / name).write_bytes(b"not an image")
    with pytest.raises(data.DataError, match=r"train/dog/0001.png: not a readable image"):
        data.read_source(tmp_path / "f")
