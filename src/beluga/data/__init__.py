"""Import CIFAR-10 from the official download or a local copy into one compact file.

Every source ends as the same arrays: uint8 images N x 32 x 32 x 3 and int64
labels in CIFAR-10's official class order, for train and test. Later stages
read nothing else (`store`).

A source is untrusted input: what is read from an archive or folder is capped
as it streams past (`archive`), pickles are loaded with an allow-list of
globals and no allocation the file's bytes do not back (`batches`), and images
are decoded only as PNG or JPEG after a size check on the header (`images`),
so a crafted or corrupt file gives one DataError line instead of running code
or exhausting memory.
"""

from ..errors import DataError
from .dataset import CLASSES, Cifar, Split
from .source import download, is_url, md5sum, read_source
from .store import load, save, subset

__all__ = [
    "CLASSES", "Cifar", "DataError", "Split", "download", "is_url", "load", "md5sum",
    "read_source", "save", "subset",
]  # fmt: skip
