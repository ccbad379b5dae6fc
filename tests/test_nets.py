"""Tests for difflab.nets: the network contract, the seed networks against the notes' own code,
the modern UNet's conditioning semantics, JSON round-trips and the diffusers wrappers."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from difflab.config import Config
from difflab.diffusion import q_sample
from difflab.nets import (
    NET_KINDS,
    BasicUNet,
    BasicUNetConfig,
    DiffusersCondUNetConfig,
    DiffusersUNetConfig,
    MyUNet,
    MyUNetConfig,
    SimpleUnet,
    SimpleUnetConfig,
    UNet,
    UNetConfig,
    build_net,
    corrupt,
    default_net_config,
    mixing_sample,
    net_config_from_dict,
    param_count,
    predicts,
    required_image_size,
)
from difflab.schedules import NoiseSchedule


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads can be ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- tiny configs: one per kind, with every conditioning input the kind supports ---------------
TINY: dict[str, tuple[Config, int]] = {
    "myunet": (MyUNetConfig(), 28),
    "simple-unet": (SimpleUnetConfig(in_channels=1, width=0.125, time_emb_dim=16), 16),
    "basic-unet": (BasicUNetConfig(), 12),
    "unet": (
        UNetConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, groups=4,
                   num_classes=3, context_dim=6, image_size=12, attention_resolutions=(6,)),
        12,
    ),
    "diffusers-unet": (
        DiffusersUNetConfig(sample_size=16, block_out_channels=(8, 16), layers_per_block=1,
                            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                            attention_head_dim=4, num_class_embeds=4),
        16,
    ),
    "diffusers-cond-unet": (
        DiffusersCondUNetConfig(sample_size=16, block_out_channels=(8, 16), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=6, norm_num_groups=4, attention_head_dim=4,
                                num_class_embeds=4),
        16,
    ),
}


def tiny(kind: str, seed: int = 0) -> tuple[nn.Module, int]:
    cfg, size = TINY[kind]
    torch.manual_seed(seed)
    return build_net(cfg), size


def cond_inputs(net: nn.Module, batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    if net.num_classes:
        out["class_labels"] = torch.arange(batch) % net.num_classes
    if net.context_dim:
        out["context"] = torch.randn(batch, 3, net.context_dim, generator=g)
    return out


def inputs(net: nn.Module, size: int, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, net.in_channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return x, t


def wake_zero_params(net: nn.Module, seed: int = 2) -> None:
    """Give the zero-initialised layers (output convs, projections) small random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


# ---- shapes -----------------------------------------------------------------------------------
SHAPE_CASES = [
    ("myunet", 28), ("simple-unet", 32), ("simple-unet", 64), ("basic-unet", 28),
    ("basic-unet", 32), ("basic-unet", 64), ("unet", 28), ("unet", 32), ("unet", 64),
    ("unet", 27), ("unet", 30), ("diffusers-unet", 28), ("diffusers-unet", 32),
    ("diffusers-unet", 64), ("diffusers-cond-unet", 28), ("diffusers-cond-unet", 32),
]


ZERO_OUTPUT = {"unet"}  # zero-initialised output conv: a fresh net returns exactly 0
TIME_BLIND = {"basic-unet"}  # seed 003's BasicUNet takes no timestep


def default_conditioning(kind: str) -> dict[str, int]:
    """Every conditioning input a kind's default config can take (class labels, context)."""
    return {"unet": {"num_classes": 3, "context_dim": 8},
            "diffusers-cond-unet": {"context_dim": 8}}.get(kind, {})


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-6 * (1 + a.abs().max().item())


@pytest.mark.parametrize(("kind", "size"), SHAPE_CASES)
def test_default_nets_keep_the_input_shape_and_see_x_t_and_conditioning(kind, size):
    cond_dims = default_conditioning(kind)
    cfg = default_net_config(kind, in_channels=1, image_size=size, **cond_dims)
    torch.manual_seed(0)
    net = build_net(cfg).eval()
    assert net.config == cfg and net.in_channels == 1
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 1, size, size, generator=g), torch.tensor([999, 10])
    cond = {}
    if cond_dims.get("num_classes"):
        cond["class_labels"] = torch.tensor([0, 2])
    if cond_dims.get("context_dim"):
        cond["context"] = torch.randn(2, 3, cond_dims["context_dim"], generator=g)
    with torch.no_grad():
        if kind in ZERO_OUTPUT:
            assert not net(x, t, **cond).any()
            wake_zero_params(net)
        out = net(x, t, **cond)
        assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0
        bumped = x.clone()
        bumped[:, :, size // 2, size // 2] += 1.0
        assert changed(out, net(bumped, t, **cond))
        assert changed(out, net(x, torch.tensor([500, 500]), **cond)) != (kind in TIME_BLIND)
        for key, value in cond.items():
            other = value.flip(0) if key == "class_labels" else torch.randn(value.shape, generator=g)
            assert changed(out, net(x, t, **{**cond, key: other})), key


@pytest.mark.parametrize("hw", [(27, 27), (30, 30), (28, 28), (20, 36), (5, 9)])
def test_unet_takes_any_size(hw):
    net = UNet(UNetConfig(in_channels=3, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                          groups=4, num_heads=2))
    assert net.image_size is None
    wake_zero_params(net)
    x = torch.randn(2, 3, *hw)
    t = torch.tensor([0, 500])
    with torch.no_grad():
        out = net(x, t)
        assert out.shape == x.shape and torch.isfinite(out).all()
        # inputs are reflect-padded bottom/right to a multiple of 4 and the output cropped back
        ph, pw = -hw[0] % 4, -hw[1] % 4
        if ph or pw:
            padded = F.pad(x, (0, pw, 0, ph), mode="reflect" if max(ph, pw) < min(hw)
                           else "replicate")
            assert torch.allclose(out, net(padded, t)[..., : hw[0], : hw[1]], atol=1e-5)


def test_rgb_and_out_channels():
    net = build_net(default_net_config("simple-unet", in_channels=3, image_size=32))
    assert net(torch.randn(1, 3, 32, 32), torch.tensor([3])).shape == (1, 3, 32, 32)
    net = BasicUNet(in_channels=3, out_channels=2)
    assert net(torch.randn(1, 3, 8, 8)).shape == (1, 2, 8, 8)
    net = UNet(UNetConfig(in_channels=3, out_channels=6, base_channels=8, groups=4, num_heads=2))
    assert net(torch.randn(1, 3, 8, 8), torch.tensor([3])).shape == (1, 6, 8, 8)


# ---- gradients and overfitting ------------------------------------------------------------------
@pytest.mark.parametrize("kind", NET_KINDS)
def test_gradients_reach_every_trainable_parameter(kind):
    net, size = tiny(kind)
    wake_zero_params(net)
    x, t = inputs(net, size, batch=3)
    out = net(x, t, **cond_inputs(net, 3))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in net.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reaches {missing}"


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 1, 4, 4, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("kind", NET_KINDS)
def test_overfits_one_batch(kind):
    """The training objective on one fixed noised batch falls at least 10x."""
    net, size = tiny(kind)
    x0 = smooth_images(4, size)
    if predicts(kind) == "x0":  # seed 003's recipe: [0, 1] data, corrupt(), regress to x0
        amount = torch.tensor([0.1, 0.3, 0.5, 0.7])
        x_in, target = corrupt(x0, amount, smooth_images(4, size, seed=5)), x0
        t = torch.zeros(4, dtype=torch.long)
    else:
        x0 = 2 * x0 - 1
        g = torch.Generator().manual_seed(3)
        eps, t = torch.randn(x0.shape, generator=g), torch.randint(300, 1000, (4,), generator=g)
        x_in, target = q_sample(NoiseSchedule.linear(T=1000), x0, t, eps), eps
    cond = cond_inputs(net, 4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = loss = None
    for _ in range(300):
        loss = F.mse_loss(net(x_in, t, **cond), target)
        first = first if first is not None else loss.item()
        if loss.item() < first / 10:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, f"{kind}: loss {first:.4f} -> {loss.item():.4f}"


# ---- the seed networks against the notes' own code ----------------------------------------------
NOTES_000 = '''
def sinusoidal_embedding(n, d):
    # Returns the standard positional embedding
    embedding = torch.zeros(n, d)
    wk = torch.tensor([1 / 10_000 ** (2 * j / d) for j in range(d)])
    wk = wk.reshape((1, d))
    t = torch.arange(n).reshape((n, 1))
    embedding[:,::2] = torch.sin(t * wk[:,::2])
    embedding[:,1::2] = torch.cos(t * wk[:,::2])

    return embedding

class MyBlock(nn.Module):
    def __init__(self, shape, in_c, out_c, kernel_size=3, stride=1, padding=1, activation=None, normalize=True):
        super(MyBlock, self).__init__()
        self.ln = nn.LayerNorm(shape)
        self.conv1 = nn.Conv2d(in_c, out_c, kernel_size, stride, padding)
        self.conv2 = nn.Conv2d(out_c, out_c, kernel_size, stride, padding)
        self.activation = nn.SiLU() if activation is None else activation
        self.normalize = normalize

    def forward(self, x):
        out = self.ln(x) if self.normalize else x
        out = self.conv1(out)
        out = self.activation(out)
        out = self.conv2(out)
        out = self.activation(out)
        return out

class MyUNet(nn.Module):
    def __init__(self, n_steps=1000, time_emb_dim=100):
        super(MyUNet, self).__init__()

        # Sinusoidal embedding
        self.time_embed = nn.Embedding(n_steps, time_emb_dim)
        self.time_embed.weight.data = sinusoidal_embedding(n_steps, time_emb_dim)
        self.time_embed.requires_grad_(False)

        # First half
        self.te1 = self._make_te(time_emb_dim, 1)
        self.b1 = nn.Sequential(
            MyBlock((1, 28, 28), 1, 10),
            MyBlock((10, 28, 28), 10, 10),
            MyBlock((10, 28, 28), 10, 10)
        )
        self.down1 = nn.Conv2d(10, 10, 4, 2, 1)

        self.te2 = self._make_te(time_emb_dim, 10)
        self.b2 = nn.Sequential(
            MyBlock((10, 14, 14), 10, 20),
            MyBlock((20, 14, 14), 20, 20),
            MyBlock((20, 14, 14), 20, 20)
        )
        self.down2 = nn.Conv2d(20, 20, 4, 2, 1)

        self.te3 = self._make_te(time_emb_dim, 20)
        self.b3 = nn.Sequential(
            MyBlock((20, 7, 7), 20, 40),
            MyBlock((40, 7, 7), 40, 40),
            MyBlock((40, 7, 7), 40, 40)
        )
        self.down3 = nn.Sequential(
            nn.Conv2d(40, 40, 2, 1),
            nn.SiLU(),
            nn.Conv2d(40, 40, 4, 2, 1)
        )

        # Bottleneck
        self.te_mid = self._make_te(time_emb_dim, 40)
        self.b_mid = nn.Sequential(
            MyBlock((40, 3, 3), 40, 20),
            MyBlock((20, 3, 3), 20, 20),
            MyBlock((20, 3, 3), 20, 40)
        )

        # Second half
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(40, 40, 4, 2, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(40, 40, 2, 1)
        )

        self.te4 = self._make_te(time_emb_dim, 80)
        self.b4 = nn.Sequential(
            MyBlock((80, 7, 7), 80, 40),
            MyBlock((40, 7, 7), 40, 20),
            MyBlock((20, 7, 7), 20, 20)
        )

        self.up2 = nn.ConvTranspose2d(20, 20, 4, 2, 1)
        self.te5 = self._make_te(time_emb_dim, 40)
        self.b5 = nn.Sequential(
            MyBlock((40, 14, 14), 40, 20),
            MyBlock((20, 14, 14), 20, 10),
            MyBlock((10, 14, 14), 10, 10)
        )

        self.up3 = nn.ConvTranspose2d(10, 10, 4, 2, 1)
        self.te_out = self._make_te(time_emb_dim, 20)
        self.b_out = nn.Sequential(
            MyBlock((20, 28, 28), 20, 10),
            MyBlock((10, 28, 28), 10, 10),
            MyBlock((10, 28, 28), 10, 10, normalize=False)
        )

        self.conv_out = nn.Conv2d(10, 1, 3, 1, 1)

    def forward(self, x, t):
        print(x.shape, t.shape)  # torch.Size([128, 1, 28, 28]) torch.Size([128, 1])
        t = self.time_embed(t)
        print("after enbed....", t.shape)  # torch.Size([128, 1, 100])

        n = len(x)
        out1 = self.b1(x + self.te1(t).reshape(n, -1, 1, 1))  # (N, 10, 28, 28)
        out2 = self.b2(self.down1(out1) + self.te2(t).reshape(n, -1, 1, 1))  # (N, 20, 14, 14)
        out3 = self.b3(self.down2(out2) + self.te3(t).reshape(n, -1, 1, 1))  # (N, 40, 7, 7)

        out_mid = self.b_mid(self.down3(out3) + self.te_mid(t).reshape(n, -1, 1, 1))  # (N, 40, 3, 3)

        out4 = torch.cat((out3, self.up1(out_mid)), dim=1)  # (N, 80, 7, 7)
        out4 = self.b4(out4 + self.te4(t).reshape(n, -1, 1, 1))  # (N, 20, 7, 7)

        out5 = torch.cat((out2, self.up2(out4)), dim=1)  # (N, 40, 14, 14)
        out5 = self.b5(out5 + self.te5(t).reshape(n, -1, 1, 1))  # (N, 10, 14, 14)

        out = torch.cat((out1, self.up3(out5)), dim=1)  # (N, 20, 28, 28)
        out = self.b_out(out + self.te_out(t).reshape(n, -1, 1, 1))  # (N, 1, 28, 28)

        out = self.conv_out(out)

        return out

    def _make_te(self, dim_in, dim_out):
        return nn.Sequential(
            nn.Linear(dim_in, dim_out),
            nn.SiLU(),
            nn.Linear(dim_out, dim_out)
        )
'''  # noqa: E501

# Seed 004's SimpleUnet and SinusoidalPositionEmbeddings verbatim; the notes do not show Block,
# which is the one of the tutorial they follow (DeepFindr, "Diffusion models from scratch").
NOTES_004 = '''
class Block(nn.Module):
    def __init__(self, in_ch, out_ch, time_emb_dim, up=False):
        super().__init__()
        self.time_mlp =  nn.Linear(time_emb_dim, out_ch)
        if up:
            self.conv1 = nn.Conv2d(2*in_ch, out_ch, 3, padding=1)
            self.transform = nn.ConvTranspose2d(out_ch, out_ch, 4, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
            self.transform = nn.Conv2d(out_ch, out_ch, 4, 2, 1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bnorm1 = nn.BatchNorm2d(out_ch)
        self.bnorm2 = nn.BatchNorm2d(out_ch)
        self.relu  = nn.ReLU()

    def forward(self, x, t, ):
        # First Conv
        h = self.bnorm1(self.relu(self.conv1(x)))
        # Time embedding
        time_emb = self.relu(self.time_mlp(t))
        # Extend last 2 dimensions
        time_emb = time_emb[(..., ) + (None, ) * 2]
        # Add time channel
        h = h + time_emb
        # Second Conv
        h = self.bnorm2(self.relu(self.conv2(h)))
        # Down or Upsample
        return self.transform(h)

class SinusoidalPositionEmbeddings(nn.Module):
    def __init__(self, dim):
        super().__init__()
        # dim = 32
        self.dim = dim

    def forward(self, times):
        half_dim = self.dim // 2
        embeddings = math.log(10000) / (half_dim - 1)
        embeddings = torch.exp(torch.arange(half_dim, device=device) * -embeddings)

        # a_i = 1/10000^(i/half_dim)
        # embeddings above = [a_1, a_2, a_3, ..., a_16]
        embeddings = times[:, None] * embeddings[None, :]
        # embeddings above <=>
        # t |-> ( sin t*a_1, cos t*a_1, sin t*a_2, cos t*a_2, sin t*a_3, cos t*a_3, ... )
        # for each t, therefore the final dimension will be (128, 32)
        embeddings = torch.cat((embeddings.sin(), embeddings.cos()), dim=-1)
        # TODO: Double check the ordering here
        return embeddings

class SimpleUnet(nn.Module):
    """
    A simplified variant of the Unet architecture.
    """

    def __init__(self):
        super().__init__()
        image_channels = 3
        down_channels = (64, 128, 256, 512, 1024)
        up_channels = (1024, 512, 256, 128, 64)
        out_dim = 1
        time_emb_dim = 32

        # Time embedding
        self.time_mlp = nn.Sequential(
            SinusoidalPositionEmbeddings(time_emb_dim),
            nn.Linear(time_emb_dim, time_emb_dim),
            nn.ReLU()
        ).to(device)

        # Initial projection
        # stride = 1, padding = 1, no change in spatial dimension
        self.conv0 = nn.Conv2d(image_channels, down_channels[0], 3, padding=1).to(device)

        # Downsample
        self.downs = nn.ModuleList([Block(down_channels[i], down_channels[i + 1],
                                    time_emb_dim).to(device)
                                    for i in range(len(down_channels) - 1)])
        # Upsample
        self.ups = nn.ModuleList([Block(up_channels[i], up_channels[i + 1],
                                        time_emb_dim, up=True).to(device)
                                  for i in range(len(up_channels) - 1)])

        self.output = nn.Conv2d(up_channels[-1], 3, out_dim).to(device)

    def forward(self, x, times):
        # Embedd time
        t = self.time_mlp(times)
        # Initial conv
        x = self.conv0(x)
        # Unet
        residual_inputs = []
        for down in self.downs:
            x = down(x, t)
            residual_inputs.append(x)
        for up in self.ups:
            # for the bottom block the x adds an identical copy of x (just poped out) for unity of coding.
            residual_x = residual_inputs.pop()
            # Add residual x as additional channels
            x = torch.cat((x, residual_x), dim=1)
            x = up(x, t)
        return self.output(x)
'''

NOTES_003 = '''
class BasicUNet(nn.Module):
    def __init__(self, in_channels=1, out_channels=1):
        super().__init__()
        self.down_layers = torch.nn.ModuleList([
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 64, kernel_size=5, padding=2)
        ])
        self.up_layers = torch.nn.ModuleList([
             nn.Conv2d(64, 64, kernel_size=5, padding=2),
            nn.Conv2d(64, 32, kernel_size=5, padding=2),
            nn.Conv2d(32, out_channels, kernel_size=5, padding=2)
        ])
        self.act = nn.SiLU()
        self.downscale = nn.MaxPool2d(2)
        self.upscale = nn.Upsample(scale_factor=2)
        self.batch_norm = nn.BatchNorm2d(64)
    def forward(self, x):
        h = []
        for i, l in enumerate(self.down_layers):
            x = self.act(l(x))  # 通过运算层和激活函数
            if i < 2:
                h.append(x)     # 排列供残差连接使用的数据
                x = self.downscale(x)
        # x = self.batch_norm(x)
        for i , l in enumerate(self.up_layers):
            if i > 0:
                x = self.upscale(x)
                # print('i', i)
                x += h.pop()   # 得到之前排列好的供残差连接使用的数据
            x = self.act(l(x))
        return x
'''


def notes(code: str) -> dict:
    namespace = {"torch": torch, "nn": nn, "math": math, "device": "cpu"}
    exec(code, namespace)
    return namespace


def same_layout(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert [v.shape for v in sa.values()] == [v.shape for v in sb.values()]
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def test_myunet_is_the_notes_network():
    ns = notes(NOTES_000)
    torch.manual_seed(0)
    theirs = ns["MyUNet"]()
    ours = MyUNet()
    same_layout(ours, theirs)
    assert sum(p.numel() for p in ours.parameters()) == 606_852  # notes' count incl. the table
    # frozen: the 1000x100 time table, and b_out.2.ln (unused in the notes: normalize=False)
    assert param_count(ours) == 506_852 - 2 * 10 * 28 * 28
    assert torch.equal(ours.time_embed.weight, ns["sinusoidal_embedding"](1000, 100))
    ours.load_state_dict(theirs.state_dict())
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 17, 999])
    with torch.no_grad():
        expected = theirs(x, t.reshape(3, -1))  # the notes pass t as [B, 1]
        assert torch.allclose(ours(x, t), expected, atol=1e-6)
        assert torch.allclose(ours(x, t.reshape(3, 1)), expected, atol=1e-6)
        assert torch.allclose(ours(x, t.double()), expected, atol=1e-6)  # integral floats
    with pytest.raises(ValueError, match="integer timesteps"):
        ours(x, t + 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        ours(x, t + 1)


def test_simple_unet_is_the_notes_network():
    torch.manual_seed(0)
    theirs = notes(NOTES_004)["SimpleUnet"]()
    ours = SimpleUnet()  # width 1, 3 channels
    same_layout(ours, theirs)
    assert param_count(ours) == sum(p.numel() for p in theirs.parameters()) == 62_438_883
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    theirs.eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 250])
    with torch.no_grad():
        assert torch.allclose(ours(x, t), theirs(x, t), atol=1e-5)


def test_basic_unet_is_the_notes_network():
    torch.manual_seed(0)
    theirs = notes(NOTES_003)["BasicUNet"]()
    ours = BasicUNet()
    same_layout(ours, theirs)
    assert sum(p.numel() for p in ours.parameters()) == 309_185  # the notes' printed count
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x.clone()), atol=1e-6)  # net(x), as the notes
        assert torch.allclose(ours(x, torch.tensor([3, 900])), theirs(x.clone()), atol=1e-6)


def test_corrupt_and_mixing_sample():
    x = torch.rand(4, 1, 8, 8)
    noise = torch.rand(4, 1, 8, 8)
    amount = torch.linspace(0, 1, 4)
    out = corrupt(x, amount, noise)
    assert torch.allclose(out[0], x[0]) and torch.allclose(out[-1], noise[-1])
    assert torch.allclose(out[1], (1 - amount[1]) * x[1] + amount[1] * noise[1])
    torch.manual_seed(0)
    assert corrupt(x, 0.5).shape == x.shape  # uniform noise drawn when not given

    # with a constant prediction the loop lands exactly on it, moving 1/(n - i) each step
    target = torch.full_like(x, 0.25)
    seen = []

    def net(z, t):
        assert t.dtype == torch.long and t.shape == (4,)
        return target

    final = mixing_sample(net, x.clone(), 4, callback=lambda i, z, p: seen.append((i, z)))
    assert torch.allclose(final, target)
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    assert torch.allclose(seen[0][1], x * 0.75 + target * 0.25)

    # seed 003's first-model path runs end to end
    torch.manual_seed(0)
    bnet = BasicUNet()
    samples = mixing_sample(bnet, torch.rand(2, 1, 28, 28), steps=3)
    assert samples.shape == (2, 1, 28, 28) and not samples.requires_grad


# ---- the modern UNet's conditioning semantics ---------------------------------------------------
def test_unet_starts_at_zero_and_conditioning_changes_the_output():
    net, size = tiny("unet")
    # every residual branch starts as the identity: zero last conv / output projections
    from difflab.nets.blocks import Attention, ResBlock

    res = [m for m in net.modules() if isinstance(m, ResBlock)]
    attn = [m for m in net.modules() if isinstance(m, Attention)]
    assert len(res) == 8 and len(attn) == 4
    assert not any(m.conv2.weight.any() or m.conv2.bias.any() for m in res)
    assert not any(m.proj.weight.any() or m.cross_proj.weight.any() for m in attn)
    x, t = inputs(net, size, batch=2)
    ctx = torch.randn(2, 3, 6)
    assert not net(x, t, class_labels=torch.tensor([0, 1]), context=ctx).any()  # zero-init out
    wake_zero_params(net)
    with torch.no_grad():
        base = net(x, t, class_labels=torch.tensor([0, 1]), context=ctx)
        assert not torch.allclose(base, net(x, t, class_labels=torch.tensor([2, 2]), context=ctx))
        assert not torch.allclose(base, net(x, t, class_labels=torch.tensor([0, 1]),
                                            context=torch.randn(2, 3, 6)))
        assert not torch.allclose(base, net(x, t + 1, class_labels=torch.tensor([0, 1]),
                                            context=ctx))
        assert torch.allclose(base, net(x, t.float(), class_labels=torch.tensor([0, 1]),
                                        context=ctx))


def test_unet_null_class_and_empty_context_mean_unconditional():
    net, size = tiny("unet")
    wake_zero_params(net)
    x, t = inputs(net, size, batch=2)
    null = torch.full((2,), net.num_classes)
    ctx = torch.randn(2, 3, 6)
    with torch.no_grad():
        # class_labels=None is the null class
        assert torch.equal(net(x, t), net(x, t, class_labels=null))
        # context=None is an all-zero context: no cross-attention contribution at all
        uncond = net(x, t, class_labels=null)
        assert torch.allclose(uncond, net(x, t, class_labels=null,
                                          context=torch.zeros(2, 5, 6)), atol=1e-6)
        assert not torch.allclose(uncond, net(x, t, class_labels=null, context=ctx))
        # all-zero tokens are padding; zeroing one sample's context drops it for that sample only
        padded = torch.cat([ctx, torch.zeros(2, 2, 6)], dim=1)
        assert torch.allclose(net(x, t, context=ctx), net(x, t, context=padded), atol=1e-5)
        dropped = ctx.clone()
        dropped[1] = 0
        mixed = net(x, t, context=dropped)
        assert torch.allclose(mixed[0], net(x, t, context=ctx)[0], atol=1e-5)
        assert torch.allclose(mixed[1], net(x, t)[1], atol=1e-5)


def test_unet_config_checks():
    with pytest.raises(ValueError, match="need image_size"):
        UNetConfig(attention_resolutions=(7,))
    with pytest.raises(ValueError, match=r"levels are \[28, 14, 7\]"):
        UNetConfig(attention_resolutions=(8,), image_size=28)
    with pytest.raises(ValueError, match="num_heads=3 must divide"):
        UNetConfig(base_channels=8, num_heads=3)
    with pytest.raises(ValueError, match="'unet'"):
        UNetConfig(kind="myunet")
    assert UNetConfig(image_size=27, attention_resolutions=(7,)).level_sizes() == (28, 14, 7)


def test_unet_channels_last_matches():
    net, size = tiny("unet")
    wake_zero_params(net)
    x, t = inputs(net, size, batch=2)
    cond = cond_inputs(net, 2)
    with torch.no_grad():
        ref = net(x, t, **cond)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last), t, **cond)
    assert torch.allclose(ref, out, atol=1e-5)


# ---- diffusers wrappers ---------------------------------------------------------------------------
def test_diffusers_wrappers_equal_the_inner_model():
    net, size = tiny("diffusers-unet")
    x, t = inputs(net, size, batch=2)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(net(x, t, class_labels=labels),
                           net.inner(x, t, class_labels=labels).sample)
        # class_labels=None is the null class, the last of num_class_embeds
        assert net.num_classes == 3
        assert torch.equal(net(x, t), net.inner(x, t, class_labels=torch.tensor([3, 3])).sample)
        assert not torch.allclose(net(x, t), net(x, t, class_labels=labels))

    net, size = tiny("diffusers-cond-unet")
    x, t = inputs(net, size, batch=2)
    ctx = torch.randn(2, 4, 6)
    with torch.no_grad():
        out = net(x, t, class_labels=labels, context=ctx)
        assert torch.equal(out, net.inner(x, t, encoder_hidden_states=ctx,
                                          class_labels=labels).sample)
        assert not torch.allclose(out, net(x, t, class_labels=labels, context=2 * ctx))
        assert torch.equal(net(x, t, class_labels=labels),
                           net(x, t, class_labels=labels, context=torch.zeros(2, 1, 6)))


def test_diffusers_default_is_seed_003_recipe():
    net = build_net(DiffusersUNetConfig())
    assert sum(p.numel() for p in net.parameters()) == 1_707_009  # the notes' printed count
    assert net.inner.config.block_out_channels == (32, 64, 64)
    assert net.image_size == 28 and net.num_classes == 0


@pytest.mark.parametrize("kind", ["simple-unet", "unet", "diffusers-unet", "diffusers-cond-unet"])
def test_sinusoidal_nets_take_float_t(kind):
    net, size = tiny(kind)
    wake_zero_params(net)
    net.eval()
    x, t = inputs(net, size, batch=2)
    cond = cond_inputs(net, 2)
    with torch.no_grad():
        out = net(x, t, **cond)
        assert torch.allclose(out, net(x, t.float(), **cond), atol=1e-5)
        between = net(x, t.float() + 0.5, **cond)
    assert torch.isfinite(between).all() and not torch.allclose(out, between)


# ---- configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", NET_KINDS)
def test_config_json_round_trip_rebuilds_the_same_network(kind, tmp_path):
    cfg, size = TINY[kind]
    text = cfg.to_json()
    again = net_config_from_dict(json.loads(text))
    assert again == cfg and type(again) is type(cfg)
    assert type(cfg).from_dict(json.loads(text)) == cfg
    cfg.to_json(tmp_path / "net.json")
    assert type(cfg).from_json(tmp_path / "net.json") == cfg
    net, _ = tiny(kind, seed=0)
    wake_zero_params(net)
    torch.manual_seed(1)
    rebuilt = build_net(again)
    same_layout(net, rebuilt)
    rebuilt.load_state_dict(net.state_dict())
    net.eval()
    rebuilt.eval()
    x, t = inputs(net, size, batch=2)
    cond = cond_inputs(net, 2)
    with torch.no_grad():
        assert torch.equal(net(x, t, **cond), rebuilt(x, t, **cond))


def test_registry():
    assert NET_KINDS == ("myunet", "simple-unet", "basic-unet", "unet", "diffusers-unet",
                         "diffusers-cond-unet")
    assert [predicts(k) for k in NET_KINDS] == ["eps", "eps", "x0", "eps", "eps", "eps"]
    assert [required_image_size(k, 30) for k in NET_KINDS] == [28, 32, 32, 30, 32, 32]
    assert required_image_size("simple-unet", 64) == 64
    assert required_image_size("basic-unet", 28) == 28
    with pytest.raises(ValueError, match="choose one of: 'myunet'"):
        net_config_from_dict({"kind": "resnet"})
    with pytest.raises(ValueError, match="needs a 'kind'"):
        net_config_from_dict({"in_channels": 1})
    with pytest.raises(ValueError, match="has no field"):
        net_config_from_dict({"kind": "unet", "widht": 3})
    with pytest.raises(ValueError, match="--image-size 28"):
        default_net_config("myunet", in_channels=1, image_size=32)
    with pytest.raises(ValueError, match="unconditional"):
        default_net_config("simple-unet", in_channels=1, image_size=32, num_classes=10)
    with pytest.raises(ValueError, match="context_dim > 0"):
        default_net_config("diffusers-cond-unet", in_channels=1, image_size=28)
    cfg = default_net_config("unet", in_channels=1, image_size=28, num_classes=10, context_dim=16)
    net = build_net(cfg)
    assert (net.num_classes, net.context_dim, net.image_size) == (10, 16, 28)
    assert cfg.attention_resolutions == (7,)
    assert default_net_config("unet", in_channels=1, image_size=28).attention_resolutions == ()
    big = default_net_config("unet", in_channels=3, image_size=64, context_dim=16)
    assert big.attention_resolutions == (16, 8)
    cfg = default_net_config("diffusers-unet", in_channels=3, image_size=32, num_classes=10)
    assert cfg.num_class_embeds == 11
    assert default_net_config("myunet", in_channels=1, image_size=28, n_steps=200).n_steps == 200


# ---- contract errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", NET_KINDS)
def test_wrong_image_raises_saying_what_is_expected(kind):
    net, size = tiny(kind)
    with pytest.raises(ValueError, match=rf"expects 1(x{size}x{size})?(-channel)? images, got 3x"):
        net(torch.randn(1, 3, size, size), torch.tensor([1]))
    if net.image_size is not None:
        with pytest.raises(ValueError, match=rf"expects 1x{size}x{size} images, got 1x32x32; "
                                             rf"resize the data with --image-size {size}"):
            net(torch.randn(1, 1, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="expects t shaped"):
        net(torch.randn(2, 1, size, size), torch.tensor([1, 2, 3]))


def test_exact_messages():
    with pytest.raises(ValueError, match=r"^MyUNet expects 1x28x28 images, got 3x32x32; resize "
                                         r"the data with --image-size 28"):
        MyUNet()(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="divisible by 16, got 1x24x24; resize the data with "
                                         "--image-size 32"):
        SimpleUnet(in_channels=1, width=0.125)(torch.randn(1, 1, 24, 24), torch.tensor([1]))
    with pytest.raises(ValueError, match="divisible by 4, got 1x30x30"):
        BasicUNet()(torch.randn(1, 1, 30, 30))


@pytest.mark.parametrize("kind", ["myunet", "simple-unet", "basic-unet", "diffusers-unet"])
def test_unsupported_conditioning_raises(kind):
    cfg, size = TINY[kind]
    if kind == "diffusers-unet":
        cfg = cfg.replace(num_class_embeds=None)
    net = build_net(cfg)
    x, t = inputs(net, size, batch=2)
    with pytest.raises(ValueError, match="takes no class_labels"):
        net(x, t, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="takes no context"):
        net(x, t, context=torch.randn(2, 3, 4))


def test_bad_conditioning_shapes_raise():
    net, size = tiny("unet")
    x, t = inputs(net, size, batch=2)
    with pytest.raises(ValueError, match=r"context shaped \[B, L, 6\]"):
        net(x, t, context=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"class_labels shaped \[B\]"):
        net(x, t, class_labels=torch.tensor([1]))
