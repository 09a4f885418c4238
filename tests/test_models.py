"""Models against torchvision with the same weights (eval outputs, train
outputs, every parameter gradient, running stats after a step), state_dict
compatibility for every architecture, convx.convert, and the main job."""
import copy
import subprocess
import sys

import pytest
import torch
import torchvision

import convx
from convx import models

TORCHVISION_ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                     "wide_resnet50_2", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
                     "vgg19_bn", "alexnet", "googlenet", "densenet121", "densenet161", "densenet169", "densenet201",
                     "inception_v3", "mobilenet_v2"]


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_state_dict_keys_and_shapes_match_torchvision(arch):
    with torch.device("meta"):
        kw = {"init_weights": False} if arch == "inception_v3" else {}
        tv = getattr(torchvision.models, arch)(num_classes=17, **kw)
        cx = getattr(models, arch)(num_classes=17, **kw)
    assert {k: v.shape for k, v in cx.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}
    assert list(cx.state_dict()) == list(tv.state_dict())


def _randomise(model):
    """Weights that keep the signal alive and statistics that are not trivial."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _close(a, b, rel=2e-3):
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    scale = b.double().abs().max().item() if b.numel() else 0.0
    floor = 1e-12 if a.dtype == torch.float64 else 1e-5
    assert err <= rel * scale + floor, f"max error {err:.3e} vs scale {scale:.3e}"


PARITY = {  # id: (arch, input size, kwargs)
    "resnet18": ("resnet18", 64, {}),
    "resnet50": ("resnet50", 64, {}),
    "resnext50_32x4d": ("resnext50_32x4d", 64, {}),
    "vgg11_bn": ("vgg11_bn", 32, {}),
    "vgg11": ("vgg11", 32, {}),
    "googlenet": ("googlenet", 64, {"aux_logits": True, "init_weights": True}),
    "alexnet": ("alexnet", 64, {}),
    "densenet121": ("densenet121", 64, {}),
    "densenet121_memory_efficient": ("densenet121", 64, {"memory_efficient": True}),
    "densenet161_dropout": ("densenet161", 64, {"drop_rate": 0.2}),
    # 299x299: the auxiliary classifier (5x5/3 pool, then a 5x5 conv) needs the full 17x17 grid
    "inception_v3": ("inception_v3", 299, {"aux_logits": True, "init_weights": True}),
    "inception_v3_transform_input": ("inception_v3", 139, {"aux_logits": False, "transform_input": True,
                                                          "init_weights": True}),
    "mobilenet_v2": ("mobilenet_v2", 32, {}),
    "mobilenet_v2_width_0.5": ("mobilenet_v2", 32, {"width_mult": 0.5}),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_parity_with_torchvision(case):
    """In float64: with batch 2 at these sizes the last batch norms see a
    handful of values per channel, and float32 gradients through them are
    ill-conditioned (torch's own float32 gradients are 10%+ off float64)."""
    arch, size, kw = PARITY[case]
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(num_classes=10, **kw)
    _randomise(tv)
    cx = getattr(models, arch)(num_classes=10, **kw)
    cx.load_state_dict(tv.state_dict(), strict=True)
    tv.double(), cx.double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)

    tv.eval(), cx.eval()
    with torch.no_grad():
        _close(cx(x), tv(x))

    tv.train(), cx.train()
    opt_t = torch.optim.SGD(tv.parameters(), lr=0.01)
    opt_c = torch.optim.SGD(cx.parameters(), lr=0.01)
    outs = []
    for model, opt in ((tv, opt_t), (cx, opt_c)):
        torch.manual_seed(1)  # the same dropout masks
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = logits.square().mean() + (sum(o.square().mean() for o in out[1:]) if isinstance(out, tuple) else 0)
        opt.zero_grad()
        loss.backward()
        outs.append((out, {k: p.grad.clone() for k, p in model.named_parameters()}))
        opt.step()
    (out_t, grads_t), (out_c, grads_c) = outs
    if isinstance(out_t, tuple):
        assert type(out_c).__name__ == type(out_t).__name__ and out_c._fields == out_t._fields
        for a, b in zip(out_c, out_t):
            _close(a, b)
    else:
        _close(out_c, out_t)
    assert grads_c.keys() == grads_t.keys()
    for k in grads_t:
        _close(grads_c[k], grads_t[k], rel=1e-7)
    for (k, a), (_, b) in zip(cx.state_dict().items(), tv.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.parametrize("arch,in_ch,size", [("resnet20", 3, 32), ("resnet20", 1, 8), ("lenet5", 1, 32)])
def test_small_models_match_their_torch_twin(arch, in_ch, size):
    torch.manual_seed(0)
    cx = getattr(models, arch)(num_classes=10, in_channels=in_ch).double()
    tw = getattr(models, arch)(num_classes=10, in_channels=in_ch, impl="torch").double()
    _randomise(cx)
    tw.load_state_dict(cx.state_dict(), strict=True)
    x = torch.randn(4, in_ch, size, size, dtype=torch.float64)
    for mode in ("train", "eval"):
        cx.train(mode == "train"), tw.train(mode == "train")
        y, yr = cx(x), tw(x)
        assert y.shape == (4, 10)
        _close(y, yr, rel=1e-9)
        g = torch.autograd.grad(y.square().sum(), list(cx.parameters()))
        gr = torch.autograd.grad(yr.square().sum(), list(tw.parameters()))
        for a, b in zip(g, gr):
            _close(a, b, rel=1e-7)


def test_resnet_uses_fused_tail_and_runs_convx_kernels():
    m = models.resnet18()
    tails = [b.bn2 for b in m.modules() if isinstance(b, models.BasicBlock)]
    assert tails and all(isinstance(bn, convx.BatchNorm2d) and bn.activation == "relu" for bn in tails)
    assert not any(type(mod) in (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d) for mod in m.modules())
    with torch.autograd.profiler.profile() as prof:
        m(torch.randn(2, 3, 32, 32)).sum().backward()
    names = {e.name for e in prof.function_events}
    assert {"convx::conv2d", "convx::batch_norm", "convx::max_pool2d", "convx::adaptive_avg_pool2d",
            "convx::conv2d_backward_weight", "convx::batch_norm_backward"} <= names
    assert "aten::cudnn_convolution" not in names and "aten::mkldnn_convolution" not in names
    assert "aten::native_batch_norm" not in names


@pytest.mark.parametrize("arch,size", [("densenet121", 32), ("inception_v3", 75), ("mobilenet_v2", 32),
                                       ("unet", 44)])
def test_new_models_run_only_convx_kernels(arch, size):
    """Every convolution, batch norm and pooling of the model is convx's, forward and backward."""
    kw = {"num_classes": 10} if arch != "unet" else {"depth": 2, "width": 8, "batch_norm": True, "in_channels": 3}
    if arch == "inception_v3":
        kw["aux_logits"] = False
    m = getattr(models, arch)(**kw)
    assert not any(type(mod) in (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d,
                                 torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d) for mod in m.modules())
    with torch.autograd.profiler.profile() as prof:
        m(torch.randn(2, 3, size, size)).sum().backward()
    names = {e.name for e in prof.function_events}
    assert {"convx::conv2d", "convx::batch_norm", "convx::conv2d_backward_weight"} <= names
    forbidden = {"aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::native_batch_norm",
                 "aten::max_pool2d_with_indices", "aten::avg_pool2d", "aten::_adaptive_avg_pool2d",
                 "aten::slow_conv_transpose2d", "aten::_convolution"}
    assert not names & forbidden, names & forbidden


def test_densenet_loads_the_published_checkpoint_key_spelling():
    """torchvision's DenseNet checkpoint files spell norm1 as norm.1 (its loader renames them); so does ours."""
    tv = torchvision.models.densenet121(num_classes=5)
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in tv.state_dict().items()}
    assert any(".norm.1." in k for k in old)
    cx = models.densenet121(weights=old, num_classes=5)
    for (k, a), (_, b) in zip(cx.state_dict().items(), tv.state_dict().items()):
        assert torch.equal(a, b), k


def test_unet_is_the_papers_network():
    """572x572 in, 388x388 out, 2 classes, 64 to 1024 channels, 23 convolutional layers (the paper's counts)."""
    with torch.device("meta"):
        m = models.unet()
        y = m(torch.empty(1, 1, 572, 572))
    assert y.shape == (1, 2, 388, 388) and m.output_size(572) == 388
    convs = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 23
    assert max(c.out_channels for c in convs) == 1024
    assert all(isinstance(c, (convx.Conv2d, convx.ConvTranspose2d)) for c in convs)


@pytest.mark.parametrize("depth,width,padding,batch_norm,size", [(2, 4, 0, False, 44), (2, 4, 0, True, 45),
                                                                  (3, 3, 1, True, 24), (1, 5, 1, False, 11)])
def test_unet_matches_its_torch_twin(depth, width, padding, batch_norm, size):
    """Outputs, input and parameter gradients, running statistics: float64, against the same network
    built from torch.nn layers; odd sizes exercise the skip connections' centre crop."""
    torch.manual_seed(0)
    kw = dict(in_channels=2, num_classes=3, depth=depth, width=width, padding=padding, batch_norm=batch_norm)
    cx = models.unet(**kw).double()
    tw = models.unet(impl="torch", **kw).double()
    _randomise(cx)
    tw.load_state_dict(cx.state_dict(), strict=True)
    x = torch.randn(2, 2, size, size, dtype=torch.float64, requires_grad=True)
    for mode in ("train", "eval"):
        cx.train(mode == "train"), tw.train(mode == "train")
        y, yr = cx(x), tw(x)
        assert y.shape == (2, 3, cx.output_size(size), cx.output_size(size))
        _close(y, yr, rel=1e-9)
        g = torch.autograd.grad(y.square().sum(), [x] + list(cx.parameters()))
        gr = torch.autograd.grad(yr.square().sum(), [x] + list(tw.parameters()))
        for a, b in zip(g, gr):
            _close(a, b, rel=1e-7)
    for (k, a), (_, b) in zip(cx.state_dict().items(), tw.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_weights_from_a_path(tmp_path):
    tv = torchvision.models.resnet18(num_classes=5)
    path = tmp_path / "r18.pt"
    torch.save(tv.state_dict(), path)
    cx = models.resnet18(weights=str(path), num_classes=5)
    for (k, a), (_, b) in zip(cx.state_dict().items(), tv.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_googlenet_transform_input_and_eval_output():
    tv = torchvision.models.googlenet(num_classes=10, aux_logits=True, transform_input=True, init_weights=True)
    _randomise(tv)
    cx = models.googlenet(num_classes=10, aux_logits=True, transform_input=True)
    cx.load_state_dict(tv.state_dict())
    tv.eval(), cx.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = cx(x)
        assert isinstance(y, torch.Tensor)
        _close(y, tv(x), rel=1e-4)


# ---------------------------------------------------------------- convert


def _tv_resnet18():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10)
    _randomise(tv)
    return tv.double()


def test_convert_swaps_layers_and_keeps_tensors():
    tv = _tv_resnet18()
    n_swappable = sum(type(m) in (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d,
                                  torch.nn.AdaptiveAvgPool2d) for m in tv.modules())
    params = dict(tv.named_parameters())
    buffers = dict(tv.named_buffers())
    cm, report = convx.convert(tv, inplace=False, return_report=True)
    assert cm is not tv and len(report) == n_swappable
    assert type(tv.conv1) is torch.nn.Conv2d  # the copy was converted, not the model
    assert isinstance(cm.conv1, convx.Conv2d) and isinstance(cm.layer1[0].bn1, convx.BatchNorm2d)
    same = convx.convert(tv)  # in place by default
    assert same is tv and isinstance(tv.layer4[1].bn2, convx.BatchNorm2d)
    assert all(p is params[k] for k, p in tv.named_parameters())
    assert all(b is buffers[k] for k, b in tv.named_buffers())


def test_convert_keeps_an_existing_optimizer_training_the_model():
    """An optimizer built before the conversion must train the converted model
    (a converted copy would make every step a silent no-op)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    model = convx.convert(model)
    assert isinstance(model[0], convx.Conv2d)
    x = torch.randn(4, 3, 8, 8)
    before = model[0].weight.detach().clone()
    for m, o in ((model, opt), (ref, opt_ref)):
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    assert not torch.equal(model[0].weight, before)
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_converted_torchvision_model_matches(mode, fuse):
    tv = _tv_resnet18().train(mode == "train")
    ref = copy.deepcopy(tv)
    cm, report = convx.convert(tv, fuse=fuse, return_report=True)
    if fuse:
        kind = "bn+add+relu" if mode == "train" else "fold:"
        assert any(kind in r for r in report), report
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    y, yr = cm(x), ref(x)
    _close(y, yr, rel=1e-9)
    if fuse:  # the fused graph left the converted model itself unchanged
        _close(tv(x), yr, rel=1e-9)
    if mode == "train":
        g = torch.autograd.grad(y.square().sum(), [x] + list(cm.parameters()))
        gr = torch.autograd.grad(yr.square().sum(), [x] + list(ref.parameters()))
        for a, b in zip(g, gr):
            _close(a, b, rel=1e-7)
        assert list(cm.state_dict()) == list(ref.state_dict())
        if fuse:  # the fused batch norms train the model's own parameters and statistics
            assert {id(p) for p in cm.parameters()} == {id(p) for p in tv.parameters()}
            for (k, a), (_, b) in zip(cm.state_dict().items(), tv.state_dict().items()):
                assert a is b or torch.equal(a, b), k


def test_convert_batch_norm_1d_and_3d():
    m = torch.nn.Sequential(torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4))
    m3 = torch.nn.BatchNorm3d(3)
    ref, ref3 = copy.deepcopy(m), copy.deepcopy(m3)
    convx.convert(m), convx.convert(m3)
    assert type(m[0]) is convx.BatchNorm1d and type(m3) is convx.BatchNorm3d
    x, x3 = torch.randn(6, 5), torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(m(x), ref(x))
    torch.testing.assert_close(m3(x3), ref3(x3))
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


def test_convert_fuse_counts_on_resnet18():
    tv = _tv_resnet18().train()
    _, report = convx.convert(tv, fuse=True, return_report=True)
    assert sum("(bn+add+relu)" in r for r in report) == 8  # every BasicBlock's tail
    assert sum("(bn+relu)" in r for r in report) == 9      # the stem and every block's bn1
    tv.eval()
    _, report = convx.convert(tv, fuse=True, return_report=True)
    assert sum(r.startswith("fold:") for r in report) == 20
    assert sum("(conv+bias+add+relu)" in r for r in report) == 8  # conv2 + folded bn2 + identity + relu
    assert sum("(conv+bias+relu)" in r for r in report) == 9      # the stem and every block's conv1
    assert not any("AddReLU" in r or "convx_add_relu" in r for r in report)


def test_convert_untraceable_model_is_still_converted():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = -x
            return torch.relu(self.bn(self.conv(x)))

    m = Branchy()
    ref = copy.deepcopy(m)
    cm, report = convx.convert(m, fuse=True, return_report=True)
    assert cm is m and isinstance(cm.conv, convx.Conv2d) and any("not traceable" in r for r in report)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    _close(cm.double()(x), ref.double()(x), rel=1e-9)


# ---------------------------------------------------------------- the main job


def test_train_command_runs_and_learns():
    out = subprocess.run([sys.executable, "-m", "convx", "train", "--epochs", "4", "--quiet"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "report" in out.stdout and "resnet20 (convx)" in out.stdout and "resnet20 (torch.nn)" in out.stdout
    acc = float(out.stdout.split("resnet20 (convx)")[1].split("%")[0])
    assert acc > 80.0, out.stdout


def test_demo_command_parity():
    """`python -m convx demo`: its parity check passes (on the exact path; with Winograd, the
    default, its gradient difference is reported beside it) and it exits 0."""
    out = subprocess.run([sys.executable, "-m", "convx", "demo", "--device", "cpu", "--reps", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "parity: OK" in out.stdout and "with Winograd" in out.stdout, out.stdout
