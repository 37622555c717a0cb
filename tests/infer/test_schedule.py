"""The per-step hook: fit evaluates step_kwargs(t) and passes it into model and guide."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

from pyro_manifold.infer import fit, load_checkpoint
from pyro_manifold.infer.schedule import default_step_kwargs, evaluate_step_kwargs
from pyro_manifold.models import FlowVAE, VariationalMixtureOfFlows

FAST = dict(batch_size=16, device="cpu", progress=False)


class Annealed(nn.Module):
    """Records the ``beta`` its model and guide receive; NaN at the listed model calls."""

    def __init__(self, bad_calls=()):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(()))
        self.bad_calls, self.calls = set(bad_calls), 0
        self.model_betas, self.guide_betas = [], []

    def step_kwargs(self, step):  # the model's own default schedule
        return {"beta": 1.0 + step}

    def model(self, x, beta=1.0):
        self.calls += 1
        self.model_betas.append(beta)
        loc = self.loc * (math.nan if self.calls in self.bad_calls else 1.0)
        with pyro.plate("data", x.shape[0]), pyro.poutine.scale(scale=beta):
            pyro.sample("obs", dist.Normal(loc, 1.0, validate_args=False), obs=x)

    def guide(self, x, beta=1.0):
        self.guide_betas.append(beta)


def test_the_schedule_passed_matches_the_step():
    m = Annealed()
    result = fit(m.model, m.guide, torch.randn(32), num_steps=7, **FAST)
    assert result.step == 7
    expected = [1.0] + [1.0 + t for t in range(7)]  # the discovery pass first
    assert m.model_betas == expected and m.guide_betas == expected


def test_a_users_step_kwargs_reach_model_and_guide_over_the_default():
    m = Annealed()
    hook = lambda t: {"beta": 0.5 * (t + 1)}  # noqa: E731
    fit(m.model, m.guide, torch.randn(32), num_steps=3, step_kwargs=hook, **FAST)
    assert m.model_betas == m.guide_betas == [0.5, 0.5, 1.0, 1.5]
    m = Annealed()  # plain functions and modules=: no default, the user's hook only
    fit(lambda x, beta: m.model(x, beta), lambda x, beta: m.guide(x, beta), torch.randn(32),
        num_steps=2, modules=[m], step_kwargs=lambda t: {"beta": 2.0}, **FAST)  # fmt: skip
    assert m.model_betas == m.guide_betas == [2.0, 2.0, 2.0]
    m = Annealed()  # validation calls the programs with their defaults
    fit(m.model, m.guide, torch.randn(32), num_steps=2, validation_data=torch.randn(8),
        validate_every=2, **FAST)  # fmt: skip
    assert m.model_betas == [1.0, 1.0, 2.0, 1.0]


@pytest.mark.parametrize("sync_every", [1, 4])
def test_skipped_steps_consume_their_step_as_resume_restores_it(tmp_path, sync_every):
    options = dict(on_nonfinite="skip", sync_every=sync_every, **FAST)
    x = torch.randn(32)
    straight = Annealed(bad_calls={4, 7})  # steps 3 and 6 (call 1 discovers the parameters)
    with pytest.warns(RuntimeWarning, match="skipped 2 of 8 steps"):
        result = fit(straight.model, straight.guide, x, num_steps=8, **options)
    assert result.skipped_steps == [3, 6]
    assert straight.guide_betas == [1.0] + [1.0 + t for t in range(8)]  # no step repeated
    first = Annealed(bad_calls={4, 7})
    with pytest.warns(RuntimeWarning, match="skipped 1 of 4 steps"):
        fit(first.model, first.guide, x, num_steps=4, run_dir=tmp_path, **options)
    resumed = Annealed(bad_calls={3})  # call 1 discovers, calls 2 and 3 are steps 5 and 6
    with pytest.warns(RuntimeWarning, match="skipped 2 of 8 steps"):
        result = fit(resumed.model, resumed.guide, x, num_steps=8,
                     resume=tmp_path / "checkpoint.pt", **options)  # fmt: skip
    assert result.skipped_steps == [3, 6]
    assert resumed.guide_betas == [5.0] + [1.0 + t for t in range(4, 8)]  # from t = 4 on
    assert torch.equal(resumed.loc, straight.loc)


def test_resume_is_exact_with_the_temperature_schedule(tmp_path):
    x = torch.cat([torch.randn(48, 2) - 2, torch.randn(48, 2) + 2])
    options = dict(loss=TraceEnum_ELBO(max_plate_nesting=1), batch_size=32, device="cpu",
                   progress=False, lr=1e-2, seed=2)  # fmt: skip

    def mixture():
        torch.manual_seed(0)
        return VariationalMixtureOfFlows(
            2, 2, num_layers=1, hidden_dims=[8], encoder_hidden_dims=[8],
            prior="responsibilities", initial_temperature=3.0, temperature_decay=0.8,
        )  # fmt: skip

    straight = mixture()
    fit(straight.model, straight.guide, x, num_steps=9, **options)
    first = mixture()
    fit(first.model, first.guide, x, num_steps=4, run_dir=tmp_path, **options)
    resumed = mixture()
    fit(resumed.model, resumed.guide, x, num_steps=9, resume=tmp_path / "checkpoint.pt",
        **options)  # fmt: skip
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    # a schedule that skipped its temperature on resume would differ: the check has teeth
    shifted = mixture()
    fit(shifted.model, shifted.guide, x, num_steps=9, resume=tmp_path / "checkpoint.pt",
        step_kwargs=lambda t: straight.step_kwargs(t + 1), **options)  # fmt: skip
    assert not torch.equal(shifted.encoder.layers[0].weight, straight.encoder.layers[0].weight)


@pytest.mark.parametrize(
    "hook, error, match",
    [
        (lambda t: [("beta", 1.0)], TypeError,
         r"step_kwargs: expected a dict of keyword arguments \(name -> value\) at step 0, "
         r"got list \[\('beta', 1.0\)\]"),
        (lambda t: {"beta": float("nan")}, ValueError,
         r"step_kwargs: expected finite numbers, got beta=nan at step 0"),
        (lambda t: {1: 2.0}, TypeError,
         r"step_kwargs: expected keyword names \(identifiers\) as keys at step 0, got 1"),
        (3, TypeError, r"step_kwargs: expected a callable step -> dict .*, got int 3"),
    ],
)  # fmt: skip
def test_bad_hook_output_is_refused_before_any_change(tmp_path, hook, error, match):
    m = Annealed()
    with pytest.raises(error, match=match):
        fit(m.model, m.guide, torch.randn(32), num_steps=3, run_dir=tmp_path / "run",
            step_kwargs=hook, **FAST)  # fmt: skip
    assert m.calls == 0 and float(m.loc.detach()) == 0.0 and not (tmp_path / "run").exists()


def test_a_hook_that_goes_bad_later_stops_before_that_step(tmp_path):
    m = Annealed()
    hook = lambda t: {"beta": 1.0 if t < 4 else math.inf}  # noqa: E731
    with pytest.raises(ValueError, match="got beta=inf at step 4"):
        fit(m.model, m.guide, torch.randn(32), num_steps=9, run_dir=tmp_path, checkpoint_every=2,
            step_kwargs=hook, **FAST)  # fmt: skip
    assert m.calls == 1 + 4  # the fifth step never ran
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_flow_vae_default_schedule_is_its_kl_warmup():
    vae = FlowVAE(2, data_dim=4, hidden_dims=[8], kl_warmup_steps=3)
    assert default_step_kwargs(vae.model, vae.guide) == vae.step_kwargs
    assert [vae.step_kwargs(t)["kl_weight"] for t in range(4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    other = FlowVAE(2, data_dim=4, hidden_dims=[8])
    with pytest.raises(ValueError, match="step_kwargs: model and guide belong to different"):
        default_step_kwargs(vae.model, other.guide)
    assert evaluate_step_kwargs(vae.step_kwargs, 0) == {"kl_weight": 1 / 3}
