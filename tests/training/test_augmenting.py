"""Augmentation of whole batches: what each op does to the pixels, that each image
draws its own parameters, and that a batch's draw depends on (seed, epoch, batch,
rank) alone, which is what a resumed run relies on."""

from __future__ import annotations

import pytest
import torch

from mlsm.schemas.training import AUGMENTATION_PRESETS, Augmentation
from mlsm.training.augmenting import Augmenter


def batch(count: int = 16, side: int = 12) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.rand(count, 3, side, side)


def ops(**values: object) -> Augmentation:
    return Augmentation.model_validate(values)


def test_a_certain_flip_mirrors_every_image_exactly() -> None:
    images = batch()
    flipped = Augmenter(ops(horizontalFlip=1.0), seed=0)(images, 0, 0)
    torch.testing.assert_close(flipped, images.flip(-1), rtol=0, atol=1e-5)


def test_a_crop_of_the_whole_image_and_a_zero_rotation_change_nothing() -> None:
    images = batch()
    same = ops(randomResizedCrop={"scale": [1.0, 1.0], "ratio": [1.0, 1.0]})
    torch.testing.assert_close(Augmenter(same, seed=0)(images, 0, 0), images, rtol=0, atol=1e-5)


def test_a_crop_zooms_in_each_image_by_its_own_amount() -> None:
    # one bright pixel in the centre: a crop of a smaller area spreads it wider
    images = torch.zeros(32, 3, 15, 15)
    images[:, :, 7, 7] = 1.0
    cropped = Augmenter(ops(randomResizedCrop={"scale": [0.2, 0.6]}), seed=1)(images, 0, 0)
    spread = (cropped[:, 0] > 0.05).flatten(1).sum(1)
    assert bool((spread > 1).all())
    assert len(set(spread.tolist())) > 1  # not one crop for the whole batch


def test_colour_jitter_keeps_factors_within_bounds_and_grey_stays_grey() -> None:
    grey = batch().mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous() * 0.5
    brighter = Augmenter(ops(colorJitter={"brightness": 0.2}), seed=0)(grey, 0, 0)
    ratio = brighter.flatten(1).sum(1) / grey.flatten(1).sum(1)
    assert bool((ratio >= 0.8 - 1e-6).all() and (ratio <= 1.2 + 1e-6).all())
    assert len({round(r, 4) for r in ratio.tolist()}) > 1
    saturated = Augmenter(ops(colorJitter={"saturation": 0.9}), seed=0)(grey, 0, 0)
    torch.testing.assert_close(saturated[:, 0], saturated[:, 1], rtol=0, atol=1e-5)


def test_rand_augment_changes_most_images_and_stays_in_range() -> None:
    images = batch(64)
    out = Augmenter(ops(randAugment={"ops": 2, "magnitude": 15}), seed=0)(images, 0, 0)
    assert out.shape == images.shape
    assert float(out.min()) >= 0
    assert float(out.max()) <= 1
    changed = ((out - images).abs().flatten(1).amax(1) > 1e-4).float().mean()
    assert 0.7 < float(changed) < 1.0  # identity twice is drawn for about 1 in 170


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_a_batch_draws_the_same_parameters_again_and_others_differ(preset: str) -> None:
    images = batch()
    augment = Augmenter(AUGMENTATION_PRESETS[preset], seed=5)
    first = augment(images, 2, 7)
    torch.testing.assert_close(Augmenter(AUGMENTATION_PRESETS[preset], seed=5)(images, 2, 7), first)
    preset_ops = AUGMENTATION_PRESETS[preset]
    for other in (augment(images, 2, 8), augment(images, 3, 7),
                  Augmenter(preset_ops, seed=6)(images, 2, 7),
                  Augmenter(preset_ops, seed=5, rank=1)(images, 2, 7)):  # fmt: skip
        assert not torch.allclose(other, first)


def test_none_is_no_augmentation() -> None:
    assert not AUGMENTATION_PRESETS["none"].enabled
    assert AUGMENTATION_PRESETS["light"].enabled
