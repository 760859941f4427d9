"""Stage `download`: CIFAR-10 from data.source into one compact file (paths.data)."""

import time
from pathlib import Path

from beluga import data
from beluga.atomic import write_json
from beluga.cli import stage
from beluga.params import load_params


@stage
def main() -> None:
    start = time.perf_counter()
    params = load_params()
    source, md5 = params.data.source, params.data.md5
    if data.is_url(source):
        local = data.download(source, Path(params.paths.download_dir), md5)
    else:
        local = Path(source).expanduser()
    cifar = data.subset(
        data.read_source(local, md5), params.data.train_per_class, params.data.test_per_class
    )
    data.save(params.paths.data, cifar)
    write_json(
        params.paths.download_metrics,
        {
            "source": source,
            "source_md5": data.md5sum(local) if local.is_file() else None,
            "data_md5": data.md5sum(Path(params.paths.data)),
            "train_images": len(cifar.train.labels),
            "test_images": len(cifar.test.labels),
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(f"{params.paths.data}: {len(cifar.train.labels)} train and "
          f"{len(cifar.test.labels)} test images")  # fmt: skip


if __name__ == "__main__":
    main()
