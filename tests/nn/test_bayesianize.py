import copy
import io

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from pyro_dgm.nn import (
    BayesConv2d,
    BayesLinear,
    bayes_layers,
    bayesianize,
    bbb_loss,
    blundell_kl_weight,
    kl_divergence,
    predict,
    use_posterior_mean,
)


def _digits(dtype=torch.float32):
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=dtype).unsqueeze(1)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1400]], y[perm[:1400]], x[perm[1400:]], y[perm[1400:]]


def _convnet():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10))


def test_drop_in_conv_net_trains_on_digits_in_plain_pytorch():
    xtr, ytr, xte, yte = _digits()
    net = bayesianize(_convnet(), prior="scale_mixture", estimator="flipout")
    assert [type(m) for m in bayes_layers(net)] == [BayesConv2d, BayesLinear]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    num_batches = 14
    for _ in range(6):
        for i, idx in enumerate(torch.randperm(len(ytr)).chunk(num_batches)):
            out = net(xtr[idx])
            assert isinstance(out, torch.Tensor)
            nll = F.cross_entropy(out, ytr[idx], reduction="none")
            loss = bbb_loss(nll, kl_divergence(net), num_data=len(ytr),
                            kl_weight=blundell_kl_weight(i, num_batches))
            opt.zero_grad()
            loss.backward()
            opt.step()
    pred = predict(net, xte, num_samples=20)
    accuracy = float((pred.probs.argmax(-1) == yte).float().mean())
    assert accuracy > 0.9, accuracy
    wrong = pred.probs.argmax(-1) != yte
    # misclassified digits carry more predictive entropy than the correct ones
    assert float(pred.entropy[wrong].mean()) > float(pred.entropy[~wrong].mean())


def test_original_untouched_and_moped_init():
    net = _convnet()
    before = copy.deepcopy(net.state_dict())
    bnn = bayesianize(net, init_from_weights=True, moped_delta=0.1)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert isinstance(net[0], nn.Conv2d)
    torch.testing.assert_close(bnn[0].weight_mu, net[0].weight)
    torch.testing.assert_close(bnn[3].weight_sigma, 0.1 * net[3].weight.abs().clamp_min(1e-8),
                               rtol=1e-4, atol=1e-7)
    x = torch.randn(5, 1, 8, 8)
    with use_posterior_mean(bnn):
        torch.testing.assert_close(bnn(x), net(x))


def test_state_dict_round_trip():
    net = bayesianize(_convnet(), prior="scale_mixture", estimator="local",
                      prior_kwargs=dict(pi=0.25, sigma2=1e-3))
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    other = bayesianize(_convnet(), prior="scale_mixture", estimator="local")
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items(),
                              strict=True):
        torch.testing.assert_close(a, b, msg=k)
    assert float(other[0].prior.pi) == 0.25
    torch.manual_seed(0)
    first = net(torch.ones(2, 1, 8, 8))
    torch.manual_seed(0)
    torch.testing.assert_close(other(torch.ones(2, 1, 8, 8)), first)


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class _ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.blocks = nn.ModuleList([_Block(4), _Block(4)])
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 10))
        self.attn = nn.MultiheadAttention(4, 1)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_nested_include_exclude():
    net = _ResNet()
    bnn = bayesianize(net, include=["blocks.*", "head.1"], exclude=["blocks.1.conv2"])
    names = {n for n, m in bnn.named_modules() if isinstance(m, (BayesLinear, BayesConv2d))}
    assert names == {"blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1", "head.1"}
    assert type(bnn.attn.out_proj) is type(net.attn.out_proj)  # subclasses left alone
    assert bnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    by_type = bayesianize(net, include=nn.Linear)
    assert isinstance(by_type.head[1], BayesLinear) and isinstance(by_type.stem, nn.Conv2d)
    with pytest.raises(ValueError, match="matches no Linear/Conv layer.*stem"):
        bayesianize(net, include=["nope.*"])
    assert isinstance(bayesianize(nn.Linear(3, 2)), BayesLinear)


def test_loss_scaling_and_blundell_weights():
    weights = [blundell_kl_weight(i, 10) for i in range(10)]
    assert abs(sum(weights) - 1) < 1e-12 and weights[0] == pytest.approx(512 / 1023)
    assert sum(blundell_kl_weight(i, 2000) for i in range(2000)) == pytest.approx(1.0)
    nll, kl = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor(100.0)
    assert float(bbb_loss(nll, kl, num_data=50)) == pytest.approx(2.5 + 2.0)
    assert float(bbb_loss(nll, kl, num_data=50, kl_weight=0.5)) == pytest.approx(2.5 + 12.5)
    with pytest.raises(ValueError, match="batch_index"):
        blundell_kl_weight(10, 10)
    with pytest.raises(ValueError, match="nll"):
        bbb_loss(nll[None], kl, num_data=50)


def test_predict_regression_split():
    net = nn.Sequential(BayesLinear(1, 16, init_sigma=0.3), nn.Tanh(),
                        BayesLinear(16, 2, init_sigma=0.3))
    x = torch.linspace(-1, 1, 7)[:, None]
    pred = predict(net, x, num_samples=200, likelihood="gaussian", heteroscedastic=True)
    assert pred.mean.shape == (7, 1) and pred.samples.shape == (200, 7, 1)
    torch.testing.assert_close(pred.variance, pred.aleatoric + pred.epistemic)
    torch.testing.assert_close(pred.epistemic, pred.samples.var(0, unbiased=False))
    fixed = predict(net[:2], x, 10, likelihood="gaussian", noise_scale=0.5)
    torch.testing.assert_close(fixed.aleatoric, torch.full_like(fixed.mean, 0.25))
    with use_posterior_mean(net):
        assert float(predict(net, x, 5, likelihood="gaussian",
                             heteroscedastic=True).epistemic.max()) == 0
    with pytest.raises(ValueError, match="noise_scale"):
        predict(net, x, 5, likelihood="gaussian")
    with pytest.raises(ValueError, match="likelihood"):
        predict(net, x, 5, likelihood="poisson")


def test_classification_mutual_information_identity():
    net = nn.Sequential(BayesLinear(4, 3, init_sigma=1.0))
    pred = predict(net, torch.randn(6, 4), num_samples=50)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(6))
    torch.testing.assert_close(pred.mutual_information,
                               (pred.entropy - pred.expected_entropy).clamp_min(0))
    assert bool((pred.mutual_information > 0).all())


@pytest.mark.cuda
def test_to_cuda_moves_priors_and_parameters(device):
    net = bayesianize(_convnet(), prior="scale_mixture").to(device)
    for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
        assert tensor.device.type == "cuda", name
    x = torch.randn(3, 1, 8, 8, device=device)
    for est in ("reparam", "local", "flipout"):
        for layer in bayes_layers(net):
            layer.estimator = est
        out = net(x)
        loss = out.sum() + kl_divergence(net)
        loss.backward()
        assert out.device.type == "cuda" and loss.device.type == "cuda"


def test_report_lists_converted_and_skipped_layers(capsys):
    """Issue 16, case 9: feedback on what was converted and what was skipped."""
    from pyro_dgm.nn.bayesianize import BayesianizeReport

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 6)
            self.lstm = nn.LSTM(6, 8, batch_first=True)
            self.norm = nn.LayerNorm(8)
            self.head = nn.Linear(8, 3)
            self.aux = nn.Linear(8, 1)

        def forward(self, tokens):
            h, _ = self.lstm(self.emb(tokens))
            return self.head(self.norm(h))

    bnn, report = bayesianize(Tagger(), exclude=["aux"], report=True, verbose=True)
    assert isinstance(report, BayesianizeReport) and isinstance(bnn.head, BayesLinear)
    assert report.converted == ["head"]
    assert report.skipped == {"emb": "Embedding: no Bayesian counterpart",
                              "lstm": "LSTM: no Bayesian counterpart",
                              "norm": "LayerNorm: no Bayesian counterpart",
                              "aux": "Linear: left out by include/exclude"}
    printed = capsys.readouterr().out
    assert "converted 1: head" in printed and "lstm (LSTM: no Bayesian counterpart)" in printed
    assert bnn(torch.randint(0, 20, (2, 5))).shape == (2, 5, 3)
    assert isinstance(bayesianize(nn.Linear(2, 2)), BayesLinear)  # default: the module only


def test_nothing_to_convert_is_an_error_naming_what_was_skipped():
    with pytest.raises(ValueError, match=r"nothing to convert.*emb \(Embedding.*lstm \(LSTM"):
        bayesianize(nn.ModuleDict({"emb": nn.Embedding(5, 3), "lstm": nn.LSTM(3, 3)}))
    with pytest.raises(ValueError, match="nothing to convert"):
        bayesianize(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="nothing to convert"):
        bayesianize(nn.Sequential(nn.Linear(2, 2)), exclude=[nn.Linear])


def test_second_call_needs_replace_prior():
    """A second call's prior used to be ignored silently."""
    from pyro_dgm.nn.priors import make_prior

    bnn = bayesianize(_convnet(), prior="gaussian")
    with pytest.raises(ValueError, match=r"already Bayesian \(0, 3\).*replace_prior=True"):
        bayesianize(bnn, prior="scale_mixture")
    again, report = bayesianize(bnn, prior="scale_mixture", replace_prior=True,
                                report=True)
    assert report.prior_replaced == ["0", "3"] and report.converted == []
    expected = type(make_prior("scale_mixture"))
    assert all(type(m.prior) is expected for m in bayes_layers(again))
    assert all(type(m.prior) is not expected for m in bayes_layers(bnn))  # copy untouched
    x = torch.randn(2, 1, 8, 8)
    assert torch.isfinite(kl_divergence(again)) and again(x).shape == (2, 10)
