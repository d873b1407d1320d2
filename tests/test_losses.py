import math

import pytest
import torch
import torch.nn.functional as F

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.losses import CRLoss, LossConfig, available_losses, build_loss


def _tiny():
    # 1 image, 2 classes, 2x2 pixels, chosen by hand.
    logits = torch.tensor([[[[2.0, 0.0], [1.0, -1.0]],
                            [[0.0, 1.0], [1.0, 2.0]]]])
    target = torch.tensor([[[0, 1], [1, 1]]])
    return logits, target


def test_cr_loss_matches_hand_computation():
    logits, target = _tiny()
    # Softmax by hand, pixel by pixel: p1 = 1 / (1 + exp(l0 - l1)).
    l0 = [2.0, 0.0, 1.0, -1.0]
    l1 = [0.0, 1.0, 1.0, 2.0]
    y = [0, 1, 1, 1]
    p1 = [1.0 / (1.0 + math.exp(a - b)) for a, b in zip(l0, l1)]
    p0 = [1.0 - p for p in p1]
    ce = -sum(math.log(p1[i] if y[i] else p0[i]) for i in range(4)) / 4
    eps = -sum(math.log(p0[i]) + math.log(p1[i]) for i in range(4)) / 8  # all classes and pixels
    inter = sum(p1[i] * y[i] for i in range(4))
    smooth = 1e-5
    dice = 1.0 - (2 * inter + smooth) / (sum(p1) + sum(y) + smooth)
    expected = dice + 0.9 * ce + 0.1 * eps
    got = CRLoss(alpha=0.1)(logits, target).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_cr_loss_equals_dice_plus_label_smoothed_ce():
    # (1 - a) CE + a * mean(-log p over classes) is CE with uniform label smoothing a.
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8)
    target = (torch.rand(3, 8, 8) > 0.7).long()
    cr = CRLoss(alpha=0.1)(logits, target)
    dice = build_loss("dice")(logits, target)
    smoothed = F.cross_entropy(logits, target, label_smoothing=0.1)
    assert cr.item() == pytest.approx((dice + smoothed).item(), rel=1e-5)


def _cr_written_out(logits, target, alpha):
    # The CR loss as the paper writes it (the implementation before MONAI's DiceCELoss took its place).
    log_p = F.log_softmax(logits.float(), dim=1)
    dice = build_loss("dice")(logits, target)
    return dice + (1.0 - alpha) * F.nll_loss(log_p, target) + alpha * (-log_p.mean())


@pytest.mark.parametrize("seed, shape", [(0, (3, 2, 8, 8)), (1, (2, 2, 6, 6)), (2, (2, 2, 16, 16)),
                                         (1, (2, 2, 3, 8, 8)), (5, (4, 3, 32, 32))])
def test_cr_loss_is_bit_equal_to_the_formula_written_out(seed, shape):
    torch.manual_seed(seed)
    logits = torch.randn(*shape, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]))
    cr = CRLoss(alpha=0.1)(logits, target)
    (grad,) = torch.autograd.grad(cr, logits)
    ref = _cr_written_out(logits, target, 0.1)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert torch.equal(cr, ref) and torch.equal(grad, ref_grad)


def test_cr_loss_alpha_zero_is_dice_plus_ce():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 6, 6)
    target = (torch.rand(2, 6, 6) > 0.5).long()
    cr = CRLoss(alpha=0.0)(logits, target)
    expected = build_loss("dice")(logits, target) + F.cross_entropy(logits, target)
    assert cr.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", available_losses())
def test_every_loss_is_finite_differentiable_and_lower_for_better_logits(name):
    torch.manual_seed(2)
    target = (torch.rand(2, 16, 16) > 0.6).long()
    good = torch.stack([(1 - target) * 4.0 - 2.0, target * 4.0 - 2.0], dim=1).float()
    bad = -good
    loss = build_loss(name)
    good.requires_grad_(True)
    value = loss(good, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(good.grad).all()
    assert value.item() < loss(bad, target).item()
    # (B, 1, H, W) targets are accepted too.
    assert loss(good.detach(), target[:, None]).item() == pytest.approx(value.item(), rel=1e-6)


def test_weighted_ce_weights_the_foreground():
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[0, 1], [1, 1]]])
    plain = build_loss(LossConfig(name="ce"))(logits, target)
    weighted = build_loss(LossConfig(name="ce", class_weights=(1.0, 5.0)))(logits, target)
    # Uniform logits give log 2 per pixel whatever the weights (a weighted mean).
    assert plain.item() == pytest.approx(math.log(2), rel=1e-6)
    assert weighted.item() == pytest.approx(math.log(2), rel=1e-6)
    logits[0, 1] = 1.0  # now foreground pixels are cheaper: weighting them lowers the mean
    assert build_loss(LossConfig(name="ce", class_weights=(1.0, 5.0)))(logits, target) < build_loss("ce")(logits, target)


def test_unknown_loss_and_bad_alpha_are_refused():
    with pytest.raises(GTVError, match="unknown loss"):
        build_loss("hinge")
    with pytest.raises(GTVError):
        CRLoss(alpha=1.5)


@pytest.mark.parametrize("name", ["cr", "dice", "ce", "focal", "dice_ce"])
def test_3d_logits_give_the_loss_of_their_slices_stacked(name):
    # Every loss pools over the batch, so a (B, C, D, H, W) volume scores like its B*D slices.
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 3, 8, 8)
    target = (torch.rand(2, 3, 8, 8) > 0.7).long()
    loss = build_loss(name)
    flat_logits = logits.permute(0, 2, 1, 3, 4).reshape(6, 2, 8, 8)
    torch.testing.assert_close(loss(logits, target), loss(flat_logits, target.reshape(6, 8, 8)))
