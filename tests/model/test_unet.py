import pytest
import torch

from canopy.model.unet import Unet, count_parameters


@pytest.mark.parametrize(
    "kwargs, size",
    [
        ({"dim": 8, "dim_mults": (1, 2)}, 16),
        ({"dim": 8, "dim_mults": (1, 2, 4)}, 16),
        ({"dim": 6, "init_dim": 5, "dim_mults": (1, 1, 2)}, 8),
        ({"dim": 8, "dim_mults": (2,), "convnext_mult": 1}, 12),
        ({"dim": 8, "dim_mults": (1, 2), "norm": "layer"}, 16),
        ({"dim": 8, "dim_mults": (1, 2), "norm_groups": 4}, 16),
        ({"dim": 8, "dim_mults": (1, 2), "channels": 1}, 16),
        ({"dim": 8, "dim_mults": (1, 2), "kernel_size": 3}, 16),
        ({"dim": 8, "dim_mults": (1, 2), "mlp_kernel_size": 1}, 16),
        ({"dim": 8, "dim_mults": (1, 2), "time_modulation": "scale_shift"}, 16),
        ({"dim": 8, "dim_mults": (1, 2), "mid_attention_heads": 2}, 16),
        ({"dim": 8, "dim_mults": (1, 2, 2), "mid_attention_heads": 1, "norm": "layer"}, 12),
    ],
)
def test_output_keeps_the_input_shape(kwargs, size):
    torch.manual_seed(0)
    net = Unet(**kwargs)
    c = kwargs.get("channels", 3)
    x = torch.randn(2, c, size, size)
    out = net(x, torch.tensor([0, 99]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_norm_choice_is_real():
    layer = Unet(dim=8, dim_mults=(1, 2), norm="layer")
    group = Unet(dim=8, dim_mults=(1, 2), norm_groups=4)
    assert any(type(m).__name__ == "ChannelLayerNorm" for m in layer.modules())
    groups = {m.num_groups for m in group.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {4}


def test_kernel_size_sets_every_depthwise_conv():
    sizes = {m.ds_conv.kernel_size for m in Unet(dim=8, dim_mults=(1, 2), kernel_size=3).modules()
             if hasattr(m, "ds_conv")}
    assert sizes == {(3, 3)}
    assert count_parameters(Unet(dim=8, kernel_size=3)) < count_parameters(Unet(dim=8))


def test_mlp_kernel_size_sets_every_dense_conv_inside_the_blocks():
    def dense_kernels(net):
        return {conv.kernel_size for m in net.modules() if hasattr(m, "ds_conv")
                for conv in (m.net[1], m.net[4])}

    assert dense_kernels(Unet(dim=8, dim_mults=(1, 2))) == {(3, 3)}
    pointwise = Unet(dim=8, dim_mults=(1, 2), mlp_kernel_size=1)
    assert dense_kernels(pointwise) == {(1, 1)}
    assert count_parameters(pointwise) < count_parameters(Unet(dim=8, dim_mults=(1, 2))) / 2


def test_scale_shift_scales_and_shifts_the_normalised_features():
    """scale_shift: h = norm(dwconv(x)) (1 + s) + b, (s, b) from the time embedding, then the
    rest of the block; add (the default) keeps the first exports' block, keys and weights."""
    from canopy.model.unet import ConvNextBlock

    torch.manual_seed(0)
    x, t_emb = torch.randn(2, 8, 8, 8), torch.randn(1, 16)
    block = ConvNextBlock(8, 8, time_dim=16, mult=2, norm="group", groups=1,
                          time_modulation="scale_shift").eval()
    with torch.no_grad():
        scale, shift = block.time_mlp(t_emb)[:, :, None, None].chunk(2, dim=1)
        h = block.net[0](block.ds_conv(x)) * (1 + scale) + shift
        expected = block.net[1:](h) + x
        assert torch.allclose(block(x, t_emb), expected, atol=1e-6)
        # A gain of zero from the embedding leaves the branch nothing of x.
        block.time_mlp[1].weight.zero_()
        block.time_mlp[1].bias.copy_(torch.cat((-torch.ones(8), torch.zeros(8))))
        branch = block(x, t_emb) - x
        assert torch.allclose(branch, branch[:1].expand_as(branch), atol=1e-6)
    plain = Unet(dim=8, dim_mults=(1, 2))
    assert set(plain.state_dict()) == set(
        Unet(dim=8, dim_mults=(1, 2), time_modulation="scale_shift").state_dict())
    assert count_parameters(Unet(dim=8, dim_mults=(1, 2), time_modulation="scale_shift")) > \
        count_parameters(plain)


def test_mid_attention_starts_as_the_network_without_it_and_relates_far_pixels():
    """The attention block is built last with a zero output projection: the same seed gives
    the same network function as without it, and only new keys. Once trained (here: given
    weights), the middle's far corners see each other in one layer, as softmax(q k^T / sqrt(d)) v
    per head."""
    from canopy.model.unet import SelfAttention

    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5.0])
    torch.manual_seed(0)
    plain = Unet(dim=8, dim_mults=(1, 2))
    torch.manual_seed(0)
    attending = Unet(dim=8, dim_mults=(1, 2), mid_attention_heads=2)
    with torch.no_grad():
        assert torch.equal(plain(x, t), attending(x, t))
    new_keys = set(attending.state_dict()) - set(plain.state_dict())
    assert new_keys and all(key.startswith("mid_attention.") for key in new_keys)

    torch.manual_seed(1)
    block = SelfAttention(8, heads=2, norm="group", groups=1)
    torch.nn.init.normal_(block.out.weight, std=0.5)
    feature = torch.randn(1, 8, 4, 4, requires_grad=True)
    out = block(feature)
    out[0, :, 0, 0].sum().backward()
    assert feature.grad[0, :, 3, 3].abs().sum() > 0  # the opposite corner, one layer away
    with torch.no_grad():
        q, k, v = block.qkv(block.norm(feature)).reshape(1, 3, 2, 4, 16).unbind(1)
        weights = torch.softmax(q.transpose(-1, -2) @ k / 2.0, dim=-1)  # (1, heads, 16, 16)
        heads = (weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(1, 8, 4, 4)
        assert torch.allclose(out, feature + block.out(heads), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 7}, "dim must be an even number"),
        ({"dim": 8, "norm_groups": 3}, "norm_groups=3 does not divide"),
        ({"dim": 8, "dim_mults": ()}, "dim_mults must be positive"),
        ({"dim": 8, "norm": "batch"}, "norm must be 'group' or 'layer'"),
        ({"dim": 8, "kernel_size": 4}, "kernel_size must be odd"),
        ({"dim": 8, "mlp_kernel_size": 5}, "mlp_kernel_size must be 1 or 3"),
        ({"dim": 8, "time_modulation": "film"}, "time_modulation must be 'add' or 'scale_shift'"),
        ({"dim": 8, "dim_mults": (1, 2), "mid_attention_heads": 3},
         "mid_attention_heads=3 does not divide the middle's 16 channels"),
        ({"dim": 8, "mid_attention_heads": -1}, "mid_attention_heads must be >= 0"),
    ],
)
def test_bad_shapes_are_rejected_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Unet(**kwargs)


def test_bad_inputs_are_rejected_clearly():
    net = Unet(dim=8, dim_mults=(1, 2, 4))
    with pytest.raises(ValueError, match="not a multiple of 4"):
        net(torch.randn(1, 3, 18, 18), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        net(torch.randn(1, 4, 16, 16), torch.tensor([1]))


def test_reference_parameter_count():
    assert count_parameters(Unet()) == 62_699_395  # dim 64, dim_mults (1, 2, 4, 8), RGB


def test_one_timestep_broadcasts_and_channels_last_agrees():
    torch.manual_seed(0)
    net = Unet(dim=8, dim_mults=(1, 2)).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        per_image = net(x, torch.tensor([7, 7, 7]))
        shared = net(x, torch.tensor(7))
        net_cl = net.to(memory_format=torch.channels_last)
        cl = net_cl(x.contiguous(memory_format=torch.channels_last), torch.tensor([7, 7, 7]))
    assert torch.allclose(per_image, shared, atol=1e-5)
    assert torch.allclose(per_image, cl, atol=1e-4)


def test_split_depthwise_backward_matches_autograd(monkeypatch):
    """The bf16 CPU depthwise conv's hand-written backward gives autograd's gradients."""
    import canopy.model.unet as unet

    torch.manual_seed(0)
    conv = unet.DepthwiseConv2d(16, 7)
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=torch.channels_last)

    def grads(split, autocast):
        monkeypatch.setattr(unet, "_SPLIT_DEPTHWISE_BACKWARD", split)
        xx = x.clone().requires_grad_()
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = conv(xx)
        (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        return out.float(), xx.grad, conv.weight.grad.clone(), conv.bias.grad.clone()

    exact = grads(split=False, autocast=False)
    split = grads(split=True, autocast=True)
    plain = grads(split=False, autocast=True)
    for a, b, c in zip(exact, split, plain):
        scale = a.abs().max()
        assert (b - a).abs().max() <= 0.02 * scale  # bf16 rounding
        assert (b - a).abs().max() <= 2 * (c - a).abs().max() + 1e-3 * scale
