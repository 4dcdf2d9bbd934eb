"""The class-weighted loss of data.balance=loss, with and without label smoothing."""
import torch
import torch.nn.functional as F

from resnetlab.data.summary import loss_weights
from resnetlab.engine.loss import classification_loss


def _reference(logits, y, weights, smoothing):
    """Each sample's smoothed cross-entropy, weighted by its own class's weight."""
    logp = logits.log_softmax(1)
    per = -(1 - smoothing) * logp.gather(1, y[:, None])[:, 0] - smoothing * logp.mean(1)
    w = weights[y]
    return (per * w).sum() / w.sum()


def test_a_sample_s_whole_smoothed_loss_takes_its_own_class_s_weight():
    torch.manual_seed(0)
    logits, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 5, (32,))
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(classification_loss(logits, y, weights, 0.1), _reference(logits, y, weights, 0.1))
    # without smoothing it is PyTorch's weighted loss; with equal weights, the unweighted one
    torch.testing.assert_close(classification_loss(logits, y, weights), F.cross_entropy(logits, y, weight=weights))
    torch.testing.assert_close(classification_loss(logits, y, torch.full((5,), 3.0, dtype=torch.float64), 0.1),
                               F.cross_entropy(logits, y, label_smoothing=0.1))


def test_a_rare_class_is_not_pulled_up_by_the_samples_of_the_others():
    """PyTorch's weight= with label_smoothing weighted each sample's smoothing term by every class's
    weight: a 500/500/10 folder trained so predicted the rare class for everything."""
    labels = torch.tensor([0] * 500 + [1] * 500 + [2] * 10)
    weights = loss_weights(labels, 3)  # the rare class weighs ~34x
    logits = torch.zeros(8, 3, requires_grad=True)
    classification_loss(logits, torch.zeros(8, dtype=torch.int64), weights, 0.1).backward()
    assert (logits.grad[:, 0] < 0).all() and (logits.grad[:, 1:] > 0).all()  # the true class up, both others down
    legacy = torch.zeros(8, 3, requires_grad=True)
    F.cross_entropy(legacy, torch.zeros(8, dtype=torch.int64), weight=weights, label_smoothing=0.1).backward()
    assert (legacy.grad[:, 2] < 0).all()  # (what it was: the rare class's logit raised by class-0 samples)
