"""Every random draw in Canopy comes from (params.yaml `seed`, a stream, an index), nothing else.

So a run needs no random state saved to resume or to be repeated: step 500's noise, epoch 3's
order or image 41's starting noise are functions of the seed, whichever process asks and in
whatever order. Each use has its own stream, so changing one (more samples, another augment)
never shifts the draws of another. Both helpers go through numpy's SeedSequence, which mixes
the entropy list into well-separated states.
"""

from __future__ import annotations

from enum import IntEnum, unique

import numpy as np


@unique
class Stream(IntEnum):
    """One value per use of randomness; never reuse or renumber one (outputs would change)."""

    SYNTHETIC_SCENE = 1   # etl: the synthetic demo scene `index`
    TRAIN_ORDER = 2       # train: the tile permutation of epoch `index`
    TRAIN_AUGMENT = 3     # train: the flips/rotations of batch `index`
    TRAIN_CROP = 4        # train: crop training's crop size and positions of batch `index`
    TRAIN_CONDITION = 5   # train: the conditions dropped (classifier-free guidance) at step `index`
    TRAIN_SKIP_MIXTURE = 6  # train: the skip mixture's first cluster centres
    TRAIN_NOISE = 11      # train: timesteps and noise of step `index`
    PREVIEW_NOISE = 12    # train: the starting noise of the preview grids
    SAMPLE_NOISE = 20     # sample: the starting noise (and DDPM noise) of image `index`
    EVAL_VAL_SUBSET = 31  # evaluate: which val tiles are scored
    EVAL_FLOOR_SUBSET = 32
    EVAL_KID = 33
    EVAL_KID_FLOOR = 34
    EVAL_C2ST = 35        # evaluate: C2ST subsets, folds, weights, batches (index: the use)
    EVAL_BOOTSTRAP = 36   # evaluate: the images resampled for the intervals (index: the use)
    EVAL_FID_INF = 37     # evaluate: the subsets FID is extrapolated from (index: the set)
    EVAL_CONDITION = 38   # evaluate: the condition classifier's tiles, weights, batches
    JUDGE_BOOTSTRAP = 41  # judge report: the judges resampled for the intervals
    SWD_PATCHES = 101     # evaluate: patches of (set, pyramid level)
    SWD_DIRECTIONS = 102  # evaluate: projection directions of pyramid level `index`


def numpy_rng(seed: int, stream: Stream, *index: int) -> np.random.Generator:
    """A numpy Generator for (seed, stream, index...)."""
    return np.random.default_rng([seed, int(stream), *index])


def torch_seed(seed: int, stream: Stream, *index: int) -> int:
    """A 63-bit seed for `torch.Generator().manual_seed` from (seed, stream, index...)."""
    words = np.random.SeedSequence([seed, int(stream), *index]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])
