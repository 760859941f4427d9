"""Stage `download`: CIFAR-10 from data.source into one compact file (paths.data)."""

from pathlib import Path

from beluga import data
from beluga.cli import stage
from beluga.params import load_params


@stage
def main() -> None:
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
    print(f"{params.paths.data}: {len(cifar.train.labels)} train and "
          f"{len(cifar.test.labels)} test images")  # fmt: skip


if __name__ == "__main__":
    main()
