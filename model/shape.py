"""Which U-Net shapes can be built. Plain Python (no torch import), so that params validation
stays cheap for every command."""

from __future__ import annotations

from collections.abc import Sequence


def validate_config(
    dim: int,
    init_dim: int | None = None,
    dim_mults: Sequence[int] = (1, 2, 4, 8),
    channels: int = 3,
    convnext_mult: int = 2,
    norm: str = "group",
    norm_groups: int = 1,
    kernel_size: int = 7,
    mlp_kernel_size: int = 3,
    time_modulation: str = "add",
    mid_attention_heads: int = 0,
) -> None:
    """Raise ValueError, naming the setting, for a shape the network cannot be built with."""
    init_dim = init_dim or dim
    _check_shape(dim, init_dim, dim_mults, channels)
    if convnext_mult < 1:
        raise ValueError(f"convnext_mult must be >= 1, got {convnext_mult}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd and positive (a centred kernel), got {kernel_size}"
        )
    if mlp_kernel_size not in (1, 3):
        raise ValueError(f"mlp_kernel_size must be 1 or 3, got {mlp_kernel_size}")
    if time_modulation not in ("add", "scale_shift"):
        raise ValueError(f"time_modulation must be 'add' or 'scale_shift', got {time_modulation!r}")
    if norm not in ("group", "layer"):
        raise ValueError(f"norm must be 'group' or 'layer', got {norm!r}")
    _check_attention(mid_attention_heads, level_widths(dim, init_dim, dim_mults)[-1][1])
    if norm == "group":
        for width in sorted(_normed_widths(dim, init_dim, dim_mults, convnext_mult)):
            if width % norm_groups:
                raise ValueError(
                    f"norm_groups={norm_groups} does not divide a layer of {width} channels: "
                    "use a norm_groups that divides dim and init_dim (1 always works)"
                )


def _check_attention(heads: int, bottom: int) -> None:
    if heads < 0:
        raise ValueError(f"mid_attention_heads must be >= 0 (0: no attention), got {heads}")
    if heads and bottom % heads:
        raise ValueError(
            f"mid_attention_heads={heads} does not divide the middle's {bottom} channels "
            "(dim x the last dim_mults): use a divisor of it, e.g. 1, 2 or 4"
        )


def level_widths(dim: int, init_dim: int, dim_mults: Sequence[int]) -> list[tuple[int, int]]:
    """(channels in, channels out) of each resolution level, from the stem to the bottom."""
    dims = [init_dim, *(dim * m for m in dim_mults)]
    return list(zip(dims[:-1], dims[1:]))


def block_widths(dim: int, init_dim: int, dim_mults: Sequence[int]) -> list[tuple[int, int]]:
    """(channels in, channels out) of every ConvNeXt block, in the order the U-Net builds them:
    two per level going down, two in the middle, two per level coming up (their inputs
    concatenated with a skip), and the final block on the stem's skip."""
    levels = level_widths(dim, init_dim, dim_mults)
    bottom = levels[-1][1]
    down = [(d_in, d_in) for d_in, _ in levels for _ in range(2)]
    up = [(d_out + d_in, d_out) for d_in, d_out in reversed(levels) for _ in range(2)]
    return [*down, (bottom, bottom), (bottom, bottom), *up, (2 * init_dim, dim)]


def _normed_widths(dim: int, init_dim: int, dim_mults: Sequence[int], mult: int) -> set[int]:
    """Channel counts that go through a norm layer: each block's input and widened middle."""
    return {width for d_in, d_out in block_widths(dim, init_dim, dim_mults)
            for width in (d_in, d_out * mult)}


def _check_shape(dim: int, init_dim: int, dim_mults: Sequence[int], channels: int) -> None:
    # The sinusoidal embedding splits `dim` into sin and cos halves; an odd width cannot.
    if dim < 4 or dim % 2:
        raise ValueError(f"dim must be an even number >= 4 (sin/cos halves), got {dim}")
    if init_dim < 1:
        raise ValueError(f"init_dim must be positive, got {init_dim}")
    if not dim_mults or any(int(m) != m or m < 1 for m in dim_mults):
        raise ValueError(f"dim_mults must be positive integers, got {list(dim_mults)}")
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
