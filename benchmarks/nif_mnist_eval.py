"""The NIF paper's MNIST claims, checked on runs of benchmarks/mnist_flows.py.

Needs the runs runs/mnist_maf, runs/mnist_nif32, runs/mnist_nif64 (train them with
mnist_flows.py) and the package's MNIST classifier (python -m pyro_manifold
train-classifier). Measures, for the NF (MAF) and the NIFs with the same top flow:

1. bits per dimension on the test set (exact for both: the NIF prior is unit normal);
2. the MNIST Frechet distance (a small MNIST classifier's features, NOT Inception FID)
   of samples against test images: NF at t = 1, NIF at s in a grid (s = 0 is on the
   learned manifold), plotted against s;
3. temperature grids of samples at t in {0.5, 1, 1.5, 2};
4. embeddings: k-NN (k = 10) and a linear probe, fitted on training-set latents, on the
   NIF-64 pseudo-inverse latents against the NF's 784-dimensional latents f^-1(x).

With --prior-flow, each NIF (trained with a unit-normal prior) first gets a prior flow
on z fitted to its stochastic inverse of the 50,000 training images
(NoisyInjectiveFlow.fit_prior, validated on the 10,000 validation images; the NIF layer
and the top flow are unchanged), and its bits/dim become the IWAE bound with
--iwae-samples draws per test image (a lower bound on the likelihood, so an upper bound
on bits/dim).

With --prior-components K, each NIF gets a K-component Gaussian-mixture prior instead,
fitted by EM in the same way (at most --prior-steps iterations), and its test bits/dim
stay exact (the mixture's marginal is a mixture of Gaussians before the top flow).

Outputs: the JSON (``--out``: a file name ending in ``.json``, or a folder that gets
``nif_mnist_eval.json``; the results of models not evaluated in this call are kept from
an existing file) and the PNGs ``temperature_MODEL.png`` and ``nif_frechet_vs_s.png``
(in ``--figures``, by default the JSON's folder; ``--tag TAG`` names them
``temperature_MODEL_TAG.png`` and ``nif_frechet_vs_s_TAG.png``).

Run:  PYRO_MANIFOLD_DATA=../shared/data python benchmarks/nif_mnist_eval.py \
          --out benchmarks/results/nif_mnist_eval.json --figures benchmarks/figures
Smoke (runs from mnist_flows.py --smoke; an untrained classifier; numbers mean nothing):
      PYRO_MANIFOLD_DATA=../shared/data python benchmarks/mnist_flows.py --smoke
      PYRO_MANIFOLD_DATA=../shared/data python benchmarks/mnist_flows.py --smoke --model nif \
          --latent 16
      PYRO_MANIFOLD_DATA=../shared/data python benchmarks/nif_mnist_eval.py --smoke \
          --nf-run runs/smoke/mnist_maf --nif64-run runs/smoke/mnist_nif16 --models NF NIF-64
"""

import argparse
import json
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from mnist_flows import (
    SMOKE_TEST_IMAGES,
    evaluate,
    nif_map_kwargs,
)  # benchmarks/ is the script's directory
from provenance import provenance

from pyro_manifold.datasets import dequantize_logit, load_mnist
from pyro_manifold.infer import load_checkpoint
from pyro_manifold.metrics import (
    importance_log_likelihood,
    load_mnist_classifier,
    mnist_frechet_distance,
)
from pyro_manifold.models import Flow, NoisyInjectiveFlow
from pyro_manifold.nn import MNISTClassifier
from pyro_manifold.plotting import plot_image_grid

ALPHA = 1e-6
TEMPERATURES = (0.5, 1.0, 1.5, 2.0)  # the sample grids (paper fig. 1); --smoke draws t = 1 only


def head(data, n):
    """The first ``n`` images and labels of a split (``ToyData``)."""
    return type(data)(data.data[:n], data.labels[:n])


def frechet_classifier(root, smoke):
    """The package's MNIST classifier (cached under ``root``); with ``smoke``, an untrained one.

    A smoke run never trains or caches a classifier (minutes, and a file in the data root);
    its Fréchet distances then only exercise the code.
    """
    if not smoke:
        return load_mnist_classifier(root)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MNISTClassifier().eval()


def load_run(run_dir, prior=None):
    """The best checkpoint of a run; ``prior`` (dict) adds an untrained prior flow to a NIF."""
    state = load_checkpoint(Path(run_dir) / "best.pt")
    cfg = state["config"]
    trained_prior = {}  # a prior flow trained with the NIF (mnist_flows.py --prior-flow)
    if cfg.get("prior_flow"):
        if prior:
            raise SystemExit(f"{run_dir}: trained with a prior flow; drop --prior-flow")
        trained_prior = {"prior_flow": cfg["prior_flow"], "prior_layers": cfg["prior_layers"],
                         "prior_hidden_dims": [cfg["prior_hidden"]]}  # fmt: skip
    if cfg.get("model", "maf") == "maf":
        model = Flow(
            784, "maf", num_layers=cfg["layers"], hidden_dims=[cfg["hidden"]], batch_norm=True
        )
    else:
        model = NoisyInjectiveFlow(
            784,
            cfg["latent"],
            top_flow="maf",
            top_layers=cfg["layers"],
            top_hidden_dims=[cfg["hidden"]],
            batch_norm=True,
            **nif_map_kwargs(cfg.get("nif_map", "image")),
            init_noise_scale=cfg["init_noise"],
            **(prior or trained_prior),
        )
    missing, unexpected = model.load_state_dict(state["modules"][0], strict=False)
    fresh_prior = ("prior_layers.", "prior_mixture.")
    if unexpected or any(not key.startswith(fresh_prior) for key in missing):
        raise RuntimeError(f"{run_dir}: checkpoint does not fit ({missing=}, {unexpected=})")
    return model.eval()


def fit_prior_flow(model, train, val, steps):
    """Fit the NIF's prior flow; -E_q[log p(z)] on validation draws before and after."""
    y_train, y_val = to_logit(train.data, seed=4), to_logit(val.data, seed=5)

    def prior_nll():
        torch.manual_seed(6)
        with torch.no_grad():
            z = torch.cat([model.nif.stochastic_inverse(model.top_inverse(c)).sample()
                           for c in y_val.split(1000)])  # fmt: skip
            if not fitted:  # the unit normal the fitted prior replaces
                return -torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1).mean().item()
            return -model.prior().log_prob(z).mean().item()

    fitted = False

    before = prior_nll()
    result = model.fit_prior(
        y_train, num_steps=steps, batch_size=256, lr=1e-3, validation_data=y_val,
        validate_every=500, progress=False, seed=0,
    )  # fmt: skip
    fitted = True
    model.eval()
    return {"prior_nll_unit_normal": before, "prior_nll_fitted": prior_nll(),
            "val_loss": result.history["val_loss"]}  # fmt: skip


def iwae_bits_per_dim(model, x_uint8, num_samples):
    """Test bits/dim from the IWAE bound, with mnist_flows.evaluate's dequantization."""
    metrics = evaluate(
        model,
        x_uint8,
        log_prob=lambda y: importance_log_likelihood(
            model.model, model.guide, y, num_samples=num_samples
        ),
    )
    return metrics["bits_per_dim"], metrics["bits_per_dim_stderr"]


def to_pixels(y):
    return ((torch.sigmoid(y) - ALPHA) / (1 - 2 * ALPHA)).clamp(0, 1)


def to_logit(x_uint8, seed=3):
    return dequantize_logit(x_uint8, seed, alpha=ALPHA)[0]


NONFINITE = {}  # name -> fraction of samples dropped because sequential sampling overflowed


@torch.no_grad()
def draw(model, n, batch, name, **kwargs):
    """n finite samples in pixel space; rows that overflowed to inf/NaN are counted, dropped."""
    out, dropped, drawn = [], 0, 0
    while sum(len(o) for o in out) < n:
        m = min(batch, n - sum(len(o) for o in out))
        with pyro.validation_enabled(False):  # rows that overflow are dropped below
            y = model.sample(m, **kwargs)
        ok = torch.isfinite(y).all(-1)
        out.append(y[ok])
        dropped, drawn = dropped + int((~ok).sum()), drawn + m
    NONFINITE[name] = dropped / drawn
    return to_pixels(torch.cat(out))


@torch.no_grad()
def nf_sample_at_temperature(flow, n, t):
    base = torch.distributions.Normal(flow.base_loc, flow.base_scale * t**0.5)
    u = base.sample((n,))
    for layer in flow.layers:
        u = layer(u)
    return to_pixels(u)


@torch.no_grad()
def embed(model, y):
    out = []
    for chunk in y.split(1000):
        if isinstance(model, NoisyInjectiveFlow):
            out.append(model.nif.pseudo_inverse(model.top_inverse(chunk)))
        else:
            u = chunk
            for layer in reversed(model.layers):
                u = layer.inv(u)
            out.append(u)
    return torch.cat(out)


def knn_accuracy(train_z, train_y, test_z, test_y, k=10):
    correct = 0
    for chunk, labels in zip(test_z.split(500), test_y.split(500), strict=True):
        d = torch.cdist(chunk, train_z)
        idx = d.topk(k, largest=False).indices
        votes = F.one_hot(train_y[idx], 10).sum(1)
        correct += (votes.argmax(-1) == labels).sum().item()
    return correct / len(test_y)


def linear_probe_accuracy(train_z, train_y, test_z, test_y, steps=300):
    mu, sd = train_z.mean(0), train_z.std(0) + 1e-6
    a, b = (train_z - mu) / sd, (test_z - mu) / sd
    w = torch.zeros(a.shape[1], 10, requires_grad=True)
    c = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, c], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + c, train_y) + 1e-4 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((b @ w + c).argmax(-1) == test_y).float().mean().item()


def output_paths(out, figures=None, tag="", smoke=False):
    """The JSON's path, the figures' folder and the figure-name suffix; folders are created.

    ``out`` is the JSON itself when it ends in ``.json``, else a folder that gets
    ``nif_mnist_eval.json``; the figures go to ``figures``, by default the JSON's folder,
    and their names end in ``_TAG`` when ``tag`` is given (tested in
    tests/test_benchmark_scripts.py).
    """
    out = Path(out or ("runs/smoke/nif_mnist_eval" if smoke else "benchmarks/results"))
    report_path = out if out.suffix == ".json" else out / "nif_mnist_eval.json"
    figure_dir = Path(figures) if figures else report_path.parent
    for folder in (report_path.parent, figure_dir):
        folder.mkdir(parents=True, exist_ok=True)
    return report_path, figure_dir, f"_{tag}" if tag else ""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--classifier-root", default=None, help="where the classifier is cached")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--s-grid", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--embed-train", type=int, default=10000, help="training latents for k-NN")
    p.add_argument(
        "--out",
        default=None,
        help="the JSON (a name ending in .json), or a folder for nif_mnist_eval.json "
        "(default benchmarks/results; runs/smoke/nif_mnist_eval with --smoke)",
    )
    p.add_argument("--figures", default=None, help="folder for the PNGs (default: the JSON's)")
    p.add_argument(
        "--tag",
        default="",
        help="suffix of the figure names: temperature_MODEL_TAG.png, nif_frechet_vs_s_TAG.png",
    )
    p.add_argument("--nf-run", default="runs/mnist_maf")
    p.add_argument("--nif32-run", default="runs/mnist_nif32")
    p.add_argument("--nif64-run", default="runs/mnist_nif64")
    p.add_argument(
        "--prior-flow",
        choices=["maf", "realnvp"],
        default=None,
        help="fit a prior flow on z to each NIF first (see the module docstring)",
    )
    p.add_argument(
        "--prior-components",
        type=int,
        default=None,
        help="fit a Gaussian-mixture prior with this many components instead (EM)",
    )
    p.add_argument("--prior-layers", type=int, default=5)
    p.add_argument("--prior-hidden", type=int, default=512)
    p.add_argument("--prior-steps", type=int, default=3000)
    p.add_argument("--iwae-samples", type=int, default=500)
    p.add_argument(
        "--models",
        nargs="+",
        default=["NF", "NIF-32", "NIF-64"],
        help="which runs to evaluate (results of others already in the JSON stay)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few images and samples, an untrained classifier: checks the script only",
    )
    args = p.parse_args()
    temperatures = TEMPERATURES
    if args.smoke:
        args.num_samples = args.batch = 16
        args.s_grid, args.embed_train, args.prior_steps = [0.0, 1.0], 200, 5
        args.iwae_samples, temperatures = 4, (1.0,)
    torch.manual_seed(0)
    report_path, figures, suffix = output_paths(args.out, args.figures, args.tag, args.smoke)
    classifier = frechet_classifier(args.classifier_root or args.data, args.smoke)
    test = load_mnist(args.data, "test")
    train = load_mnist(args.data, "train")
    if args.smoke:
        test = head(test, SMOKE_TEST_IMAGES)
    reference = test.data.float() / 255
    runs = {"NF": args.nf_run, "NIF-32": args.nif32_run, "NIF-64": args.nif64_run}
    runs = {name: path for name, path in runs.items() if name in args.models}
    prior = None
    if args.prior_flow is not None and args.prior_components is not None:
        raise SystemExit("--prior-flow and --prior-components: give one")
    if args.prior_flow is not None:
        prior = {"prior_flow": args.prior_flow, "prior_layers": args.prior_layers,
                 "prior_hidden_dims": [args.prior_hidden]}  # fmt: skip
    elif args.prior_components is not None:
        prior = {"prior_components": args.prior_components}
    models = {
        name: load_run(path, None if name == "NF" else prior)
        for name, path in runs.items()
        if Path(path).exists()
    }
    # results for models not evaluated now are kept
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for key in ("bits_per_dim", "frechet", "embedding"):
        report.setdefault(key, {})
    for name, path in runs.items():
        res = Path("benchmarks/results") / f"{Path(path).name}.json"
        if args.smoke and name in models:  # the smoke runs have no result file
            report["bits_per_dim"][name] = evaluate(models[name], test.data)["bits_per_dim"]
        elif res.exists():
            report["bits_per_dim"][name] = json.loads(res.read_text())["test_bits_per_dim"]
    if prior is not None:
        validation = load_mnist(args.data, "validation")
        if args.smoke:
            train, validation = head(train, 300), head(validation, 200)
        for name, model in models.items():
            if name == "NF":
                continue
            fitted = fit_prior_flow(model, train, validation, args.prior_steps)
            if model.prior_mixture is not None:  # exact
                exact = evaluate(model, test.data)
                bpd, stderr = exact["bits_per_dim"], exact["bits_per_dim_stderr"]
            else:
                bpd, stderr = iwae_bits_per_dim(model, test.data, args.iwae_samples)
            exactly = model.prior_mixture is not None
            report.setdefault("prior_flow", {})[name] = {
                **fitted, **prior, "steps": args.prior_steps,
                "unit_prior_bits_per_dim": report["bits_per_dim"].get(name),
                **({"bits_per_dim_stderr": stderr} if exactly else
                   {"iwae_samples": args.iwae_samples, "iwae_bits_per_dim_stderr": stderr}),
            }  # fmt: skip
            report["bits_per_dim"][name] = bpd  # an upper bound (IWAE) with a prior flow
            print(name, "prior flow", report["prior_flow"][name], "bits/dim", bpd, flush=True)

    fd = report["frechet"]
    if "NF" in models:
        fd["NF t=1"] = mnist_frechet_distance(
            draw(models["NF"], args.num_samples, args.batch, "NF t=1"), reference, classifier
        )
        print("NF", fd["NF t=1"], flush=True)
    for name in ("NIF-32", "NIF-64"):
        if name not in models:
            continue
        grid = args.s_grid if name == "NIF-64" else [0.0]
        for s in grid:
            samples = draw(models[name], args.num_samples, args.batch, f"{name} s={s:g}", s=s)
            fd[f"{name} s={s:g}"] = mnist_frechet_distance(samples, reference, classifier)
            print(name, s, fd[f"{name} s={s:g}"], flush=True)

    # temperature grids (paper fig. 1)
    for name, model in models.items():
        rows = []
        for t in temperatures:
            if name == "NF":
                rows.append(nf_sample_at_temperature(model, 8, t))
            else:  # a draw that overflows stays in the grid: its NaN pixels drawn black
                with pyro.validation_enabled(False):
                    rows.append(to_pixels(model.sample(8, t=t, s=0.0)).nan_to_num(nan=0.0))
        plot_image_grid(
            torch.cat(rows),
            figures / f"temperature_{name}{suffix}.png",
            ncols=8,
            title=f"{name}: rows t = {', '.join(f'{t:g}' for t in temperatures)}"
            + ("" if name == "NF" else ", s = 0"),
        )

    # embeddings
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(train.data.shape[0], generator=g)[: args.embed_train]
    tr_y, te_y = to_logit(train.data[idx]), to_logit(test.data)
    for name in ("NF", "NIF-64"):
        if name not in models:
            continue
        ztr, zte = embed(models[name], tr_y), embed(models[name], te_y)
        report["embedding"][name] = {
            "dim": ztr.shape[1],
            "knn10_accuracy": knn_accuracy(ztr, train.labels[idx], zte, test.labels),
            "linear_probe_accuracy": linear_probe_accuracy(
                ztr, train.labels[idx], zte, test.labels
            ),
        }
        print(name, report["embedding"][name], flush=True)

    fd = report["frechet"]
    if any(k.startswith("NIF-64 s=") for k in fd):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5, 3.5))
        ax = fig.add_subplot()
        ss = [s for s in args.s_grid if f"NIF-64 s={s:g}" in fd]
        ax.plot(ss, [fd[f"NIF-64 s={s:g}"] for s in ss], "o-", label="NIF-64")
        if "NF t=1" in fd:
            ax.axhline(fd["NF t=1"], color="C3", ls="--", label="NF")
        ax.set_xlabel("noise multiplier s")
        ax.set_ylabel("MNIST Frechet distance")
        ax.legend()
        fig.tight_layout()
        fig.savefig(figures / f"nif_frechet_vs_s{suffix}.png")
    report["num_samples"] = args.num_samples
    report.setdefault("nonfinite_sample_fraction", {}).update(NONFINITE)
    # one entry per call: the file merges the models of several calls
    report.setdefault("provenance", []).append({**provenance(), "models": list(models)})
    report_path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
