"""Transfer learning: freezing (frozen parameters and statistics unchanged,
no gradient kept), the feature path, checkpoint adaptation, and the
``python -m convx transfer`` job."""
import subprocess
import sys

import pytest
import torch
import torchvision

from convx import models, transfer


def _digits_like(n, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_freeze_keeps_frozen_layers_exactly():
    torch.manual_seed(0)
    m = models.resnet20(num_classes=5, in_channels=1)
    frozen_names = ["conv1", "bn1", "layer1"]
    frozen = transfer.freeze(m, frozen_names)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = _digits_like(40)
    transfer.fit(m, x, y, steps=5, batch=16, lr=1e-2, size=8, seed=0, desc="", quiet=True, frozen=frozen)
    after = m.state_dict()
    for k in before:
        if k.split(".")[0] in frozen_names:
            assert torch.equal(before[k], after[k]), k  # weights, running statistics, num_batches_tracked
        elif k.endswith("weight") and "bn" not in k:
            assert not torch.equal(before[k], after[k]), k
    for name, p in m.named_parameters():
        frozen_p = name.split(".")[0] in frozen_names
        assert p.requires_grad != frozen_p, name
        assert (p.grad is None) == frozen_p, name
    assert all(not mod.training for f in frozen for mod in f.modules())  # left in eval mode by train_mode


def test_freeze_names_a_missing_module():
    with pytest.raises(ValueError, match="no submodule 'layer9'"):
        transfer.freeze(models.resnet20(), ["layer9"])


def test_feature_extractor_and_linear_classifier():
    torch.manual_seed(0)
    m = models.resnet20(num_classes=5, in_channels=1)
    ext = transfer.feature_extractor(m)
    assert isinstance(m.fc, torch.nn.Linear) and isinstance(ext.fc, torch.nn.Identity)  # m is unchanged
    x, _ = _digits_like(12)
    feats = ext(x)
    assert feats.shape == (12, 64) and not feats.requires_grad
    assert not any(p.requires_grad for p in ext.parameters()) and not ext.training
    # linearly separable features: the fitted classifier gets every one right
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 16, generator=g) * 4
    labels = torch.arange(3).repeat_interleave(20)
    f = centers[labels] + torch.randn(60, 16, generator=g)
    clf = transfer.fit_linear(f, labels, 3)
    assert (clf(f).argmax(1) == labels).all()


def test_torchvision_checkpoint_adapts_to_grayscale_and_new_classes():
    tv = torchvision.models.resnet18(num_classes=1000)
    state = tv.state_dict()
    m = models.resnet18(num_classes=5, in_channels=1)
    notes = transfer.adapt_state_dict(state, m, "fc")
    assert any("conv1.weight" in n and "summed" in n for n in notes)
    assert sum("fc." in n for n in notes) == 2
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    torch.testing.assert_close(m.conv1.weight, tv.conv1.weight.sum(1, keepdim=True))
    # grayscale x through the summed filter == the same x in all three RGB channels through the original
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(m.conv1(x), tv.conv1(x.expand(1, 3, 16, 16)), rtol=1e-5, atol=1e-5)


def test_transfer_command_runs_every_mode(tmp_path):
    ckpt = tmp_path / "pre.pt"
    out = subprocess.run([sys.executable, "-m", "convx", "transfer", "--pretrain-epochs", "2", "--steps", "8",
                          "--shots", "3", "--feature-copies", "1", "--repeats", "2", "--quiet", "--save-pretrained",
                          str(ckpt)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    table = out.stdout.split("report (digits 5-9")[1]
    for mode in transfer.MODES:
        assert f"  {mode} " in table, out.stdout
    assert "frozen: conv1,bn1,layer1,layer2" in table
    # the saved checkpoint is scenario 1's input
    out = subprocess.run([sys.executable, "-m", "convx", "transfer", "--weights", str(ckpt), "--modes", "finetune",
                          "--freeze", "conv1,bn1,layer1", "--steps", "4", "--shots", "2", "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "checkpoint: " in out.stdout and "frozen: conv1,bn1,layer1" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "convx", "transfer", "--modes", "bogus"], capture_output=True,
                         text=True, timeout=600)
    assert bad.returncode == 2 and "unknown ['bogus']" in bad.stderr


def test_trainable_parameter_counts():
    m = models.resnet20(num_classes=5, in_channels=1)
    total = sum(p.numel() for p in m.parameters())
    transfer.freeze(m, ["conv1", "bn1", "layer1", "layer2"])
    kept = sum(p.numel() for n, p in m.named_parameters() if n.split(".")[0] in ("layer3", "fc"))
    assert transfer._trainable(m) == kept < total
