"""Pyro as Pyro users expect: fitting leaves the user's param store and torch's global RNG alone, seeds
reproduce, models and guides are PyroModule objects, and predictive outputs go through ``Predictive``."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

from petuq_sirf.bayes import DenoiserConfig, NetworkConfig, make_denoiser
from petuq_sirf.bayes.training_data import DenoisingDataset
from petuq_sirf.inference import (
    BayesianNetwork,
    MeanFieldWeightGuide,
    SVIConfig,
    SVIFitter,
    WeightPosterior,
    bayesianize,
    fit_weight_posterior,
    guide_posterior,
    make_guide,
    predictive_outputs,
    seeded,
)
from petuq_sirf.inference.weight_posterior import call_with
from petuq_sirf.recon.lowdose import LowDoseConfig, make_low_dose_set
from petuq_sirf.recon.nonexpansive import (
    NonexpansiveDenoiserConfig,
    NonexpansiveTrainingConfig,
    fit_denoiser_posterior,
    train_nonexpansive_denoiser,
)
from petuq_sirf.recon.unrolled import UnrolledConfig, UnrolledTrainingConfig, predict_unrolled, train_unrolled
from petuq_sirf.scanner import ImageGeometry, SinogramLayout, get_scanner
from petuq_sirf.simulation.simulate import geometric_model


class TwoHeads(nn.Module):
    """A tiny network returning ``(mean, log_var)`` like the package's networks."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.out(torch.tanh(self.body(x)))
        return h[..., 0], h[..., 1]


def _regression_data(n: int = 40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -0.5, 0.3]) + 0.1 * torch.randn(n, generator=g)
    return x, y


def _likelihood(n: int):
    def likelihood(call, xb, yb):
        mean, log_var = call(xb)
        with pyro.poutine.scale(scale=n / xb.shape[0]):
            pyro.sample("obs", dist.Normal(mean, torch.exp(0.5 * log_var)).to_event(1), obs=yb)

    return likelihood


def _batches(x, y, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randperm(len(x), generator=g)[:10]
        yield x[idx], y[idx]


def _fit(net: nn.Module, seed: int = 0, steps: int = 25) -> tuple[WeightPosterior, list[float]]:
    x, y = _regression_data()
    cfg = SVIConfig(num_steps=steps, lr=1e-2, scale_lr=5e-2, seed=seed)
    return fit_weight_posterior(net, [n for n, _ in net.named_parameters()], _likelihood(len(x)), _batches(x, y), cfg)


def _net(seed: int = 0) -> TwoHeads:
    with seeded(seed):
        return TwoHeads()


@pytest.fixture
def user_store():
    """A user's own Pyro state: a constrained param and a PyroModule param, both in the global store."""
    pyro.clear_param_store()
    user = pyro.param("user.scale", torch.tensor([0.5, 2.0]), constraint=dist.constraints.positive)

    class UserModule(PyroModule):
        def __init__(self):
            super().__init__("user_module")
            self.loc = pyro.nn.PyroParam(torch.tensor([1.0, -1.0, 3.0]))

        def forward(self):
            return self.loc

    UserModule()()  # registers user_module.loc in the store
    held = pyro.param("user.loc", torch.zeros(3))  # a user holding an unconstrained param keeps using it
    # a name the guide of the SVI denoiser would use, to catch a fitter that writes into the user's store
    pyro.param("AutoNormal.locs.head.bias", torch.full((2,), 7.0))
    store = pyro.get_param_store()
    before = {name: (store.get_param(name).unconstrained(), store[name].detach().clone()) for name in store.keys()}
    yield before
    assert held.unconstrained() is held and user.unconstrained() is before["user.scale"][0]
    pyro.clear_param_store()


def _assert_store_unchanged(before):
    store = pyro.get_param_store()
    assert set(store.keys()) == set(before)
    for name, (unconstrained, value) in before.items():
        assert store.get_param(name).unconstrained() is unconstrained, name  # the same tensor object
        assert torch.equal(store[name].detach(), value), name


def _tiny_denoising_set(n: int = 4, size: int = 12) -> DenoisingDataset:
    g = torch.Generator().manual_seed(3)
    target = 1.0 + torch.rand(n, size, size, generator=g)
    noisy = target + 0.2 * torch.randn(n, size, size, generator=g)
    return DenoisingDataset(noisy, target, torch.ones(n, size, size, dtype=torch.bool), torch.ones(n), torch.arange(n))


SVI_DENOISER = DenoiserConfig(
    method="svi", network=NetworkConfig(width=4, dilations=(1, 2)), epochs=2, batch_size=2, svi_steps=4, seed=5
)


# ------------------------------------------------------------------------------------------- param store
def test_fitting_keeps_the_users_param_store_entries(user_store):
    _fit(_net())
    _assert_store_unchanged(user_store)
    den = make_denoiser(SVI_DENOISER)
    den.fit(_tiny_denoising_set())
    den.predict(_tiny_denoising_set().noisy, num_samples=2)
    _assert_store_unchanged(user_store)


def test_fitter_keeps_its_own_store_between_calls(user_store):
    x, y = _regression_data()
    regression = bayesianize(nn.Linear(3, 1), prior_scale=1.0)

    def model(xb, yb):
        f = regression(xb).squeeze(-1)  # the weights are sampled outside the data plate
        with pyro.plate("data", len(x), subsample=torch.arange(len(xb))):
            pyro.sample("obs", dist.Normal(f, 0.1), obs=yb)

    guide = make_guide(model, init_scale=0.1)
    fitter = SVIFitter(model, guide, lr=0.02, seed=0)
    first = fitter.fit(_batches(x, y), 30)
    locs_after_first, _ = guide_posterior(guide)
    second = fitter.fit(_batches(x, y, seed=2), 30)  # continues from the fitted guide, not from scratch
    assert second[-1] < first[0]
    with fitter.param_store() as store:
        names = set(store.keys())
        assert names and all(n.startswith("AutoNormal.") for n in names)
        loc_weight = store["AutoNormal.locs.weight"].detach()
    assert not torch.equal(loc_weight, locs_after_first["weight"])
    assert torch.equal(loc_weight, guide_posterior(guide)[0]["weight"])
    _assert_store_unchanged(user_store)


def test_fit_works_when_the_user_enabled_module_local_params():
    with pyro.settings.context(module_local_params=True):
        posterior, losses = _fit(_net(), steps=40)
    assert losses[-1] < losses[0]
    assert all((s - 1e-3).abs().max() > 1e-4 for s in posterior.scale.values())  # the scales were learned


# ------------------------------------------------------------------------------------------- global RNG
def test_global_rng_is_unchanged_by_constructing_fitting_and_predicting():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    posterior, _ = _fit(_net())
    den = make_denoiser(SVI_DENOISER)
    den.fit(_tiny_denoising_set())
    den.predict(_tiny_denoising_set().noisy, num_samples=2)
    dropout = make_denoiser(DenoiserConfig(**{**SVI_DENOISER.__dict__, "method": "mc_dropout"}))
    dropout.fit(_tiny_denoising_set())
    dropout.predict(_tiny_denoising_set().noisy, num_samples=2)
    image = ImageGeometry((1, 12, 12), (4.0, 4.0, 4.0))
    ne_cfg = NonexpansiveTrainingConfig(num_images=2, num_steps=2, batch_size=2, patch=8, power_iterations=2)
    res = train_nonexpansive_denoiser(image, ne_cfg, NonexpansiveDenoiserConfig(channels=4, depth=2))
    fit_denoiser_posterior(res.denoiser, image, ne_cfg, SVIConfig(num_steps=2))
    assert torch.equal(torch.get_rng_state(), state)


def test_unrolled_training_and_prediction_leave_the_global_rng_alone_and_reproduce():
    layout = SinogramLayout(get_scanner("test-2d"))
    image = ImageGeometry.for_layout(layout)
    geometric = geometric_model(layout, image)
    data = make_low_dose_set(layout, image, LowDoseConfig(2, seed=1), geometric)
    cfg = UnrolledTrainingConfig(num_steps=2, head_steps=1, svi_steps=3, batch_size=2, seed=4)
    net_cfg = UnrolledConfig(num_iterations=2, channels=4, depth=2)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    a = train_unrolled(data, geometric, cfg, net_cfg)
    args = (data.model(geometric), data.prompts, data.init)
    pred_a = predict_unrolled(a.net, *args, a.posterior, num_samples=3, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_unrolled(data, geometric, cfg, net_cfg)
    pred_b = predict_unrolled(b.net, *args, b.posterior, num_samples=3, seed=2)
    assert a.svi_losses == b.svi_losses
    assert all(torch.equal(a.posterior.scale[k], b.posterior.scale[k]) for k in a.posterior.scale)
    assert torch.equal(pred_a.samples, pred_b.samples)
    other = predict_unrolled(b.net, *args, b.posterior, num_samples=3, seed=3)
    assert not torch.equal(other.samples, pred_a.samples)


# ------------------------------------------------------------------------------------------- seeds
def test_the_same_seed_gives_the_same_fit_and_another_seed_another():
    a, losses_a = _fit(_net(), seed=0)
    b, losses_b = _fit(_net(), seed=0)
    c, losses_c = _fit(_net(), seed=1)
    assert losses_a == losses_b
    assert all(torch.equal(a.loc[k], b.loc[k]) and torch.equal(a.scale[k], b.scale[k]) for k in a.loc)
    assert losses_a != losses_c

    x = _tiny_denoising_set().noisy
    d1, d2 = make_denoiser(SVI_DENOISER), make_denoiser(SVI_DENOISER)
    d1.fit(_tiny_denoising_set())
    d2.fit(_tiny_denoising_set())
    assert all(torch.equal(d1.scale[k], d2.scale[k]) for k in d1.scale)
    p1, p2 = d1.predict(x, num_samples=3, seed=7), d2.predict(x, num_samples=3, seed=7)
    assert torch.equal(p1.mean, p2.mean) and torch.equal(p1.var, p2.var)
    assert not torch.equal(d1.predict(x, num_samples=3, seed=8).mean, p1.mean)


# ------------------------------------------------------------------------------------------- objects
def test_weight_model_and_guide_are_pyro_modules_and_the_guide_holds_the_posterior():
    net = _net()
    model = BayesianNetwork(net, ["out.weight", "out.bias"], prior_scale=1.0, likelihood=_likelihood(40))
    guide = MeanFieldWeightGuide(model, init_scale=1e-2)
    assert isinstance(model, PyroModule) and isinstance(guide, PyroModule)
    assert not list(model.parameters())  # the network is held, not owned: its weights are no Pyro params
    x, y = _regression_data()
    SVIFitter(model, guide, lr=1e-2, scale_lr=5e-2, seed=0).fit(_batches(x, y), 10)
    post = guide.posterior()
    assert set(post.loc) == {"out.weight", "out.bias"}
    assert torch.equal(post.scale["out.bias"], torch.exp(guide.log_scales.out.bias.detach()))
    assert not torch.equal(post.loc["out.weight"], net.out.weight.detach())  # the locations moved
    frozen = MeanFieldWeightGuide(model, init_scale=1e-2, learn_loc=False)
    SVIFitter(model, frozen, lr=1e-2, scale_lr=5e-2, seed=0).fit(_batches(x, y), 10)
    assert torch.equal(frozen.posterior().loc["out.weight"], net.out.weight.detach())
    with pytest.raises(ValueError, match="unknown or no parameter names"):
        BayesianNetwork(net, ["nope"])


def test_predictive_outputs_equal_the_network_run_on_each_draw():
    net = _net()
    gen = torch.Generator().manual_seed(0)
    draws = {"out.weight": torch.randn(5, 2, 4, generator=gen), "out.bias": torch.randn(5, 2, generator=gen)}
    x = torch.randn(6, 3, generator=gen)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    mean, log_var = predictive_outputs(net, draws, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert mean.shape == log_var.shape == (5, 6)
    for s in range(5):
        m, lv = call_with(net, {k: v[s] for k, v in draws.items()}, x)
        assert torch.allclose(mean[s], m) and torch.allclose(log_var[s], lv)
    with pytest.raises(ValueError, match="different counts"):
        predictive_outputs(net, {"out.weight": draws["out.weight"], "out.bias": draws["out.bias"][:2]}, x)
