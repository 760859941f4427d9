from dataclasses import replace

import numpy as np
import torch
from conftest import CPU, DEFAULTS

from beluga.loader import MEAN, STD, DeviceLoader, cutout, random_crop, random_flip


def _images(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_crop_is_a_shift_of_the_zero_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (32, 3, 32, 32), dtype=torch.uint8)
    out = random_crop(x, 4, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert len(matches) == 1
    shifted = sum(not torch.equal(out[i], x[i]) for i in range(len(x)))
    assert shifted > len(x) // 2


def test_flip_mirrors_about_half_the_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, 8, 8)
    out = random_flip(x, g)
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_cutout_zeroes_one_square_of_at_most_size_squared_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(200, 3, 32, 32)
    out = cutout(x, 8, g)
    zeroed = (out == 0).all(dim=1)  # same pixels in every channel
    counts = zeroed.flatten(1).sum(1)
    assert int(counts.max()) == 64 and int(counts.min()) >= 16
    for mask in zeroed[:20]:
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)


def test_plain_loader_normalises_in_order_and_keeps_every_image():
    images, labels = _images(70)
    loader = DeviceLoader(images, labels, 32, replace(CPU, channels_last=True))
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y, torch.from_numpy(labels))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    expected = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)


def test_augmented_epochs_are_shuffled_and_repeatable_from_a_seed():
    images, labels = _images()
    make = lambda: DeviceLoader(images, labels, 16, CPU, augment=DEFAULTS.augment,  # noqa: E731
                                shuffle=True, seed=3)  # fmt: skip
    a, b = make(), make()
    epoch_a = [x for x, _ in a]
    epoch_b = [x for x, _ in b]
    assert all(torch.equal(p, q) for p, q in zip(epoch_a, epoch_b))
    second = [x for x, _ in a]
    assert not torch.equal(epoch_a[0], second[0])
    y = torch.cat([y for _, y in a])
    assert sorted(y.tolist()) == sorted(labels.tolist())
    state = a.state_dict()
    after = [x for x, _ in a]
    a.load_state_dict(state)
    again = [x for x, _ in a]
    assert all(torch.equal(p, q) for p, q in zip(after, again))


def test_alternate_flips_mirror_each_image_in_every_other_epoch_and_resume():
    images, labels = _images(64)
    augment = DEFAULTS.augment.model_copy(
        update={"flip": "alternate", "crop_padding": 0, "cutout_size": 0}
    )
    loader = DeviceLoader(images, labels, 64, CPU, augment=augment)
    plain = next(iter(DeviceLoader(images, labels, 64, CPU)))[0]
    first, second = next(iter(loader))[0], next(iter(loader))[0]
    mirrored = [torch.equal(first[i], plain[i].flip(2)) for i in range(64)]
    assert 16 < sum(mirrored) < 48
    for i in range(64):
        assert torch.equal(second[i], plain[i] if mirrored[i] else plain[i].flip(2))
    state = loader.state_dict()
    third = next(iter(loader))[0]
    loader.load_state_dict(state)
    assert torch.equal(next(iter(loader))[0], third) and torch.equal(third, first)
