"""Random streams: a function of (seed, stream, index) only, and distinct per stream."""

from canopy.seeding import Stream, numpy_rng, torch_seed


def test_same_inputs_same_draws():
    assert torch_seed(7, Stream.SAMPLE_NOISE, 3) == torch_seed(7, Stream.SAMPLE_NOISE, 3)
    assert (numpy_rng(7, Stream.TRAIN_ORDER, 2).integers(0, 2**32, 4)
            == numpy_rng(7, Stream.TRAIN_ORDER, 2).integers(0, 2**32, 4)).all()


def test_streams_indices_and_seeds_are_independent():
    seeds = {torch_seed(seed, stream, index)
             for seed in (0, 1) for stream in Stream for index in (0, 1, 2)}
    assert len(seeds) == 2 * len(Stream) * 3
    assert all(0 <= value < 2**63 for value in seeds)
