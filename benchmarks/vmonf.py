"""Variational mixture of normalizing flows (VMoNF): clustering, likelihood and speed.

Parts (``--part``, default ``pinwheel``; ``all`` runs every part that can run here):

* ``pinwheel``: the paper's 5-wing pinwheel; training 2560 points (seed 0), validation 512
  (seed 2), test 2560 (seed 1). VMoNF with K = 5 RealNVP components against single RealNVP
  flows with at least as many parameters as the whole mixture (flows + encoder), k-means
  alone and a full-covariance Gaussian mixture fitted by EM.
* ``circles``: two circles (training 2048, validation 512, test 1024), K = 2, unsupervised
  and semi-supervised with 64 labels (the first 32 training points of each circle), against
  k-means and a Gaussian mixture by EM (with the labels: k-means seeded and constrained by
  them, EM with their responsibilities fixed, and the nearest labelled point).

Protocol of pinwheel and circles (issue 21; fixed before any run under it):

* Configurations tried (``configurations_tried`` in the JSON): VMoNF ``paper`` (random
  start, uniform pi, constant T = 1), ``paper+anneal`` (T decays exponentially from 5 to
  1 over the steps), ``kmeans`` (component bases centred on k-means clusters of the
  training points, ``initialize_components``; seeded by the labels when there are
  labels); for the single-flow baseline of the pinwheel, 4 and 8 layers.
* Step count: every run takes ``--steps`` Adam steps (batch 256, lr ``--lr``) and keeps
  the parameters of its lowest validation loss (negative ELBO per point, for a flow the
  negative log-likelihood), evaluated every ``--validate-every`` steps.
* Selection metric, validation only: the mean over seeds of the exact validation
  log-likelihood log sum_k pi_k p_k(x) (nats per point). It uses no labels, so the
  unsupervised rows stay unsupervised and the 64-label rows use only their 64 labels.
  Validation clustering accuracy is recorded in the JSON but chooses nothing.
  Temperature: clustering is argmax_k q(k|x), which no temperature T > 0 changes, and the
  log-likelihood does not involve q; the only temperature choice is the training schedule
  (``paper`` against ``paper+anneal``).
* The test split is scored once, for the chosen VMoNF configuration and the chosen single
  flow, with every seed (``--seeds``); the baselines (k-means, Gaussian mixture by EM,
  with the same seeds; their own iteration budgets: 50 Lloyd steps, up to 500 EM steps
  keeping the best validation iterate) likewise. Mean ± sample std and per-seed figures.
* Metrics: clustering accuracy of argmax q(k|x) against the generating wing/circle under
  the best one-to-one matching; test log-likelihood, nats per point.
* The JSON records the command, the commit and the machine.

* ``timing``: seconds per training step (TraceEnum_ELBO, Adam) of the batched mixture with
  K = 1 and K = 10 components of the same architecture, on the chosen device.
* ``mnist``: digits 0-4, MAF components (needs ``PYRO_MANIFOLD_DATA``; slow on a CPU).

Run (CPU):  nice -n 10 python benchmarks/vmonf.py --part pinwheel --device cpu --threads 1
                --figures benchmarks/figures --out benchmarks/results/vmonf_pinwheel.json
            nice -n 10 python benchmarks/vmonf.py --part circles --device cpu --threads 1
                --figures benchmarks/figures --out benchmarks/results/vmonf_circles.json
            python benchmarks/vmonf.py --part timing --device cpu --threads 1
            (on a GPU also: --part timing --timing-flow maf --timing-dim 784
             --timing-hidden 1024 --timing-layers 5 --timing-batch 128)
Smoke:      python benchmarks/vmonf.py --part all --smoke --device cpu
Results are printed as Markdown tables and written to ``--out`` (JSON); ``--figures DIR``
also saves the pinwheel and circles figures (samples coloured by component over the
q(k|x) regions) of the chosen configuration's seed with the best validation
log-likelihood, and the MNIST sample grids (``vmonf_mnist_unsupervised.png``,
``vmonf_mnist_semi.png``); ``--tag TAG`` appends ``_TAG`` to every figure name, e.g.
``--part mnist --mnist-configs semi-supervised --mnist-steps 6000 --tag 6000`` writes
``vmonf_mnist_semi_6000.png``.
"""

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from provenance import provenance  # benchmarks/ is the script's directory
from pyro.infer import TraceEnum_ELBO

from pyro_manifold.datasets import pinwheel, two_circles
from pyro_manifold.infer import fit, resolve_device
from pyro_manifold.metrics import clustering_accuracy, contingency_table
from pyro_manifold.models import Flow, VariationalMixtureOfFlows
from pyro_manifold.models._mixture_prior import COVARIANCE_FLOOR, GaussianMixturePrior
from pyro_manifold.nn import kmeans, scale_output_layer

PROTOCOL = (
    "every setting (configuration, step count by early stopping on the validation loss) "
    "chosen by the mean over seeds of the exact validation log-likelihood (no labels); "
    "validation accuracy recorded, not used; test scored once per final configuration"
)


def elbo():
    return TraceEnum_ELBO(max_plate_nesting=1)


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def matched_flow(target, num_layers, kind="realnvp"):
    """The narrowest single flow with at least ``target`` parameters."""
    for width in range(8, 1024):
        flow = Flow(2, kind, num_layers=num_layers, hidden_dims=[width, width])
        if count(flow) >= target:
            return flow, width
    raise ValueError(target)


def figure_path(args, stem):
    """``--figures``/STEM.png, or STEM_TAG.png with ``--tag TAG``."""
    return Path(args.figures) / f"{stem}{'_' + args.tag if args.tag else ''}.png"


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# -- protocol shared by pinwheel and circles ----------------------------------------------
VMONF_CONFIGS = ("paper", "paper+anneal", "kmeans")


def summary(values):
    """Per-seed figures with their mean and sample standard deviation."""
    m, s = mean_std(values)
    return {"per_seed": values, "mean": m, "std": s}


def build_vmonf(args, config, x_train, num_components, seed, y=None, label_weight=1.0):
    """A VMoNF of RealNVP components; ``config`` is one of :data:`VMONF_CONFIGS`."""
    anneal = config == "paper+anneal"
    model = VariationalMixtureOfFlows(
        2,
        num_components,
        "realnvp",
        num_layers=args.layers,
        hidden_dims=[args.hidden, args.hidden],
        encoder_hidden_dims=[64, 64],
        initial_temperature=5.0 if anneal else 1.0,
        temperature_decay=math.exp(math.log(0.01) / args.steps) if anneal else 1.0,
        label_weight=label_weight,
    )
    if config == "kmeans":  # k-means seeded by the labels when there are labels
        model.initialize_components(x_train, seed=seed, y=y)
    return model


def train(args, model, data, val_data, loss, seed, device):
    """Adam for ``--steps`` steps; the parameters of the best validation loss are kept."""
    t0 = time.perf_counter()
    result = fit(
        model.model,
        model.guide,
        data,
        loss=loss,
        num_steps=args.steps,
        batch_size=256,
        lr=args.lr,
        validation_data=val_data,
        validate_every=args.validate_every,
        device=device,
        seed=seed,
        progress=False,
    )
    h = result.history
    best = min(range(len(h["val_loss"])), key=h["val_loss"].__getitem__)
    return {
        "seconds": time.perf_counter() - t0,
        "best_step": h["val_step"][best],
        "best_validation_loss": result.best_validation_loss,
    }


@torch.no_grad()
def mean_log_likelihood(model, x, device):
    return model.log_prob(x.to(device)).mean().item()


@torch.no_grad()
def accuracy(model, split, device):
    return clustering_accuracy(model.cluster(split.data.to(device)).cpu(), split.labels)


def select(validation, key="val_log_likelihood"):
    """The configuration with the highest mean validation log-likelihood over seeds."""
    return max(validation, key=lambda name: statistics.mean(validation[name][key]))


def kmeans_baseline(train_x, split, k, seed, labels=None):
    """k-means (k-means++ start, 50 Lloyd steps) on the training points; test points go to
    the nearest centroid. With ``labels``: seeded and constrained by them (Basu et al.)."""
    centroids, _ = kmeans(
        train_x.double(),
        k,
        50,
        labels=labels,
        generator=torch.Generator().manual_seed(seed),
    )
    pred = torch.cdist(split.data.double(), centroids).argmin(1)
    return clustering_accuracy(pred, split.labels)


@torch.no_grad()
def semi_supervised_em(mixture, x, y, x_val, seed, max_steps=500, tol=1e-4):
    """EM for a Gaussian mixture whose labelled points (``y >= 0``) have fixed
    responsibilities (one-hot); otherwise :meth:`GaussianMixturePrior.fit_em`'s recipe:
    random-row start, covariance floor, the iterate of the best validation log-likelihood."""
    mixture.start(x, torch.Generator().manual_seed(seed))
    labelled = y >= 0
    onehot = torch.nn.functional.one_hot(y[labelled], mixture.loc.shape[0]).double()
    xd, eye = x.double(), torch.eye(x.shape[1], dtype=torch.float64)
    best, best_state, previous = -math.inf, None, -math.inf
    for _ in range(max_steps):
        log_joint = mixture.component_log_prob(x).double()
        log_joint = log_joint + torch.log_softmax(mixture.logits.double(), -1)
        log_p = log_joint.logsumexp(-1, keepdim=True)
        r = (log_joint - log_p).exp()
        r[labelled] = onehot
        weight = r.sum(0).clamp_min(1e-12)
        loc = (r.T @ xd) / weight[:, None]
        cov = torch.stack(
            [((r[:, j, None] * (xd - mu)).T @ (xd - mu)) / weight[j] for j, mu in enumerate(loc)]
        )
        mixture._set(weight, loc, torch.linalg.cholesky(cov + COVARIANCE_FLOOR * eye))
        val = mixture.distribution().log_prob(x_val).mean().item()
        if val > best:
            best, best_state = val, {n: v.clone() for n, v in mixture.state_dict().items()}
        mean_log_p = log_p.mean().item()
        if mean_log_p - previous < tol:
            break
        previous = mean_log_p
    mixture.load_state_dict(best_state)


def gmm_baseline(train_x, val_x, k, seed, labels=None):
    """A full-covariance Gaussian mixture by EM (``GaussianMixturePrior.fit_em``: a random-row
    start, up to 500 steps, the iterate of the best validation log-likelihood kept);
    semi-supervised with ``labels``. Returns the fitted mixture."""
    mixture = GaussianMixturePrior(2, k)
    if labels is None:
        mixture.fit_em(train_x, val_x, max_steps=500, seed=seed)
    else:
        semi_supervised_em(mixture, train_x, labels, val_x, seed)
    return mixture


@torch.no_grad()
def gmm_scores(mixture, split):
    log_joint = mixture.component_log_prob(split.data) + torch.log_softmax(mixture.logits, -1)
    return {
        "accuracy": clustering_accuracy(log_joint.argmax(-1), split.labels),
        "log_likelihood": log_joint.logsumexp(-1).mean().item(),
    }


def print_rows(title, rows, with_ll=True):
    head = f"| {title} | seeds | parameters | test accuracy (mean ± sd) |"
    print("\n" + head + (" test log-lik (mean ± sd) |" if with_ll else ""))
    print("|---|---|---|---|" + ("---|" if with_ll else ""))
    for name, r in rows.items():
        acc = "n/a" if "accuracy" not in r else "{mean:.3f} ± {std:.3f}".format(**r["accuracy"])
        line = f"| {name} | {len(r['seeds'])} | {r.get('parameters', '-')} | {acc} |"
        if with_ll:
            ll = r.get("test_log_likelihood")
            line += " n/a |" if ll is None else " {mean:.4f} ± {std:.4f} |".format(**ll)
        print(line)


# -- pinwheel ---------------------------------------------------------------------------
def run_pinwheel(args, device):
    """Select on validation, then score the chosen configurations on the test points once."""
    train_set = pinwheel(2560, seed=0)
    val, test = pinwheel(512, seed=2), pinwheel(2560, seed=1)
    x_train = train_set.data
    flows = {f"flow ({n} layers)": n for n in args.flow_layers}
    validation, models = {}, {}
    # 1. every configuration, every seed: trained with early stopping on the validation
    #    loss, then scored on validation (log-likelihood; accuracy recorded, not used)
    for config in [*VMONF_CONFIGS, *flows]:
        record = {"val_log_likelihood": [], "val_accuracy": [], "best_step": [], "seconds": []}
        for seed in args.seeds:
            torch.manual_seed(seed)
            if config in flows:
                torch.manual_seed(seed)
                reference = build_vmonf(args, "paper", x_train, 5, seed)
                model, width = matched_flow(count(reference), flows[config])
                loss, record["hidden_width"] = None, width
            else:
                model, loss = build_vmonf(args, config, x_train, 5, seed), elbo()
            record["parameters"] = count(model)
            run = train(args, model, x_train, val.data, loss, seed, device)
            for key in ("best_step", "seconds"):
                record[key].append(run[key])
            record["val_log_likelihood"].append(mean_log_likelihood(model, val.data, device))
            if config not in flows:
                record["val_accuracy"].append(accuracy(model, val, device))
            models[config, seed] = model
            print(
                f"  {config} seed {seed}: val ll {record['val_log_likelihood'][-1]:.4f} "
                f"best step {run['best_step']} ({run['seconds']:.0f} s)",
                flush=True,
            )
        validation[config] = record
    chosen = select({c: validation[c] for c in VMONF_CONFIGS})
    chosen_flow = select({c: validation[c] for c in flows})
    print(f"  selected on validation: {chosen}; single flow: {chosen_flow}", flush=True)
    # 2. the test points, once per final configuration
    rows = {}
    for name, config in ((f"VMoNF ({chosen})", chosen), (f"single {chosen_flow}", chosen_flow)):
        rows[name] = {
            "configuration": config,
            "seeds": args.seeds,
            "parameters": validation[config]["parameters"],
            "test_log_likelihood": summary(
                [mean_log_likelihood(models[config, s], test.data, device) for s in args.seeds]
            ),
        }
        if config not in flows:
            rows[name]["accuracy"] = summary(
                [accuracy(models[config, s], test, device) for s in args.seeds]
            )
    rows["k-means"] = {
        "seeds": args.seeds,
        "accuracy": summary([kmeans_baseline(x_train, test, 5, s) for s in args.seeds]),
    }
    gmms = [gmm_baseline(x_train, val.data, 5, s) for s in args.seeds]
    scores = [gmm_scores(g, test) for g in gmms]
    rows["Gaussian mixture (EM)"] = {
        "seeds": args.seeds,
        "parameters": sum(p.numel() for p in gmms[0].parameters()),
        "accuracy": summary([s["accuracy"] for s in scores]),
        "test_log_likelihood": summary([s["log_likelihood"] for s in scores]),
        "val_log_likelihood": [gmm_scores(g, val)["log_likelihood"] for g in gmms],
    }
    print_rows("pinwheel (5 wings)", rows)
    result = {
        "protocol": PROTOCOL,
        "splits": {
            "train": "pinwheel(2560, seed=0)",
            "validation": "pinwheel(512, seed=2)",
            "test": "pinwheel(2560, seed=1)",
        },  # fmt: skip
        "configurations_tried": {"vmonf": list(VMONF_CONFIGS), "single_flow": list(flows)},
        "num_configurations": len(VMONF_CONFIGS) + len(flows),
        "selected": {"vmonf": chosen, "single_flow": chosen_flow},
        "validation": validation,
        "test": rows,
    }
    if args.figures:  # the chosen configuration's seed with the best validation log-likelihood
        lls = validation[chosen]["val_log_likelihood"]
        seed = args.seeds[max(range(len(lls)), key=lls.__getitem__)]
        best = models[chosen, seed]
        path = figure_path(args, "vmonf_pinwheel")
        plot_regions(best, test.data, path)
        table = contingency_table(best.cluster(test.data.to(device)).cpu(), test.labels)
        result["figure"] = {"path": str(path), "configuration": chosen, "seed": seed,
                            "test_contingency_table": table.tolist()}  # fmt: skip
    return result


@torch.no_grad()
def plot_regions(model, data, path, grid_size=200):
    """Samples coloured by component over the regions argmax q(k|x) (paper fig. 6)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    lo, hi = data.min(0).values - 0.3, data.max(0).values + 0.3
    xs = torch.linspace(lo[0], hi[0], grid_size)
    ys = torch.linspace(lo[1], hi[1], grid_size)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1).to(model.base_loc)
    regions = model.cluster(pts).cpu().reshape(grid_size, grid_size)
    samples, comp = model.sample(2000)
    samples, comp = samples.cpu(), comp.cpu()
    k = model.num_components
    colors = [f"C{i}" for i in range(k)]
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.contourf(
        gx.numpy(),
        gy.numpy(),
        regions.numpy(),
        levels=torch.arange(k + 1).sub(0.5).tolist(),
        cmap=ListedColormap(colors),
        alpha=0.25,
    )
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c=[colors[i] for i in comp.tolist()])
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_title("VMoNF samples by component over argmax q(k|x)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


# -- two circles ------------------------------------------------------------------------
def run_circles(args, device):
    """Unsupervised and 64 labels (32 per circle), each selected on validation, as pinwheel."""
    train_set = two_circles(2048, noise=0.05, factor=0.5, seed=0)
    val = two_circles(512, noise=0.05, factor=0.5, seed=2)
    test = two_circles(1024, noise=0.05, factor=0.5, seed=1)
    x_train = train_set.data
    labels = torch.full_like(train_set.labels, -1)
    for c in (0, 1):
        labels[(train_set.labels == c).nonzero()[:32, 0]] = c
    label_weight = args.label_weight or 0.05 * x_train.shape[0]
    no_labels = torch.full((val.data.shape[0],), -1, dtype=labels.dtype)
    result = {
        "protocol": PROTOCOL,
        "splits": {
            "train": "two_circles(2048, noise=0.05, factor=0.5, seed=0)",
            "validation": "two_circles(512, noise=0.05, factor=0.5, seed=2)",
            "test": "two_circles(1024, noise=0.05, factor=0.5, seed=1)",
            "labelled": "the first 32 training points of each circle",
        },  # fmt: skip
        "label_weight": label_weight,
        "configurations_tried": list(VMONF_CONFIGS),
        "num_configurations": len(VMONF_CONFIGS),
    }
    for name, y in (("unsupervised", None), ("semi-supervised (64 labels)", labels)):
        validation, models = {}, {}
        data = x_train if y is None else (x_train, y)
        val_data = val.data if y is None else (val.data, no_labels)
        for config in VMONF_CONFIGS:
            record = {"val_log_likelihood": [], "val_accuracy": [], "best_step": [], "seconds": []}
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = build_vmonf(args, config, x_train, 2, seed, y=y, label_weight=label_weight)
                record["parameters"] = count(model)
                run = train(args, model, data, val_data, elbo(), seed, device)
                for key in ("best_step", "seconds"):
                    record[key].append(run[key])
                record["val_log_likelihood"].append(mean_log_likelihood(model, val.data, device))
                record["val_accuracy"].append(accuracy(model, val, device))
                models[config, seed] = model
                print(
                    f"  circles {name} {config} seed {seed}: val ll "
                    f"{record['val_log_likelihood'][-1]:.4f} best step {run['best_step']} "
                    f"({run['seconds']:.0f} s)",
                    flush=True,
                )
            validation[config] = record
        chosen = select(validation)
        print(f"  circles {name}: selected on validation: {chosen}", flush=True)
        rows = {
            f"VMoNF ({chosen})": {
                "configuration": chosen,
                "seeds": args.seeds,
                "parameters": validation[chosen]["parameters"],
                "accuracy": summary(
                    [accuracy(models[chosen, s], test, device) for s in args.seeds]
                ),
                "test_log_likelihood": summary(
                    [mean_log_likelihood(models[chosen, s], test.data, device) for s in args.seeds]
                ),
            },
            "k-means" + ("" if y is None else " seeded by the labels"): {
                "seeds": args.seeds,
                "accuracy": summary([kmeans_baseline(x_train, test, 2, s, y) for s in args.seeds]),
            },
        }
        gmms = [gmm_baseline(x_train, val.data, 2, s, y) for s in args.seeds]
        scores = [gmm_scores(g, test) for g in gmms]
        rows["Gaussian mixture (EM)" + ("" if y is None else ", labels fixed")] = {
            "seeds": args.seeds,
            "parameters": sum(p.numel() for p in gmms[0].parameters()),
            "accuracy": summary([s["accuracy"] for s in scores]),
            "test_log_likelihood": summary([s["log_likelihood"] for s in scores]),
            "val_log_likelihood": [gmm_scores(g, val)["log_likelihood"] for g in gmms],
        }
        if y is not None:  # the 64 labels alone: nearest labelled neighbour (no seed)
            known = y >= 0
            nearest = torch.cdist(test.data, x_train[known]).argmin(1)
            acc = clustering_accuracy(y[known][nearest], test.labels)
            rows["1-NN on the 64 labels"] = {"seeds": [], "accuracy": summary([acc])}
        print_rows(f"two circles, {name}", rows)
        result[name] = {"selected": chosen, "validation": validation, "test": rows}
        if args.figures:  # the chosen configuration's seed with the best validation ll
            lls = validation[chosen]["val_log_likelihood"]
            seed = args.seeds[max(range(len(lls)), key=lls.__getitem__)]
            setting = "unsupervised" if y is None else "semi"
            path = figure_path(args, f"vmonf_circles_{setting}")
            plot_regions(models[chosen, seed], test.data, path)
            result[name]["figure"] = {"path": str(path), "configuration": chosen, "seed": seed}
    return result


# -- timing -----------------------------------------------------------------------------
def seconds_per_step(model, x, num_steps, device):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = elbo()
    t0 = 0.0
    for i in range(num_steps + 3):  # three warm-up steps
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn.differentiable_loss(model.model, model.guide, x).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / num_steps


def run_timing(args, device):
    """Median over rounds that alternate K=1 and K=10, so that load changes hit both."""
    models = {}
    for k in (1, 10):
        torch.manual_seed(0)
        models[k] = VariationalMixtureOfFlows(
            args.timing_dim,
            k,
            args.timing_flow,
            num_layers=args.timing_layers,
            hidden_dims=[args.timing_hidden] * (1 if args.timing_flow == "maf" else 2),
        ).to(device)
    x = torch.randn(args.timing_batch, args.timing_dim, device=device)
    times = {1: [], 10: []}
    for _ in range(args.timing_rounds):
        for k in (1, 10):
            times[k].append(seconds_per_step(models[k], x, args.timing_steps, device))
    rows = {
        f"K={k}": {
            "seconds_per_step": statistics.median(times[k]),
            "rounds": times[k],
            "parameters": count(models[k]),
        }
        for k in (1, 10)
    }
    ratio = rows["K=10"]["seconds_per_step"] / rows["K=1"]["seconds_per_step"]
    rows["ratio_K10_over_K1"] = ratio
    rows["setting"] = {
        "device": str(device),
        "flow": args.timing_flow,
        "data_dim": args.timing_dim,
        "hidden": args.timing_hidden,
        "layers": args.timing_layers,
        "batch": args.timing_batch,
        "threads": torch.get_num_threads(),
    }
    print(
        f"\n| timing ({device}, {args.timing_flow}, D={args.timing_dim}, hidden "
        f"{args.timing_hidden}, batch {args.timing_batch}) | s/step (median) | parameters |"
    )
    print("|---|---|---|")
    for k in ("K=1", "K=10"):
        print(f"| {k} | {rows[k]['seconds_per_step']:.4f} | {rows[k]['parameters']} |")
    print(f"| ratio K=10 / K=1 | {ratio:.2f} | |")
    return rows


# -- MNIST ------------------------------------------------------------------------------
def run_mnist(args, device):
    from pyro_manifold.datasets import (
        dequantize_logit,
        inverse_logit_transform,
        load_mnist,
    )
    from pyro_manifold.metrics import normalized_mutual_information

    digits = [0, 1, 2, 3, 4]
    train = load_mnist(split="train", digits=digits)
    test = load_mnist(split="test", digits=digits)
    n_train = 2000 if args.smoke else train.data.shape[0]

    def prep(pixels, seed):
        return dequantize_logit(pixels, seed)[0]

    x_train, x_test = prep(train.data[:n_train], 0), prep(test.data, 1)
    y_train = train.labels[:n_train]
    semi = torch.full_like(y_train, -1)
    for d in digits:
        semi[(y_train == d).nonzero()[:20, 0]] = d  # 100 labels in all
    configs = {"unsupervised": None, "semi-supervised (100 labels)": semi}
    rows = {}
    for name, y in configs.items():
        if name.split(" ")[0] not in args.mnist_configs:
            continue
        torch.manual_seed(0)
        model = VariationalMixtureOfFlows(
            784,
            5,
            "maf",
            num_layers=args.mnist_layers,
            hidden_dims=[args.mnist_hidden],
            encoder_hidden_dims=[512, 512],
            label_weight=args.label_weight or 0.05 * x_train.shape[0],
        )
        if args.identity_init_mnist:  # MAF components start near the identity
            for layer in model.layers:
                scale_output_layer(layer.arn)
        kmeans_accuracy = encoder_agreement = None
        if args.kmeans_mnist:  # k-means alone is the reference clustering of this start
            # seeded by the labels in the semi-supervised run, so component k is digit k
            kmeans_labels = model.initialize_components(x_train, seed=0, y=y)
            kmeans_accuracy = clustering_accuracy(kmeans_labels, y_train)
            if args.kmeans_encoder_steps:  # q(k|x) starts at the k-means partition
                encoder_agreement = model.fit_encoder(
                    x_train.to(device), kmeans_labels.to(device), args.kmeans_encoder_steps
                )
                print(f"  encoder fitted to k-means: agreement {encoder_agreement:.3f}")
        data = x_train if y is None else (x_train, y)
        start = time.perf_counter()
        fit(
            model.model,
            model.guide,
            data,
            loss=elbo(),
            num_steps=args.mnist_steps,
            batch_size=128,
            lr=args.mnist_lr,
            device=device,
            seed=0,
            progress=False,
        )
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model.cluster(c.to(device)).cpu() for c in x_test.split(1000)])
            exact = torch.cat(
                [model.cluster(c.to(device), exact=True).cpu() for c in x_test.split(1000)]
            )
        table = contingency_table(pred, test.labels, normalize=False, num_clusters=5)
        rows[name] = {
            "accuracy": clustering_accuracy(pred, test.labels),
            "nmi": normalized_mutual_information(pred, test.labels),
            "contingency_table": table.tolist(),
            "train_seconds": seconds,
            "exact_posterior_accuracy": clustering_accuracy(exact, test.labels),
            "kmeans_train_accuracy": kmeans_accuracy,
            "kmeans_encoder_steps": args.kmeans_encoder_steps if args.kmeans_mnist else 0,
            "encoder_kmeans_agreement": encoder_agreement,
        }
        print(
            f"  mnist {name}: acc {rows[name]['accuracy']:.3f}, exact posterior "
            f"{rows[name]['exact_posterior_accuracy']:.3f} ({seconds:.0f} s)",
            flush=True,
        )
        # each digit's share over the components (the paper's table 1 normalises per class)
        shares = contingency_table(pred, test.labels, normalize="class", num_clusters=5)
        print("  component \\ digit " + " ".join(f"{d:>6}" for d in digits))
        for k, share in enumerate(shares.tolist()):
            print(f"  {k:>17} " + " ".join(f"{v:6.3f}" for v in share))
        if args.figures:
            with torch.no_grad():
                x, k = model.sample(400)
            images = inverse_logit_transform(x.cpu(), alpha=1e-6).clamp(0, 1)
            setting = "unsupervised" if y is None else "semi"
            mnist_component_grid(images, k.cpu(), figure_path(args, f"vmonf_mnist_{setting}"))
    return rows


def mnist_component_grid(images, components, path, per_row=10):
    """Samples of each component on one row (the paper's fig. 9)."""
    from matplotlib.figure import Figure

    num = int(components.max()) + 1
    fig = Figure(figsize=(per_row * 0.8, num * 0.8))
    for k in range(num):
        chosen = images[components == k][:per_row]
        for j in range(per_row):
            ax = fig.add_subplot(num, per_row, k * per_row + j + 1)
            ax.axis("off")
            if j < len(chosen):
                ax.imshow(chosen[j].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            if j == 0:
                ax.set_title(f"k = {k}", fontsize=7, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--part", choices=["pinwheel", "circles", "timing", "mnist", "all"], default="pinwheel"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--validate-every", type=int, default=250)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument(
        "--flow-layers", type=int, nargs="+", default=[4, 8], help="layers of the single flows"
    )
    p.add_argument(
        "--label-weight",
        type=float,
        default=None,
        help="alpha per labelled point (default 0.05 N, cf. Kingma et al.'s 0.1 N)",
    )
    p.add_argument("--timing-flow", default="realnvp")
    p.add_argument("--timing-dim", type=int, default=2)
    p.add_argument("--timing-hidden", type=int, default=32)
    p.add_argument("--timing-layers", type=int, default=4)
    p.add_argument("--timing-batch", type=int, default=256)
    p.add_argument("--timing-steps", type=int, default=50)
    p.add_argument("--timing-rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--mnist-layers", type=int, default=5)
    p.add_argument("--mnist-hidden", type=int, default=1024)
    p.add_argument("--mnist-steps", type=int, default=20000)
    p.add_argument("--kmeans-mnist", action="store_true")
    p.add_argument(
        "--kmeans-encoder-steps",
        type=int,
        default=0,
        help="with --kmeans-mnist, fit q(k|x) to the k-means partition for this many steps",
    )
    p.add_argument("--mnist-lr", type=float, default=1e-4)
    p.add_argument("--identity-init-mnist", action="store_true")
    p.add_argument(
        "--mnist-configs", nargs="+", default=["unsupervised", "semi-supervised"],
        choices=["unsupervised", "semi-supervised"],
    )  # fmt: skip
    p.add_argument("--figures", default=None, help="folder for the figures (none without it)")
    p.add_argument(
        "--tag",
        default="",
        help="suffix of the figure names: vmonf_PART[_SETTING]_TAG.png (the JSON is --out)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON file (default benchmarks/results/vmonf_PART.json; runs/smoke/ with --smoke)",
    )
    p.add_argument("--smoke", action="store_true", help="a few steps of each part")
    args = p.parse_args()
    if args.smoke:
        args.seeds, args.steps, args.timing_steps, args.mnist_steps = [0, 1], 20, 3, 5
        args.validate_every = 10
        args.timing_rounds = 1
        args.mnist_hidden = 800
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    parts = ["pinwheel", "circles", "timing"] if args.part == "all" else [args.part]
    if args.part == "all" and os.environ.get("PYRO_MANIFOLD_DATA") and not args.smoke:
        parts.append("mnist")
    results = {"device": str(device), "args": vars(args), **provenance()}
    runners = {
        "pinwheel": run_pinwheel,
        "circles": run_circles,
        "timing": run_timing,
        "mnist": run_mnist,
    }
    for part in parts:
        print(f"== {part} ==", flush=True)
        results[part] = runners[part](args, device)
    out = Path(
        args.out or f"{'runs/smoke' if args.smoke else 'benchmarks/results'}/vmonf_{args.part}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
