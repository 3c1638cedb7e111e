from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustar_ls.train.paired import paired_loss, per_image_paired_terms, select_worst


def linear_model(weight: list[list[float]], bias: list[float] | None = None) -> nn.Module:
    """A linear classifier on flattened (N, 1, 1, D) inputs with the given weights."""
    w = torch.tensor(weight)
    linear = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(w)
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias))
    return nn.Sequential(nn.Flatten(), linear)


def as_images(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows).view(len(rows), 1, 1, -1)


def test_align_term_exact_on_a_linear_model():
    model = linear_model([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    x = as_images([[1.0, 1.0, 5.0], [0.0, 3.0, 1.0]])
    x_tilde = as_images([[0.0, 0.0, 5.0], [9.0, 9.0, 9.0]])  # row 1 is unannotated: ignored
    y = torch.tensor([0, 1])
    has_mask = torch.tensor([True, False])
    out = paired_loss(model, x, x_tilde, y, has_mask, align_weight=0.1)
    # z(x0) - z(x̃0) = W (x0 - x̃0) = W [1, 1, 0] = [1, 2] -> squared distance 5; divided by N = 2
    assert out["align"].item() == pytest.approx(5.0 / 2)
    ce_x = F.cross_entropy(torch.tensor([[1.0, 2.0], [0.0, 6.0]]), y, reduction="sum") / 2
    ce_xt = F.cross_entropy(torch.tensor([[0.0, 0.0]]), y[:1], reduction="sum") / 2
    assert out["ce"].item() == pytest.approx(ce_x.item())
    assert out["ce_paired"].item() == pytest.approx(ce_xt.item())  # = ln 2 / 2
    assert out["loss"].item() == pytest.approx(ce_x.item() + ce_xt.item() + 0.1 * 2.5)


def test_unannotated_images_count_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(5, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 1, 0])
    none = torch.zeros(5, dtype=torch.bool)
    out = paired_loss(model, x, torch.randn_like(x), y, none, align_weight=0.1)
    plain = F.cross_entropy(model(x), y)
    assert out["loss"].item() == pytest.approx(plain.item())  # not 2 × CE (Robustar's bug)
    assert out["ce_paired"].item() == 0.0 and out["align"].item() == 0.0
    # and the gradient is that of plain cross-entropy, whatever x_tilde holds
    out["loss"].backward()
    grad = model[1].weight.grad.clone()
    model.zero_grad()
    plain.backward()
    assert torch.allclose(grad, model[1].weight.grad)


def test_mixed_batch_matches_the_per_image_formula():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, x_tilde = torch.randn(6, 3, 2, 2), torch.randn(6, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    has_mask = torch.tensor([True, False, True, False, False, True])
    lam = 0.3
    out = paired_loss(model, x, x_tilde, y, has_mask, lam)
    with torch.no_grad():
        zx, zt = model(x), model(x_tilde)
        per_image = F.cross_entropy(zx, y, reduction="none")
        extra = F.cross_entropy(zt, y, reduction="none") + lam * (zx - zt).pow(2).sum(1)
        expected = (per_image + has_mask.float() * extra).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    total = out["ce"] + out["ce_paired"] + lam * out["align"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    # changing an unannotated image's x̃ changes nothing
    x_tilde[1] += 100
    again = paired_loss(model, x, x_tilde, y, has_mask, lam)
    assert again["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_one_forward_pass_over_x_and_annotated_pairs():
    calls = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    x = torch.randn(8, 1, 2, 2)
    has_mask = torch.tensor([True, True, True, False, False, False, False, False])
    paired_loss(model, x, x.clone(), torch.zeros(8, dtype=torch.long), has_mask, 0.1)
    assert calls == [8 + 3]  # cost 1 + f, not 2


def test_worst_case_picks_the_max_loss_fill():
    model = linear_model([[1.0, 0.0], [0.0, 1.0]])
    x = as_images([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    # three candidate fills per image (K=3, N=3, 1, 1, 2)
    candidates = torch.stack(
        [
            as_images([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0]]),
            as_images([[0.0, 3.0], [0.0, 2.0], [0.5, 1.0]]),
            as_images([[1.0, 1.0], [4.0, 0.0], [0.0, 0.0]]),
        ]
    )
    chosen = select_worst(model, x, candidates, y, align_weight=0.1)
    with torch.no_grad():
        scores = torch.stack(
            [per_image_paired_terms(model(x), model(c), y, 0.1)[2] for c in candidates]
        )
    expected = scores.argmax(0)
    assert expected.tolist() == [1, 2, 1]  # hand check: the fills that flip or blur the class
    for i in range(3):
        assert torch.equal(chosen[i], candidates[expected[i], i])


def test_worst_case_leaves_batch_norm_and_mode_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 2))
    model.train()
    stats = model[1].running_mean.clone()
    x = torch.randn(4, 3, 2, 2)
    candidates = torch.randn(3, 4, 3, 2, 2)
    select_worst(model, x, candidates, torch.tensor([0, 1, 0, 1]), 0.1)
    assert model.training
    assert torch.equal(model[1].running_mean, stats)


def test_one_epoch_context_drives_plain_and_paired_epochs():
    """Built once per training: each epoch steps its optimizer and schedule once per batch,
    calls ``on_step`` with each batch's loss and labels its bar "epoch i/n"."""
    from robustar_ls.config import PairedConfig, TrainConfig
    from robustar_ls.train.loop import EpochContext, make_optimizer, train_one_epoch
    from robustar_ls.train.paired_epoch import paired_train_one_epoch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    optimizer, scheduler = make_optimizer(model, TrainConfig(lr=0.1), 4)
    losses, labels_seen = [], []

    def progress(batches, desc, leave):
        labels_seen.append(desc)
        assert leave is False
        return batches

    context = EpochContext(
        optimizer,
        scheduler,
        torch.device("cpu"),
        epochs=2,
        augment=False,
        generator=torch.Generator().manual_seed(0),
        progress=progress,
        on_step=losses.append,
    )
    images, labels = torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 0, 1])
    plain = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    stats = train_one_epoch(model, plain, context)
    assert set(stats) == {"loss", "accuracy"} and 0 <= stats["accuracy"] <= 1
    masks, has_mask = torch.ones(4, 1, 4, 4), torch.tensor([True, False, True, False])
    paired = [
        (images[:2], masks[:2], has_mask[:2], labels[:2]),
        (images[2:], masks[2:], has_mask[2:], labels[2:]),
    ]
    terms = paired_train_one_epoch(model, paired, context, PairedConfig(fill="black"), 1)
    assert terms["annotated"] == pytest.approx(0.5)
    assert labels_seen == ["epoch 1/2", "epoch 2/2"]
    assert len(losses) == 4 and all(isinstance(loss, float) for loss in losses)
    assert scheduler.last_epoch == 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # the cosine ran out: 4 steps
