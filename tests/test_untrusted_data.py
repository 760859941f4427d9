"""A data source is untrusted: crafted files give one DataError line, never code or an OOM kill."""

import http.server
import os
import pickle
import struct
import tarfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import add_bytes, write_class_folders, write_official_archive
from PIL import Image

from beluga import data
from beluga.data import archive

BATCHES = "cifar-10-batches-py/"


def _official_with(tmp: Path, members: dict[str, bytes]) -> Path:
    """The tiny official archive with `members` replacing or joining its own."""
    write_official_archive(tmp / "good.tar.gz")
    with tarfile.open(tmp / "good.tar.gz") as good, tarfile.open(tmp / "c.tar.gz", "w:gz") as bad:
        for member in good.getmembers():
            blob = members.pop(member.name, None) or good.extractfile(member).read()
            add_bytes(bad, member.name, blob)
        for name, blob in members.items():
            add_bytes(bad, name, blob)
    return tmp / "c.tar.gz"


def _refusal(source: Path) -> str:
    """The one-line message `read_source` refuses `source` with."""
    with pytest.raises(data.DataError) as error:
        data.read_source(source, md5=None)
    message = str(error.value)
    assert "\n" not in message
    return message


def _batch(pixels: object, labels: object) -> bytes:
    return pickle.dumps({"data": pixels, "labels": labels})


class _WritesFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


class _RunsShell(_WritesFile):
    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("member", ["data_batch_1", "batches.meta"])
@pytest.mark.parametrize(
    ("payload", "refused"), [(_WritesFile, "io.open"), (_RunsShell, "posix.system")]
)
def test_pickle_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path: Path, member: str, payload: type, refused: str
):
    planted = tmp_path / "planted"
    blob = pickle.dumps({"data": payload(planted), "labels": [0]})
    message = _refusal(_official_with(tmp_path, {BATCHES + member: blob}))
    assert message == (
        f"{BATCHES}{member}: refused to load pickled global {refused} "
        "(only CIFAR-10's arrays, lists, dicts and strings are allowed)"
    )
    assert not planted.exists()


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.zeros((1, 6144), np.uint8), "data has shape (1, 6144), not (N, 3072)"),
        (np.zeros(6144, np.uint8), "data has shape (6144,), not (N, 3072)"),
        (np.full((2, 3072), 300), "pixel value 300 out of range 0..255"),
        (np.full((2, 3072), 0.5), "data holds float64 values, not integers"),
    ],
    ids=["two images in one row", "flat", "above 255", "floats"],
)
def test_batch_data_of_wrong_shape_or_values_is_refused(
    tmp_path: Path, pixels: np.ndarray, expected: str
):
    source = _official_with(tmp_path, {BATCHES + "data_batch_2": _batch(pixels, [0, 1])})
    assert _refusal(source).startswith(f"{BATCHES}data_batch_2: {expected}")


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([0.5, 1.0], "labels holds float64 values, not integers"),
        (["3", "1"], "labels holds <U1 values, not integers"),
        ([True, False], "labels holds bool values, not integers"),
        ([[0], [1]], "labels have shape (2, 1), not (N,)"),
    ],
    ids=["floats", "strings", "booleans", "2-D"],
)
def test_batch_labels_that_are_not_integers_are_refused(
    tmp_path: Path, labels: list, expected: str
):
    source = _official_with(
        tmp_path, {BATCHES + "test_batch": _batch(np.zeros((2, 3072), np.uint8), labels)}
    )
    assert _refusal(source) == f"{BATCHES}test_batch: {expected}"


def test_image_counts_unlike_the_official_set_are_noted(tmp_path: Path, capsys):
    md5 = write_official_archive(tmp_path / "c.tar.gz")
    data.read_source(tmp_path / "c.tar.gz", md5)
    assert capsys.readouterr().out.splitlines() == [
        f"note: {tmp_path / 'c.tar.gz'}: 50 train images (the official set has 50,000), "
        "20 test images (the official set has 10,000)"
    ]


@pytest.mark.parametrize(
    ("name", "image_format"),
    [("0000.png", "BMP"), ("0000.png", "GIF"), ("0000.png", "TIFF"), ("0005.bmp", "BMP")],
)
def test_images_that_are_not_png_or_jpeg_are_refused(tmp_path: Path, name: str, image_format: str):
    write_class_folders(tmp_path / "f")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "f/train/cat" / name, image_format)
    assert _refusal(tmp_path / "f") == (
        f"train/cat/{name}: not a readable image (not a PNG or JPEG image)"
    )


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds a few bytes of pixels: decoding would fail."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("side", "expected"),
    [
        (8000, "image is 8000x8000, not 32x32"),
        (10000, "image is 10000x10000, not 32x32"),  # PIL warns of a decompression bomb
        (20000, "image is too large to decode (Image size (400000000 pixels) exceeds"),
    ],
)
def test_image_size_is_checked_from_the_header_before_decoding(
    tmp_path: Path, side: int, expected: str
):
    write_class_folders(tmp_path / "f")
    (tmp_path / "f/test/dog/0001.png").write_bytes(_png_header(side, side))
    assert _refusal(tmp_path / "f").startswith(f"test/dog/0001.png: {expected}")


def _zeros_member(tmp: Path) -> Path:
    """A class-folder archive with a 4 MB member that compresses to a few KB."""
    write_class_folders(tmp / "f")
    with tarfile.open(tmp / "bomb.tar.gz", "w:gz") as archive:
        archive.add(tmp / "f", arcname="cifar")
        add_bytes(archive, "cifar/train/cat/bomb.png", bytes(4 * 2**20))
    return tmp / "bomb.tar.gz"


def _official(tmp: Path) -> Path:
    write_official_archive(tmp / "c.tar.gz")
    return tmp / "c.tar.gz"


@pytest.mark.parametrize(
    ("make", "cap", "value", "expected"),
    [
        (_zeros_member, "MAX_FILE_BYTES", 2**20, "cifar/train/cat/bomb.png: larger than 1,048,576"),
        (_official, "MAX_FILE_BYTES", 10_000, f"{BATCHES}data_batch_1: larger than 10,000 bytes"),
        (_official, "MAX_FILES", 5, "more than 5 files or members"),
        (_official, "MAX_TOTAL_BYTES", 50_000, "more than 50,000 bytes of files"),
    ],
    ids=["compression bomb", "file size", "file count", "total size"],
)
def test_reading_stops_at_the_caps(
    tmp_path: Path, monkeypatch, make, cap: str, value: int, expected: str
):
    source = make(tmp_path)
    monkeypatch.setattr(archive, cap, value)
    assert expected in _refusal(source)


def test_system_files_are_skipped_with_a_note(tmp_path: Path, capsys):
    root = tmp_path / "f"
    write_class_folders(root)
    junk = ["train/cat/.DS_Store", "test/dog/Thumbs.db", "train/desktop.ini",
            "__MACOSX/train/cat/._0000.png", "train/.ipynb_checkpoints/0000.png"]  # fmt: skip
    for name in junk:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\0\5\1junk")
    cifar = data.read_source(root)
    assert cifar.train.images.shape == (50, 32, 32, 3)
    notes = [line for line in capsys.readouterr().out.splitlines() if "hidden or system" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {root}: skipped 5 hidden or system")


def _member_twice(tmp: Path) -> Path:
    write_class_folders(tmp / "f")
    with tarfile.open(tmp / "c.tar.gz", "w:gz") as archive:
        archive.add(tmp / "f", arcname="cifar")
        add_bytes(
            archive, "./cifar/train/cat/0000.png", (tmp / "f/train/cat/0000.png").read_bytes()
        )
    return tmp / "c.tar.gz"


def _class_at_two_depths(tmp: Path) -> Path:
    write_class_folders(tmp / "f" / "a")
    (tmp / "f/b/train/cat").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp / "f/b/train/cat/0099.png")
    return tmp / "f"


def _batch_twice(tmp: Path) -> Path:
    blob = _batch(np.zeros((2, 3072), np.uint8), [0, 1])
    return _official_with(tmp, {"old/cifar-10-batches-py/data_batch_3": blob})


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_member_twice, "cifar/train/cat/0000.png appears twice (as 'cifar/train/cat/0000.png' "
                        "and './cifar/train/cat/0000.png')"),
        (_class_at_two_depths, "class folders in two places, a/test/airplane/ and b/train/cat/"),
        (_batch_twice, "data_batch_3 is there twice, cifar-10-batches-py/data_batch_3 and "
                       "old/cifar-10-batches-py/data_batch_3"),
    ],
    ids=["same archive member twice", "class at two depths", "batch twice"],
)  # fmt: skip
def test_duplicates_are_refused_not_merged(tmp_path: Path, make, expected: str):
    message = _refusal(make(tmp_path))
    assert expected in message, message


def test_sixteen_bit_greyscale_pngs_keep_their_grey_levels(tmp_path: Path):
    write_class_folders(tmp_path / "f")
    grey = np.full((32, 32), 0x8000, dtype=np.uint16)  # mid-grey, which RGB conversion clips
    grey[0, 0] = 0xFFFF
    Image.fromarray(grey).save(tmp_path / "f" / "train" / "cat" / "0000.png")
    cifar = data.read_source(tmp_path / "f")
    first_cat = cifar.train.images[np.flatnonzero(cifar.train.labels == 3)[0]]
    assert first_cat[1, 1].tolist() == [128, 128, 128] and first_cat[0, 0].tolist() == [255] * 3


def test_label_names_that_are_arrays_and_an_empty_test_batch_are_one_line(tmp_path: Path):
    meta = pickle.dumps({"label_names": [np.array([1, 2])] * 10})
    assert "names classes" in _refusal(_official_with(tmp_path, {BATCHES + "batches.meta": meta}))
    empty = _batch(np.zeros((0, 3072), dtype=np.uint8), [])
    source = _official_with(tmp_path, {BATCHES + "test_batch": empty})
    assert _refusal(source) == f"{BATCHES}test_batch: holds no images"


@pytest.mark.parametrize("url", ["https://example.invalid/a b.tar.gz", "https://[::1/x.tar.gz"])
def test_urls_that_http_refuses_are_one_line(tmp_path: Path, url: str):
    with pytest.raises(data.DataError, match="cannot download") as error:
        data.download(url, tmp_path, None)
    assert "\n" not in str(error.value)


# --- archive headers, sizes and streams -----------------------------------------------------


def _archive_with_long_name(tmp: Path, tar_format: int) -> Path:
    """A few KB of .tar.gz whose one member's name takes a 1 MiB pax or GNU record."""
    with tarfile.open(tmp / "long.tar.gz", "w:gz", format=tar_format) as archive:
        add_bytes(archive, "cifar/train/cat/" + "x" * 2**20, b"abc")
    return tmp / "long.tar.gz"


def _tar_header(name: str, size_field: bytes) -> bytes:
    """A ustar header for `name` with its size field as given, and a valid checksum."""
    header = bytearray(tarfile.TarInfo(name).tobuf(format=tarfile.USTAR_FORMAT))
    header[124:136] = size_field
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: _archive_with_long_name(tmp, tarfile.PAX_FORMAT),
         "a pax header of 1,048,606 bytes, more than the 65,536 a file name needs"),
        (lambda tmp: _archive_with_long_name(tmp, tarfile.GNU_FORMAT),
         "a GNU long-name header of 1,048,593 bytes, more than the 65,536 a file name needs"),
        (lambda tmp: add_file(tmp / "n.tar", _tar_header("a/train/cat/0.png", b"\xff" * 12)),
         "member 'a/train/cat/0.png' has a negative size"),
    ],
    ids=["pax", "gnu long name", "negative size"],
)  # fmt: skip
def test_oversized_or_negative_tar_headers_are_refused_before_they_are_read(
    tmp_path: Path, make, expected: str
):
    source = make(tmp_path)
    message = _refusal(source)
    assert message == f"{source}: not a readable .tar.gz archive ({expected}); download it again"


def add_file(path: Path, header: bytes) -> Path:
    path.write_bytes(header + bytes(1024))
    return path


def test_a_chain_of_pax_headers_is_one_line(tmp_path: Path):
    record = tarfile.TarInfo("a")._create_pax_generic_header(
        {"comment": "x"}, tarfile.XHDTYPE, "utf-8"
    )
    add_file(tmp_path / "chain.tar", record * 5000 + _tar_header("a/train/cat/0.png", b"0" * 12))
    assert "not a readable .tar.gz archive (maximum recursion depth" in _refusal(
        tmp_path / "chain.tar"
    )


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        ("MAX_STREAM_BYTES", "decompresses to more than 1,000,000 bytes; CIFAR-10 is about 180 MB"),
        ("MAX_SOURCE_BYTES", "bytes, more than the 1,000,000 of any CIFAR-10 archive"),
    ],
)
def test_archives_are_capped_by_their_size_and_their_decompressed_stream(
    tmp_path: Path, monkeypatch, cap: str, expected: str
):
    write_official_archive(tmp_path / "c.tar.gz")
    with (
        tarfile.open(tmp_path / "c.tar.gz") as small,
        tarfile.open(tmp_path / "big.tar", "w") as big,
    ):
        for member in small.getmembers():  # uncompressed, and padded to over 1 MB
            big.addfile(member, small.extractfile(member) if member.isfile() else None)
        add_bytes(big, "padding", bytes(2**20))
    monkeypatch.setattr(archive, cap, 1_000_000)
    assert expected in _refusal(tmp_path / "big.tar")


def test_archives_are_read_as_a_stream_without_seeking_back(tmp_path: Path):
    """A pipe cannot seek: reading an archive from one proves a single pass, front to back."""
    write_class_folders(tmp_path / "f")
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "f", arcname="cifar")
    pipe = tmp_path / "pipe.tar.gz"
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_bytes, args=((tmp_path / "c.tar.gz").read_bytes(),))
    writer.start()
    cifar = data.read_source(pipe)
    writer.join(timeout=10)
    expected = data.read_source(tmp_path / "c.tar.gz")
    np.testing.assert_array_equal(cifar.train.images, expected.train.images)


# --- pickles that ask for more than they hold -------------------------------------------------


class _ArrayWithoutData:
    """Pickles as numpy's reconstructor asked for an array of `shape`, with no data after it."""

    def __init__(self, make: object, shape: tuple) -> None:
        self.make, self.shape = make, shape

    def __reduce__(self):
        if self.make is np.ndarray:
            return np.ndarray, (self.shape, "u1")
        return self.make, (np.ndarray, self.shape, b"B")


@pytest.mark.parametrize("make", [np.ndarray, np._core.multiarray._reconstruct])
def test_a_pickled_array_larger_than_the_file_is_refused_before_allocation(
    tmp_path: Path, make: object
):
    blob = pickle.dumps({"data": _ArrayWithoutData(make, (10**6, 3072)), "labels": [0]}, 2)
    assert len(blob) < 1000
    source = _official_with(tmp_path, {BATCHES + "data_batch_4": blob})
    assert _refusal(source) == (
        f"{BATCHES}data_batch_4: asks for arrays larger than the file (3,072,000,000 bytes for "
        "shape (1000000, 3072)); it is crafted or corrupt"
    )


def test_shared_references_that_multiply_a_small_pickle_are_refused(tmp_path: Path):
    row = [7] * 1000
    labels = [[row] * 1000] * 100  # 10**8 labels from a pickle of a few KB
    blob = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": labels}, 2)
    assert len(blob) < 20_000
    source = _official_with(tmp_path, {BATCHES + "test_batch": blob})
    assert _refusal(source) == (
        f"{BATCHES}test_batch: labels holds more numbers than the file has bytes; it is crafted"
    )


# --- downloads -------------------------------------------------------------------------------


class _Server:
    """A local HTTP server for one file, which can be told to cut every response short."""

    def __init__(self, blob: bytes) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob[: len(blob) // 2] if server.cut else blob)

            def log_message(self, *args):
                pass

        self.cut = False
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/cifar-10-python.tar.gz"


def test_an_interrupted_download_is_fetched_again_even_without_an_md5(tmp_path: Path):
    write_official_archive(tmp_path / "c.tar.gz")
    blob = (tmp_path / "c.tar.gz").read_bytes()
    server = _Server(blob)
    try:
        server.cut = True
        with pytest.raises(data.DataError, match="the download is incomplete or corrupt"):
            data.download(server.url, tmp_path / "raw", None)
        assert os.listdir(tmp_path / "raw") == []  # no half file under the archive's name
        server.cut = False
        path = data.download(server.url, tmp_path / "raw", None)
        assert path.read_bytes() == blob
        server.cut = True  # a finished download is not fetched again
        assert data.download(server.url, tmp_path / "raw", None).read_bytes() == blob
        path.write_bytes(blob[:1000])  # one cut short, kept by an older version, is
        server.cut = False
        assert data.download(server.url, tmp_path / "raw", None).read_bytes() == blob
    finally:
        server.httpd.shutdown()
