"""
VAEs with flow encoders: Gaussian, IAF and PCP-Map guides
=========================================================

A variational autoencoder on binarized MNIST, written first by hand as a Pyro
``model`` and three ``guide`` s (a diagonal Gaussian encoder, an inverse autoregressive
flow on top of it, and a PCP-Map flow on top of it), trained with Pyro's own ``SVI``;
then the same programs as the packaged class :class:`pyro_manifold.models.FlowVAE`,
checked to give the same loss on the same parameters and trained with
:func:`pyro_manifold.infer.fit`; then reconstructions and new images with
``pyro.infer.Predictive`` and the importance-weighted (IWAE) bounds on the test
log-likelihood.

How to run: ``python tutorials/flow_vae.py [--smoke] [--out DIR]`` (headless; figures
are written as PNG to ``DIR``, default ``tutorial_output/flow_vae``). MNIST is read from
``$PYRO_MANIFOLD_DATA`` (a folder holding ``MNIST/raw/*-ubyte``). In smoke mode a tiny
subset is used, or, when the files are absent, a synthetic binary data set of random
bars, so that the tutorial always runs. The full benchmark protocol (latent size 50,
IWAE with 5000 samples on the whole test set) is ``benchmarks/flow_vae_mnist.py``.
"""

# %%
# Data
# ----
#
# Binarized MNIST: every training batch is binarized afresh (dynamic binarization, the
# pixel intensity is the probability of a 1, :func:`~pyro_manifold.datasets.dynamic_binarize`);
# the test images are binarized once (:func:`~pyro_manifold.datasets.static_binarize`),
# so that every program is scored on the same binary images.

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pyro.distributions.transforms import ConditionalAffineAutoregressive  # noqa: E402
from pyro.infer import SVI, Predictive, Trace_ELBO  # noqa: E402
from pyro.nn import ConditionalAutoRegressiveNN  # noqa: E402
from torch import nn  # noqa: E402

from pyro_manifold.datasets import dynamic_binarize, load_mnist, static_binarize  # noqa: E402
from pyro_manifold.infer import fit, resolve_device  # noqa: E402
from pyro_manifold.metrics import importance_log_likelihood, iwae_log_likelihood  # noqa: E402
from pyro_manifold.models import FlowVAE  # noqa: E402
from pyro_manifold.plotting import plot_image_grid  # noqa: E402
from pyro_manifold.transforms import conditional_pcp_map  # noqa: E402

parser = argparse.ArgumentParser(description="VAEs with flow encoders")
parser.add_argument("--smoke", action="store_true", help="a few steps on a tiny data set")
parser.add_argument("--out", default="tutorial_output/flow_vae")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
device = torch.device("cpu") if args.smoke else resolve_device()
if args.smoke:  # tiny tensors: one thread avoids oversubscribing a busy machine
    torch.set_num_threads(1)
torch.manual_seed(0)


def random_bars(num: int, seed: int) -> torch.Tensor:
    """Synthetic 28 x 28 binary images: one to three random horizontal or vertical bars."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(num, 28, 28)
    for i in range(num):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            k = int(torch.randint(2, 26, (1,), generator=g))
            if bool(torch.rand(1, generator=g) < 0.5):
                images[i, k - 1 : k + 2, 3:25] = 1.0
            else:
                images[i, 3:25, k - 1 : k + 2] = 1.0
    return (images.reshape(num, 784) * 255).to(torch.uint8)


num_train, num_test = (512, 64) if args.smoke else (60000, 1000)
try:
    train = load_mnist(split="train+validation").data[:num_train]
    test = load_mnist(split="test").data[:num_test]
    data_name = "MNIST"
except FileNotFoundError:
    if not args.smoke:
        raise
    train, test, data_name = random_bars(num_train, 0), random_bars(num_test, 1), "random bars"
test_binary = static_binarize(test, seed=0).to(device)
print(f"data: {data_name}, {train.shape[0]} training and {test.shape[0]} test images")
plot_image_grid(test_binary[:32], out / "data.png", title=f"{data_name}: binarized test images")

# %%
# Objective
# ---------
#
# A VAE has a decoder :math:`p_\theta(x \mid z)` with a standard normal prior on the
# latent :math:`z \in \mathbb R^L` and an encoder (the guide) :math:`q_\phi(z \mid x)`.
# Training maximises the evidence lower bound (ELBO),
#
# .. math::
#
#     \log p_\theta(x) \ge \mathcal L(x) = \mathbb E_{q_\phi(z|x)}\big[\log p_\theta(x \mid z)
#         + \log p(z) - \log q_\phi(z \mid x)\big],
#
# which is what Pyro's ``Trace_ELBO`` estimates (with the sign flipped, as a loss) from
# one draw of the guide: :math:`\log p_\theta(x \mid z)` is the observed site ``"x"`` of
# the model, :math:`\log p(z)` the model's latent site ``"z"`` and
# :math:`\log q_\phi(z \mid x)` the guide's site ``"z"``.
#
# With a flow encoder, an MLP gives :math:`(\mu, s, h) = e_\phi(x)`, a base point
# :math:`z_0 \sim \mathcal N(\mu, \operatorname{diag} s^2)` is pushed through layers
# :math:`z = T_K(\cdot\,; h) \circ \dots \circ T_1(z_0; h)` conditioned on the encoder's
# features :math:`h`, and by the change of variables
#
# .. math::
#
#     \log q_\phi(z \mid x) = \log \mathcal N(z_0; \mu, s^2)
#         - \sum_k \log\left|\det \partial T_k / \partial z_{k-1}\right|.
#
# Pyro's ``TransformedDistribution`` computes exactly this: its ``rsample`` draws
# :math:`z_0` and applies the layers (a reparameterised draw, so the ELBO's gradient
# flows through it), and its ``log_prob`` of that draw reuses the forward pass (each
# layer keeps its last input and output) and adds the layers' log-determinants.
#
# After training we report the importance-weighted bound of Burda et al. (IWAE),
#
# .. math::
#
#     \mathcal L_K(x) = \mathbb E\Big[\log \frac1K \sum_{k=1}^K
#         \frac{p_\theta(x \mid z_k)\, p(z_k)}{q_\phi(z_k \mid x)}\Big], \qquad
#     z_k \sim q_\phi(z \mid x),
#
# which equals the ELBO at :math:`K = 1`, grows with :math:`K` and tends to
# :math:`\log p_\theta(x)`;
# :func:`~pyro_manifold.metrics.importance_log_likelihood` computes it for any Pyro model
# and guide, and :func:`~pyro_manifold.metrics.iwae_log_likelihood` for a ``FlowVAE``.

# %%
# Model and guide
# ---------------
#
# The networks first. The decoder :math:`f_\theta` maps :math:`z` to the 784 Bernoulli
# logits through ``tanh`` hidden layers; the encoder maps :math:`x` to the base
# Gaussian's mean :math:`\mu` and scale :math:`s = \operatorname{softplus}(\cdot) +
# 10^{-4}` and returns its last hidden layer as the features :math:`h` that condition
# the flow layers.

latent = 4 if args.smoke else 50
hidden = [64] if args.smoke else [200, 200]
flow_hidden = [16] if args.smoke else [200, 200]
num_flows = 2
batch_size = 64 if args.smoke else 100
svi_steps = 20 if args.smoke else 3000
steps = 30 if args.smoke else 10 * (num_train // 100)  # fit: 30 steps (smoke), 10 epochs (full)
iwae_samples = 10 if args.smoke else 1000


class Decoder(nn.Module):
    """The decoder: Bernoulli logits of the 784 pixels, (*, L) -> (*, 784)."""

    def __init__(self, latent_dim: int, hidden_dims: list[int], data_dim: int = 784) -> None:
        super().__init__()
        widths = [latent_dim, *hidden_dims]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1], data_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            z = torch.tanh(layer(z))
        return self.head(z)


class Encoder(nn.Module):
    """The encoder: x -> (mu, s, h), the base Gaussian and the flow's context."""

    def __init__(self, latent_dim: int, hidden_dims: list[int], data_dim: int = 784) -> None:
        super().__init__()
        widths = [data_dim, *hidden_dims]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Linear(widths[-1], 2 * latent_dim)
        self.context_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = x
        for layer in self.layers:
            h = torch.tanh(layer(h))
        loc, raw_scale = self.head(h).chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4, h


# %%
# The model is the same for the three VAEs. ``pyro.module`` registers the decoder's
# parameters with Pyro (so that ``SVI`` trains them); inside ``pyro.plate("data")`` the
# latent :math:`z \sim \mathcal N(0, I_L)` is drawn and :math:`x \sim
# \operatorname{Bernoulli}(\operatorname{sigmoid} f_\theta(z))` observed. The
# deterministic site ``"x_mean"`` records the pixel probabilities, which is what
# ``Predictive`` returns below as reconstructions and samples (a ``Delta`` site: it adds
# nothing to the ELBO). Without data, ``model(None, num_samples=n)`` generates ``n``
# images.


def make_model(decoder: Decoder):
    def model(x: torch.Tensor | None = None, num_samples: int | None = None) -> torch.Tensor:
        pyro.module("decoder", decoder)
        n = x.shape[0] if x is not None else num_samples
        zeros = decoder.head.bias.new_zeros(latent)
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            logits = decoder(z)
            pyro.deterministic("x_mean", torch.sigmoid(logits), event_dim=1)
            return pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    return model


# %%
# Guide (a), the standard VAE: :math:`q_\phi(z \mid x) = \mathcal N(\mu(x),
# \operatorname{diag} s(x)^2)`, the encoder registered with ``pyro.module`` and the
# latent site ``"z"`` in the same plate as the model's.


def make_gaussian_guide(encoder: Encoder):
    def guide(x: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        pyro.module("encoder", encoder)
        loc, scale, _ = encoder(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    return guide


# %%
# Guide (b), inverse autoregressive flow (IAF, Kingma et al. 2016): Pyro's own
# ``ConditionalAffineAutoregressive`` layers, each a conditional MADE network
# (``ConditionalAutoRegressiveNN``) that reads :math:`z_{k-1}` and the context :math:`h`.
# With ``stable=True`` a layer is :math:`z_k = \sigma_k \odot z_{k-1} + (1 - \sigma_k)
# \odot m_k`, :math:`(m_k, \operatorname{logit} \sigma_k) = \mathrm{MADE}_k(z_{k-1}, h)`:
# one network pass per layer, and the log-determinant is :math:`\sum_i \log
# \sigma_{k,i}`. The autoregressive order is reversed between layers.
# ``ConditionalTransformedDistribution(base, layers).condition(h)`` binds the context
# and returns an ordinary ``TransformedDistribution``; every guide call builds fresh
# conditioned layers.


def iaf_layers(encoder: Encoder) -> nn.ModuleList:
    order = torch.arange(latent)
    return nn.ModuleList(
        ConditionalAffineAutoregressive(
            ConditionalAutoRegressiveNN(
                latent,
                encoder.context_dim,
                flow_hidden,
                permutation=order.flip(0) if k % 2 else order,
                nonlinearity=nn.ELU(),
            ),
            stable=True,
        )
        for k in range(num_flows)
    )


def make_iaf_guide(encoder: Encoder, layers: nn.ModuleList):
    def guide(x: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        pyro.module("encoder", encoder)
        pyro.module("flow", layers)
        loc, scale, h = encoder(x)
        base = dist.Normal(loc, scale).to_event(1)
        posterior = dist.ConditionalTransformedDistribution(base, list(layers)).condition(h)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", posterior)

    return guide


# %%
# Guide (c), PCP-Map (Wang et al. 2023):
# :class:`~pyro_manifold.transforms.ConditionalPCPMap` layers,
#
# .. math::
#
#     z_k = \nabla_z G_k(z_{k-1}, h), \qquad
#     G_k(z, h) = \operatorname{softplus}(\gamma_1)\, g_k(z, h)
#         + \big(\operatorname{relu}(\gamma_2) + \operatorname{softplus}(\gamma_3)
#         + \epsilon\big)\tfrac12 \lVert z \rVert^2,
#
# with :math:`g_k` a partially input-convex network (:class:`~pyro_manifold.nn.PICNN`,
# convex in :math:`z`, any function of :math:`h`), so :math:`G_k` is strictly convex in
# :math:`z` and its gradient map is invertible. The forward map is one network pass and
# one backward pass; its log-determinant :math:`\log\det \nabla_z^2 G_k` is exact, by a
# batched Hessian and a Cholesky factorisation (:math:`O(L^3)` per point, so meant for
# small latents). :func:`~pyro_manifold.transforms.conditional_pcp_map` builds a layer
# with a PICNN of the given widths; ``layer.condition(h)`` binds the context, here by
# hand into a ``TransformedDistribution``.


def pcp_layers(encoder: Encoder) -> nn.ModuleList:
    return nn.ModuleList(
        conditional_pcp_map(latent, encoder.context_dim, flow_hidden) for _ in range(num_flows)
    )


def make_pcp_guide(encoder: Encoder, layers: nn.ModuleList):
    def guide(x: torch.Tensor, num_samples: int | None = None) -> torch.Tensor:
        pyro.module("encoder", encoder)
        pyro.module("flow", layers)
        loc, scale, h = encoder(x)
        base = dist.Normal(loc, scale).to_event(1)
        posterior = dist.TransformedDistribution(base, [layer.condition(h) for layer in layers])
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", posterior)

    return guide


# %%
# Training
# --------
#
# By hand with SVI
# ~~~~~~~~~~~~~~~~
#
# Each VAE trains with Pyro's ``SVI`` and ``Trace_ELBO`` on mini-batches binarized
# afresh. The decoder's output bias starts at the logits of the average image (a common
# initialisation that shortens the first plateau). Pyro's parameter store is keyed by
# name and every VAE here names its networks ``"encoder"``, ``"decoder"`` and
# ``"flow"``, so it is cleared before each one. The loss printed is the negative ELBO
# per image, in nats.

guides = {"gaussian": make_gaussian_guide, "iaf": make_iaf_guide, "pcp": make_pcp_guide}
layer_builders = {"gaussian": None, "iaf": iaf_layers, "pcp": pcp_layers}
train_on_device = train.to(device)
mean_logits = torch.logit((train_on_device.float() / 255).mean(0).clamp(1e-3, 1 - 1e-3))
by_hand, svi_losses = {}, {}
for name, make_guide in guides.items():
    pyro.clear_param_store()
    torch.manual_seed(0)
    encoder, decoder = Encoder(latent, hidden).to(device), Decoder(latent, hidden[::-1]).to(device)
    with torch.no_grad():
        decoder.head.bias.copy_(mean_logits)
    build = layer_builders[name]
    layers = build(encoder).to(device) if build is not None else None
    model = make_model(decoder)
    guide = make_guide(encoder) if layers is None else make_guide(encoder, layers)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    losses = []
    for step in range(svi_steps):
        batch = dynamic_binarize(train_on_device[torch.randint(num_train, (batch_size,))])
        losses.append(svi.step(batch) / batch_size)
        if step % max(svi_steps // 5, 1) == 0 or step == svi_steps - 1:
            print(f"{name} (by hand) step {step:5d}  negative ELBO {losses[-1]:.2f} nats")
    by_hand[name] = {"model": model, "guide": guide, "modules": (encoder, decoder, layers)}
    svi_losses[name] = losses
    assert all(torch.isfinite(torch.tensor(losses))), f"{name}: a non-finite SVI loss"

fig, ax = plt.subplots(figsize=(5, 3.5))
for name, losses in svi_losses.items():
    ax.plot(losses, label=name)
ax.set_xlabel("SVI step")
ax.set_ylabel("negative ELBO per image (nats)")
ax.set_title("the hand-written programs, Pyro's SVI")
ax.legend()
fig.tight_layout()
fig.savefig(out / "svi_loss_curves.png", dpi=100)
plt.close(fig)

# %%
# The packaged class
# ~~~~~~~~~~~~~~~~~~
#
# :class:`~pyro_manifold.models.FlowVAE` bundles this model and these guides:
# ``encoder_flow=None`` is guide (a), ``"iaf"`` guide (b) (the same Pyro layers, ELU
# networks, alternating orders, ``stable=True``) and ``"pcp"`` guide (c). Its networks
# are the same modules under other names: ``encoder_layers``/``encoder_head``,
# ``decoder_layers``/``decoder_head`` and ``flows``. So the hand-trained parameters load
# into a fresh instance by renaming the keys of the ``state_dict`` s (the class also
# holds the prior's mean and scale as buffers, which the hand-written model writes
# inline). On the same parameters, and with the same seed for the guide's draw, the
# class's ``model``/``guide`` and the hand-written pair give the same ``Trace_ELBO``
# loss, which is asserted here for each encoder.


def class_state(modules) -> dict[str, torch.Tensor]:
    """The hand-written networks' parameters under ``FlowVAE``'s names."""
    encoder, decoder, layers = modules
    state = {f"encoder_{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"decoder_{k}": v for k, v in decoder.state_dict().items()}
    if layers is not None:
        state |= {f"flows.{k}": v for k, v in layers.state_dict().items()}
    return state


flows = {"gaussian": None, "iaf": "iaf", "pcp": "pcp"}


def make_vae(name: str) -> FlowVAE:
    return FlowVAE(
        latent,
        784,
        flows[name],
        num_flows=num_flows,
        hidden_dims=hidden,
        flow_hidden_dims=flow_hidden,
    ).to(device)


check = test_binary[:32]
for name, programs in by_hand.items():
    vae = make_vae(name)
    state = class_state(programs["modules"])
    assert set(vae.state_dict()) - set(state) == {"prior_loc", "prior_scale"}
    vae.load_state_dict({**vae.state_dict(), **state})
    losses = []
    for model, guide in ((programs["model"], programs["guide"]), (vae.model, vae.guide)):
        pyro.set_rng_seed(1)
        losses.append(Trace_ELBO().loss(model, guide, check))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-3)
    n = len(check)
    print(f"{name}: loss per image, by hand {losses[0] / n:.3f}, FlowVAE {losses[1] / n:.3f}")

# %%
# Training the class with ``fit``
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# :func:`~pyro_manifold.infer.fit` runs the same SVI loop over mini-batches (here from a
# fresh instance of each class, for more steps than the hand-written loop), binarizing
# every batch afresh through ``transform_batch``, with a cosine learning-rate schedule;
# the negative ELBO on the test images is recorded along the way.

results, histories, models = {}, {}, {}
for name in flows:
    torch.manual_seed(0)
    vae = make_vae(name)
    vae.init_decoder_bias(train)  # start from the average image: a shorter early plateau
    history = fit(
        vae.model,
        vae.guide,
        train,
        num_steps=steps,
        batch_size=batch_size,
        lr=1e-3,
        lr_schedule="cosine",
        validation_data=test_binary,
        validate_every=max(steps // 5, 1),
        restore_best=False,
        transform_batch=lambda x: (dynamic_binarize(x),) if x.dtype == torch.uint8 else (x,),
        device=device,
        log_every=max(steps // 20, 1),
    ).history
    histories[name], models[name] = history, vae

# %%
# Results
# -------
#
# Reconstructions and new images
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# ``Predictive(model, guide=guide)`` draws :math:`z \sim q_\phi(z \mid x)` from the
# guide and runs the model on it: its ``"x_mean"`` site holds the decoder's pixel
# probabilities at that draw, a reconstruction of :math:`x`. ``Predictive(model)``
# without a guide draws :math:`z` from the prior: new images. The same two calls serve
# the hand-written programs and the class (whose ``reconstruct`` and ``sample`` methods
# are these calls, which is asserted below).

with torch.no_grad():
    rows = [test_binary[:8]]
    for programs in by_hand.values():
        predictive = Predictive(
            programs["model"], guide=programs["guide"], num_samples=1, return_sites=["x_mean"]
        )
        recon = predictive(test_binary[:8])["x_mean"][0]
        assert recon.shape == (8, 784) and bool(((recon >= 0) & (recon <= 1)).all())
        rows.append(recon)
        new = Predictive(programs["model"], num_samples=1, return_sites=["x_mean"])(None, 8)
        assert new["x_mean"].shape == (1, 8, 784)
plot_image_grid(torch.cat(rows), out / "reconstructions_by_hand.png",
                title="data; reconstructions by hand: gaussian, iaf, pcp")  # fmt: skip

for name, vae in models.items():
    vae.eval()  # the class records "x_mean" in eval mode (not in its training steps)
    with torch.no_grad():
        pyro.set_rng_seed(2)
        predictive = Predictive(vae.model, guide=vae.guide, num_samples=1, return_sites=["x_mean"])
        recon = predictive(test_binary[:16])["x_mean"][0]
        pyro.set_rng_seed(2)
        torch.testing.assert_close(recon, vae.reconstruct(test_binary[:16]))
        pyro.set_rng_seed(3)
        samples = Predictive(vae.model, num_samples=1, return_sites=["x_mean"])(None, 32)
        pyro.set_rng_seed(3)
        torch.testing.assert_close(samples["x_mean"][0], vae.sample(32))
        plot_image_grid(torch.cat([test_binary[:16], recon]), out / f"reconstructions_{name}.png",
                        title=f"{name}: data (top) and reconstructions")  # fmt: skip
        plot_image_grid(samples["x_mean"][0], out / f"samples_{name}.png", title=f"{name}: samples")

fig, ax = plt.subplots(figsize=(5, 3.5))
for name, history in histories.items():
    ax.plot(history["val_step"], history["val_loss"], "o-", ms=3, label=name)
ax.set_xlabel("step")
ax.set_ylabel("test negative ELBO (nats)")
ax.legend()
fig.tight_layout()
fig.savefig(out / "test_loss_curves.png", dpi=100)
plt.close(fig)

# %%
# Test log-likelihood bounds
# ~~~~~~~~~~~~~~~~~~~~~~~~~~
#
# The IWAE bound of every program on the same binarized test images: for the
# hand-written pairs by :func:`~pyro_manifold.metrics.importance_log_likelihood` (any
# Pyro model and guide whose data sit in ``pyro.plate("data")``; the draws are
# vectorised in an outer plate, which the programs above allow because every site
# broadcasts over extra batch dimensions on the left), for the classes by
# :func:`~pyro_manifold.metrics.iwae_log_likelihood`, which runs the same computation
# on ``vae.model`` and ``vae.guide`` in batches of images. The table reports the
# negative bound (an upper bound on the test negative log-likelihood), with the class's
# last test negative ELBO beside it. The hand-written programs were trained for fewer
# steps than the classes, so their column is not a comparison of the methods.

# the hand-written programs had fewer steps than the classes (the prose above)
assert all(h["step"][-1] == steps > svi_steps for h in histories.values())
results = {}
for name in flows:
    programs, vae = by_hand[name], models[name]
    with torch.no_grad():
        hand = torch.cat(
            [
                importance_log_likelihood(
                    programs["model"], programs["guide"], x, num_samples=iwae_samples, chunk_size=50
                )
                for x in test_binary.split(100)
            ]
        )
        packaged = iwae_log_likelihood(vae, test_binary, num_samples=iwae_samples, chunk_size=50)
    assert hand.shape == packaged.shape == (test_binary.shape[0],)
    assert bool(torch.isfinite(hand).all() and torch.isfinite(packaged).all())
    results[name] = {
        "by_hand_svi_steps": svi_steps,
        "by_hand_test_nll_iwae": -hand.mean().item(),
        "fit_steps": steps,
        "test_nll_iwae": -packaged.mean().item(),
        "test_neg_elbo": histories[name]["val_loss"][-1],
        "iwae_samples": iwae_samples,
    }

print(
    f"| encoder | by hand, {svi_steps} SVI steps: test NLL, IWAE K={iwae_samples} (nats) "
    f"| FlowVAE, {steps} fit steps: test NLL, IWAE K={iwae_samples} (nats) "
    "| FlowVAE: test negative ELBO (nats) |"
)
print("|---|---|---|---|")
for name, r in results.items():
    print(
        f"| {name} | {r['by_hand_test_nll_iwae']:.2f} | {r['test_nll_iwae']:.2f} "
        f"| {r['test_neg_elbo']:.2f} |"
    )
(out / "results.json").write_text(json.dumps({"data": data_name, **results}, indent=1))
