import pytest
import torch

from diffinv.seeding import batch_generators, image_generators, image_seed, rand, randn


def test_image_seed_is_stable_and_distinct():
    # Pinned: a change here silently changes every published benchmark row.
    assert image_seed(0, 0) == image_seed(0, 0)
    assert image_seed(0, 0) == 2220463634550422249
    seeds = {image_seed(s, i) for s in range(5) for i in range(200)}
    assert len(seeds) == 1000 and all(0 <= v < 2**63 for v in seeds)


def test_draws_do_not_depend_on_the_batch():
    full = randn((1, 3, 3), image_generators(7, range(4)))
    parts = torch.cat([randn((1, 3, 3), image_generators(7, [i])) for i in range(4)])
    assert torch.equal(full, parts)
    u = rand((5,), batch_generators(7, 2, start=2))
    assert torch.equal(u, rand((5,), image_generators(7, [2, 3])))
    assert u.min() >= 0 and u.max() < 1


def test_generator_lists_are_checked():
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        batch_generators(image_generators(0, range(3)), 2)
