# %% [markdown]
# # VAEs with flow encoders: Gaussian, IAF and PCP-Map guides
#
# Run: `python tutorials/flow_vae.py [--smoke] [--out DIR]` (headless; figures are
# written as PNG to DIR, default `tutorial_output/flow_vae`). MNIST is read from
# `$PYRO_MANIFOLD_DATA` (a folder holding `MNIST/raw/*-ubyte`). In smoke mode a tiny
# subset is used, or, when the files are absent, a synthetic binary data set of random
# bars, so that the tutorial always runs. The full benchmark protocol (latent size 50,
# IWAE with 5000 samples on the whole test set) is `benchmarks/flow_vae_mnist.py`.
#
# ## Data
# Binarized MNIST: every training batch is binarized afresh (dynamic binarization,
# pixel intensity = probability of a 1); the test images are binarized once.

# %%
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_manifold.datasets import dynamic_binarize, load_mnist, static_binarize  # noqa: E402
from pyro_manifold.infer import fit, resolve_device  # noqa: E402
from pyro_manifold.metrics import iwae_log_likelihood  # noqa: E402
from pyro_manifold.models import FlowVAE  # noqa: E402
from pyro_manifold.plotting import plot_image_grid  # noqa: E402

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

# %% [markdown]
# ## Objective
# A VAE has a decoder :math:`p_\theta(x \mid z)` with a standard normal prior on
# :math:`z` and an encoder :math:`q_\phi(z \mid x)`. Training maximises the ELBO,
#
# .. math::
#
#     \log p_\theta(x) \ge \mathbb E_{q_\phi(z|x)}\big[\log p_\theta(x \mid z)
#         + \log p(z) - \log q_\phi(z \mid x)\big].
#
# With a flow encoder, :math:`z = T_K \circ \dots \circ T_1(z_0)`, each layer
# conditioned on encoder features :math:`h(x)`, and :math:`z_0 \sim \mathcal N(\mu(x),
# \operatorname{diag} s(x)^2)`, so by the change of variables
#
# .. math::
#
#     \log q_\phi(z \mid x) = \log \mathcal N(z_0; \mu, s^2)
#         - \sum_k \log\left|\det \partial T_k / \partial z_{k-1}\right|.
#
# Sampling with `rsample` keeps the estimator differentiable (reparameterisation);
# :math:`\log q` of the sample reuses the forward pass. After training we report the
# importance-weighted bound (IWAE) :math:`\log \frac1K \sum_k p(x, z_k)/q(z_k \mid x)`,
# tighter than the ELBO and exact as :math:`K \to \infty`.
#
# ## Model and guide
# `FlowVAE.model` draws :math:`z \sim \mathcal N(0, I)` and observes
# :math:`x \sim \mathrm{Bernoulli}(\operatorname{sigmoid}(f_\theta(z)))` in a
# `pyro.plate("data")`; `FlowVAE.guide` samples :math:`z` from the encoder's flow. The
# three encoders share the MLP encoder and decoder:
#
# * **Gaussian**: no flow layers (the standard VAE);
# * **IAF**: inverse autoregressive flow layers (Pyro's `ConditionalAffineAutoregressive`,
#   one MADE pass per layer, determinant = product of the gates);
# * **PCP-Map**: :math:`z_k = \nabla_z G_k(z_{k-1}, h)` with :math:`G_k` a partially
#   input-convex network plus a quadratic, strictly convex in :math:`z`; its
#   log-determinant is the exact log-det of the Hessian (Cholesky), which costs more.

# %%
latent = 4 if args.smoke else 50
hidden = [64] if args.smoke else [200, 200]
flow_hidden = [16] if args.smoke else None
steps = 10 if args.smoke else 10 * (num_train // 100)  # smoke: 10 steps; full: 10 epochs
batch_size = 64 if args.smoke else 100
iwae_samples = 10 if args.smoke else 1000
encoders = {"gaussian": None, "iaf": "iaf", "pcp": "pcp"}

# %% [markdown]
# ## Training
# `fit` runs SVI with Pyro's `Trace_ELBO`, binarizing every batch afresh through
# `transform_batch`; the negative ELBO on the test images is recorded along the way.

# %%
results, histories, models = {}, {}, {}
for name, flow in encoders.items():
    torch.manual_seed(0)
    vae = FlowVAE(latent, 784, flow, num_flows=2, hidden_dims=hidden, flow_hidden_dims=flow_hidden)
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
    vae.eval()
    bound = iwae_log_likelihood(vae, test_binary, num_samples=iwae_samples, chunk_size=50)
    results[name] = {
        "test_nll_iwae": -bound.mean().item(),
        "test_neg_elbo": history["val_loss"][-1],
        "iwae_samples": iwae_samples,
    }

# %% [markdown]
# ## Results
# The test loss (negative ELBO) of the three encoders over training, in one plot; the
# reconstructions (decoder means at :math:`z \sim q(z \mid x)`, through
# `pyro.infer.Predictive` with the guide) and samples (decoder means at
# :math:`z \sim p(z)`); and the test negative log-likelihood by the IWAE bound.

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
for name, history in histories.items():
    ax.plot(history["val_step"], history["val_loss"], "o-", ms=3, label=name)
ax.set_xlabel("step")
ax.set_ylabel("test negative ELBO (nats)")
ax.legend()
fig.tight_layout()
fig.savefig(out / "test_loss_curves.png", dpi=100)
plt.close(fig)
for name, vae in models.items():
    with torch.no_grad():
        recon = vae.reconstruct(test_binary[:16])
        plot_image_grid(torch.cat([test_binary[:16], recon]), out / f"reconstructions_{name}.png",
                        title=f"{name}: data (top) and reconstructions")  # fmt: skip
        plot_image_grid(vae.sample(32), out / f"samples_{name}.png", title=f"{name}: samples")

print(f"| encoder | test NLL, IWAE K={iwae_samples} (nats) | test negative ELBO (nats) |")
print("|---|---|---|")
for name, r in results.items():
    print(f"| {name} | {r['test_nll_iwae']:.2f} | {r['test_neg_elbo']:.2f} |")
(out / "results.json").write_text(json.dumps({"data": data_name, **results}, indent=1))
