"""Stage `download`: CIFAR-10 from data.source into data/cifar10.npz."""

from pathlib import Path

from beluga import data
from beluga.cli import stage
from beluga.params import load_params

OUT = "data/cifar10.npz"


@stage
def main() -> None:
    params = load_params().data
    if params.source == "official":
        source = data.download_official(Path(params.download_dir), params.md5)
    else:
        source = Path(params.source).expanduser()
    cifar = data.subset(
        data.read_source(source, params.md5), params.train_per_class, params.test_per_class
    )
    data.save(OUT, cifar)
    print(f"{OUT}: {len(cifar.train.labels)} train and {len(cifar.test.labels)} test images")


if __name__ == "__main__":
    main()
