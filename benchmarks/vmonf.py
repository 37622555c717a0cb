"""Variational mixture of normalizing flows (VMoNF): clustering, likelihood and speed.

Parts (``--part``, default ``pinwheel``; ``all`` runs pinwheel, circles and timing):

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
* ``mnist``: digits 0-4, MAF components (needs ``PYRO_MANIFOLD_DATA``), in three stages
  (``--mnist-stage train|select|test``) that the queue ``benchmarks/vmonf_mnist.sh`` runs
  in order: hours of CPU, checkpointed and resumable.

Protocol of MNIST digits 0-4 (issue 21; fixed before any run under it):

* Data (``load_mnist``, digits 0-4): training = the ``"train"`` split (the first 50,000
  official training images after a seed-0 permutation; 25,510 of digits 0-4),
  validation = the ``"validation"`` split (the other 10,000; 5,086), test = the
  official test images of digits 0-4 (5,139). Each split is dequantised and logit-mapped
  once (``dequantize_logit``, noise seeds 0, 2, 1), the VMoNF's input. The 100 labels: the
  first 20 training images of each digit, the same for every seed.
* Fixed, not selected (the CPU budget; issue 21 notes them): K = 5 components, each one
  MAF layer with one hidden layer of 1024 units, started near the identity; encoder
  512-512; uniform pi; T = 1; label weight alpha = 0.05 N per labelled image; Adam 3e-4,
  batch 128, 6000 steps; the fit_encoder start 1000 steps. Every run computes its
  validation loss (negative ELBO per image on the validation images, without labels)
  every 500 steps and keeps the parameters of the lowest, so the step count -- 3000
  against 6000 in earlier sessions, which doubled it after reading test accuracy -- is
  chosen per run by early stopping on validation among 500, 1000, ..., 6000. A
  checkpoint every 500 steps; an interrupted job resumes from it.
* Configurations tried (``configurations_tried``; 5, seed 0 each). Unsupervised:
  ``paper`` (the paper's random start), ``kmeans`` (component bases on k-means clusters of
  the training images, ``initialize_components``), ``kmeans_encoder`` (the same, then
  ``fit_encoder``: q(k|x) fitted to the k-means partition). With 100 labels: ``paper`` and
  ``kmeans_encoder`` (the k-means seeded and constrained by the labels, so component k is
  digit k). These are the starts earlier sessions compared on the test images; the
  selection redoes that choice on validation.
* Selection rule (``--mnist-stage select``; validation only, ``mnist_choose``): in each
  setting the configuration with the highest exact validation log-likelihood
  log sum_k pi_k p_k(x) (nats per image, logit space; ``select``, the rule of pinwheel and
  circles; with one seed the mean is seed 0's value). It uses no labels: the unsupervised
  runs see none and the 100-label runs only their 100, in training. Validation accuracies
  are recorded and choose nothing.
* Seeds: the chosen configuration of each setting and the paper's random start ``paper``
  (issue 21's baseline; one job when it is the chosen one) are trained with seeds 1 and
  2 as well (``train_next`` in the selection JSON): seeds 0, 1, 2 for every VMoNF row. A
  seed sets the initial weights, the k-means and encoder fits and the batch order; data,
  dequantisation and labels are the same for every seed.
* Test (``--mnist-stage test``, once, after the selection is written; no earlier stage
  reads the test images): those runs at their best validation loss (``best.pt``; the
  reloaded checkpoint must give the validation log-likelihood its run recorded), seeds
  0-2, and the baselines with the same seeds and splits: k-means (k-means++ start, 50
  Lloyd steps, test images to the nearest centroid) on the logit features and on the
  pixel intensities in [0, 1]; a Gaussian mixture with diagonal covariances by EM on the
  logit features (``diagonal_em``: the recipe of the pinwheel's EM, random-row start,
  variance floor 1e-3, up to 500 steps, the iterate of best validation log-likelihood;
  full 784 x 784 covariances cost about 10^11 flops per EM step here); with the 100
  labels: k-means seeded and constrained by them, EM started at the labelled images'
  class means with their responsibilities fixed, and the nearest labelled image (1-NN on
  the 100, logit features and pixels, no seed).
* Metrics: unsupervised, the clustering accuracy of argmax q(k|x) (the encoder,
  ``cluster(x)``) against the digit under the best one-to-one matching (issue 4's bar
  >= 0.80); with 100 labels, the classification accuracy of argmax q(k|x) with
  component k read as digit k (bar >= 0.95). Recorded beside them, choosing nothing: the
  flows' exact posterior argmax pi_k p_k(x) (``cluster(x, exact=True)``), the matched
  accuracy with labels, NMI, the test log-likelihood, per-seed contingency tables. Mean
  ± sample std and per seed. Figures: samples per component (paper fig. 9) of the chosen
  configuration's seed with the best validation log-likelihood.
* CPU budget (one thread per job; RESULTS: 3000 steps took about 23 min next to another
  job, 6000 steps 49 min): about 55 min per job with its validations; 5 candidate jobs
  (about 4.5 h), then 4 to 8 seed jobs (about 3.5-7.5 h: 8 when neither chosen
  configuration is ``paper``), select and test a few minutes each; two workers halve
  the wall time.
* Not run here: the paper's GPU protocol (5 MAF layers per component, 20,000 steps),
  temperature annealing, more than one seed per candidate.

Run (CPU):  nice -n 10 python benchmarks/vmonf.py --part pinwheel --device cpu --threads 1
                --figures benchmarks/figures --out benchmarks/results/vmonf_pinwheel.json
            nice -n 10 python benchmarks/vmonf.py --part circles --device cpu --threads 1
                --figures benchmarks/figures --out benchmarks/results/vmonf_circles.json
            python benchmarks/vmonf.py --part timing --device cpu --threads 1
            (on a GPU also: --part timing --timing-flow maf --timing-dim 784
             --timing-hidden 1024 --timing-layers 5 --timing-batch 128)
            bash benchmarks/vmonf_mnist.sh all   (MNIST, the four stages; see that file)
Smoke:      python benchmarks/vmonf.py --part all --smoke --device cpu
            (MNIST: VMONF_MNIST_ARGS=--smoke VMONF_MNIST_SEEDS=1 bash
             benchmarks/vmonf_mnist.sh all, with VMONF_MNIST_RUNS/RESULTS/FIGURES set)
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


def train(args, model, data, val_data, loss, seed, device, **options):
    """Adam for ``--steps`` steps; the parameters of the best validation loss are kept.

    ``options`` replace fit's settings (MNIST: its steps, batch, run directory, resume)."""
    settings = {"num_steps": args.steps, "batch_size": 256, "lr": args.lr,
                "validate_every": args.validate_every, **options}  # fmt: skip
    t0 = time.perf_counter()
    result = fit(
        model.model,
        model.guide,
        data,
        loss=loss,
        validation_data=val_data,
        device=device,
        seed=seed,
        progress=False,
        **settings,
    )
    h = result.history
    best = min(range(len(h["val_loss"])), key=h["val_loss"].__getitem__)
    return {
        "seconds": time.perf_counter() - t0,
        "best_step": h["val_step"][best],
        "best_validation_loss": result.best_validation_loss,
        "steps": result.step,
        "validation_curve": {"step": h["val_step"], "loss": h["val_loss"]},
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


def kmeans_baseline(train_x, split, k, seed, labels=None, score=clustering_accuracy):
    """k-means (k-means++ start, 50 Lloyd steps) on the training points; test points go to
    the nearest centroid, scored by ``score(pred, labels)``. With ``labels``: seeded and
    constrained by them (Basu et al.)."""
    centroids, _ = kmeans(
        train_x.double(),
        k,
        50,
        labels=labels,
        generator=torch.Generator().manual_seed(seed),
    )
    pred = torch.cdist(split.data.double(), centroids).argmin(1)
    return score(pred, split.labels)


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


# -- MNIST digits 0-4: train jobs, selection on validation, test once ---------------------
MNIST_DIGITS = (0, 1, 2, 3, 4)
MNIST_CONFIGS = {
    "unsupervised": ("paper", "kmeans", "kmeans_encoder"),
    "semi100": ("paper", "kmeans_encoder"),
}
MNIST_BASELINE = "paper"  # the paper's random start: trained with every seed, whatever is chosen
MNIST_LABELS_PER_DIGIT = 20  # 100 labels
MNIST_DEQUANTIZATION_SEEDS = {"train": 0, "validation": 2, "test": 1}
MNIST_SMOKE_IMAGES = {"train": 2000, "validation": 500, "test": 500}
# the claim's accuracy per setting (module docstring): clusters matched to digits without
# labels; with them, component k read as digit k
MNIST_HEADLINE = {"unsupervised": "accuracy", "semi100": "classification_accuracy"}
# settings every run of the protocol shares (select and test refuse a mixture)
MNIST_SHARED = ("layers", "hidden", "steps", "lr", "batch_size", "validate_every",
                "label_weight", "train_images", "validation_images", "smoke")  # fmt: skip
MNIST_PROTOCOL = (
    "configuration chosen per setting by the highest exact validation log-likelihood of "
    "seed 0 (no labels beyond the 100 of the semi-supervised runs); step count by early "
    "stopping on the validation loss; the chosen configuration and the paper's random start "
    "trained with seeds 0-2; the test split scored once per final configuration"
)


def mnist_data(args, split):
    """Digits 0-4 of ``split`` as (dequantised logit features, pixels in [0, 1]), ToyData."""
    from pyro_manifold.datasets import ToyData, dequantize_logit, load_mnist

    images = load_mnist(split=split, digits=list(MNIST_DIGITS))
    pixels, labels = images.data, images.labels
    if args.smoke:
        pixels, labels = pixels[: MNIST_SMOKE_IMAGES[split]], labels[: MNIST_SMOKE_IMAGES[split]]
    features = dequantize_logit(pixels, MNIST_DEQUANTIZATION_SEEDS[split])[0]
    return ToyData(features, labels), ToyData(pixels.double() / 255, labels)


def mnist_labels(y):
    """The 100 labels: the first 20 training images of each digit keep it; -1 elsewhere."""
    semi = torch.full_like(y, -1)
    for d in MNIST_DIGITS:
        semi[(y == d).nonzero()[:MNIST_LABELS_PER_DIGIT, 0]] = d
    return semi


def mnist_run_name(setting, config, seed):
    return f"{setting}_{config}_seed{seed}"


def mnist_run_json(args, setting, config, seed):
    name = mnist_run_name(setting, config, seed)
    return Path(args.mnist_results) / "vmonf_mnist_runs" / f"{name}.json"


def mnist_choose(validation):
    """The rule on seed 0's validation figures: (chosen configuration per setting, runs to
    train with the other seeds: the chosen one and the paper's random start).

    ``validation[setting][config]["val_log_likelihood"]`` lists the per-seed values;
    validation accuracies, where present, choose nothing.

    Example:
        >>> v = {"unsupervised": {"paper": {"val_log_likelihood": [-90.0]},
        ...                       "kmeans": {"val_log_likelihood": [-80.0]}},
        ...      "semi100": {"paper": {"val_log_likelihood": [-70.0]},
        ...                  "kmeans_encoder": {"val_log_likelihood": [-75.0]}}}
        >>> mnist_choose(v)
        ({'unsupervised': 'kmeans', 'semi100': 'paper'}, [['unsupervised', 'kmeans'], ['unsupervised', 'paper'], ['semi100', 'paper']])
    """  # noqa: E501
    chosen = {setting: select(configs) for setting, configs in validation.items()}
    train_next = [
        [setting, config]
        for setting in validation
        for config in dict.fromkeys((chosen[setting], MNIST_BASELINE))
    ]
    return chosen, train_next


def build_mnist_vmonf(job):
    """The VMoNF of a job (a run's ``job`` dict, which is also its checkpoint's config)."""
    torch.manual_seed(job["seed"])
    model = VariationalMixtureOfFlows(
        784,
        len(MNIST_DIGITS),
        "maf",
        num_layers=job["layers"],
        hidden_dims=[job["hidden"]],
        encoder_hidden_dims=[512, 512],
        label_weight=job["label_weight"],
    )
    for layer in model.layers:  # MAF components start near the identity
        scale_output_layer(layer.arn)
    return model


def load_mnist_run(run_dir, device):
    """The VMoNF of a run at its best validation loss (``best.pt``)."""
    from pyro_manifold.infer import load_checkpoint

    state = load_checkpoint(Path(run_dir) / "best.pt")
    model = build_mnist_vmonf(state["config"])
    model.load_state_dict(state["modules"][0])
    return model.to(device).eval()


@torch.no_grad()
def mnist_scores(model, split, device, chunk=1000):
    """Exact log-likelihood (nats per image) and clusterings of ``split``, one pass."""
    from pyro_manifold.metrics import normalized_mutual_information

    model.eval()
    component, logits = [], []
    for x in split.data.split(chunk):
        component.append(model.component_log_prob(x.to(device)).cpu())
        logits.append(model.encoder_logits(x.to(device)).cpu())
    joint = torch.cat(component) + model.mixture_log_weights().cpu()
    q, exact, y = torch.cat(logits).argmax(-1), joint.argmax(-1), split.labels
    return {
        "log_likelihood": joint.logsumexp(-1).mean().item(),
        "accuracy": clustering_accuracy(q, y),
        "classification_accuracy": (q == y).double().mean().item(),
        "exact_posterior_accuracy": clustering_accuracy(exact, y),
        "exact_posterior_classification_accuracy": (exact == y).double().mean().item(),
        "nmi": normalized_mutual_information(q, y),
        "contingency_table": contingency_table(q, y, normalize=False, num_clusters=5).tolist(),
    }


def run_mnist(args, device):
    stages = {"train": mnist_train, "select": mnist_select, "test": mnist_test}
    return stages[args.mnist_stage](args, device)


def mnist_train(args, device):
    """One configuration and seed: trained with checkpoints, scored on validation only."""
    setting, config, seed = args.mnist_setting, args.mnist_config, args.mnist_seed
    if config not in MNIST_CONFIGS[setting]:
        raise SystemExit(f"--mnist-config: expected one of {MNIST_CONFIGS[setting]} for {setting}")
    train_set, _ = mnist_data(args, "train")
    val, _ = mnist_data(args, "validation")  # the test split is not read by this stage
    y = mnist_labels(train_set.labels) if setting == "semi100" else None
    job = {
        "setting": setting,
        "configuration": config,
        "seed": seed,
        "layers": args.mnist_layers,
        "hidden": args.mnist_hidden,
        "steps": args.mnist_steps,
        "lr": args.mnist_lr,
        "batch_size": 128,
        "validate_every": args.mnist_validate_every,
        "encoder_steps": args.mnist_encoder_steps if config == "kmeans_encoder" else 0,
        "label_weight": args.label_weight or 0.05 * train_set.data.shape[0],
        "train_images": train_set.data.shape[0],
        "validation_images": val.data.shape[0],
        "labels": 0 if y is None else int((y >= 0).sum()),
        "smoke": args.smoke,
    }
    model = build_mnist_vmonf(job).to(device)
    start = {}
    if config != "paper":  # redone on resume (deterministic); the checkpoint then overrides it
        x = train_set.data.to(device)
        kmeans_labels = model.initialize_components(x, seed=seed, y=y)
        # recorded, chooses nothing (it reads the training labels)
        start["kmeans_train_accuracy"] = clustering_accuracy(kmeans_labels.cpu(), train_set.labels)
        if config == "kmeans_encoder":
            start["encoder_kmeans_agreement"] = model.fit_encoder(
                x, kmeans_labels, job["encoder_steps"], seed=seed
            )
    run_dir = Path(args.mnist_runs) / mnist_run_name(setting, config, seed)
    resume = run_dir / "checkpoint.pt" if args.resume else None
    no_labels = torch.full((val.data.shape[0],), -1, dtype=torch.long)
    run = train(
        args,
        model,
        train_set.data if y is None else (train_set.data, y),
        val.data if y is None else (val.data, no_labels),  # validation loss without labels
        elbo(),
        seed,
        device,
        num_steps=job["steps"],
        batch_size=job["batch_size"],
        lr=job["lr"],
        validate_every=job["validate_every"],
        run_dir=run_dir,
        checkpoint_every=job["validate_every"],
        resume=resume,
        config=job,
    )
    scores = mnist_scores(model, val, device)
    print(
        f"  mnist {setting} {config} seed {seed}: val ll {scores['log_likelihood']:.2f}, "
        f"best step {run['best_step']} ({run['seconds']:.0f} s)",
        flush=True,
    )
    return {
        "stage": "train",
        "split": "validation",
        "protocol": MNIST_PROTOCOL,
        "job": job,
        "run_dir": str(run_dir),
        "resumed": resume is not None,
        "parameters": count(model),
        **start,
        **run,
        "validation": scores,
    }


def mnist_read_run(args, setting, config, seed):
    """A finished train job's JSON (its ``mnist`` part, with the run's commit)."""
    path = mnist_run_json(args, setting, config, seed)
    if not path.exists():
        raise SystemExit(
            f"{path}: missing; train it with bash benchmarks/vmonf_mnist.sh (or wait for the "
            "worker that holds it)"
        )
    report = json.loads(path.read_text())
    provenance_keys = ("commit", "uncommitted_changes")
    return {**report["mnist"], "provenance": {k: report[k] for k in provenance_keys}}


def mnist_shared(runs):
    """The settings all ``runs`` share; SystemExit naming the first run that differs."""
    (first_name, first), *rest = runs.items()
    shared = {k: first["job"][k] for k in MNIST_SHARED}
    for name, run in rest:
        if {k: run["job"][k] for k in MNIST_SHARED} != shared:
            raise SystemExit(f"{name}: trained with other settings than {first_name}")
    return shared


def mnist_select(args, device):
    """Every configuration's seed-0 run, scored on validation; the rule picks one per setting."""
    validation, runs = {}, {}
    for setting, configs in MNIST_CONFIGS.items():
        validation[setting] = {}
        for config in configs:
            run = mnist_read_run(args, setting, config, 0)
            runs[mnist_run_name(setting, config, 0)] = run
            v = run["validation"]
            validation[setting][config] = {
                "val_log_likelihood": [v["log_likelihood"]],
                # recorded, not used
                "val_accuracy": [v[MNIST_HEADLINE[setting]]],
                "val_exact_posterior_accuracy": [v["exact_posterior_accuracy"]],
                "best_step": [run["best_step"]],
                "seconds": [run["seconds"]],
                "parameters": run["parameters"],
            }
    chosen, train_next = mnist_choose(validation)
    for setting, config in chosen.items():
        print(f"  mnist {setting}: selected on validation: {config}", flush=True)
    return {
        "stage": "select",
        "split": "validation",
        "protocol": MNIST_PROTOCOL,
        "configurations_tried": {s: list(c) for s, c in MNIST_CONFIGS.items()},
        "num_configurations": sum(len(c) for c in MNIST_CONFIGS.values()),
        "validation": validation,
        "selected": chosen,
        "train_next": train_next,
        "shared_settings": mnist_shared(runs),
        "run_provenance": {name: run["provenance"] for name, run in runs.items()},
    }


@torch.no_grad()
def diagonal_gmm_log_joint(mixture, x):
    r"""log pi_k + log N(x; mu_k, diag(v_k)) of ``mixture = (log pi, mu, v)``: (N, K), float64."""
    log_w, loc, var = mixture
    x = x.double()
    quad = (x * x) @ (1 / var).T - 2 * x @ (loc / var).T + (loc * loc / var).sum(-1)
    return log_w - 0.5 * (quad + var.log().sum(-1) + x.shape[1] * math.log(2 * math.pi))


@torch.no_grad()
def diagonal_em(x, k, x_val, seed, labels=None, max_steps=500, tol=1e-4):
    """A Gaussian mixture with diagonal covariances by EM: ``(log pi, means, variances)``.

    The recipe of :meth:`GaussianMixturePrior.fit_em` and :func:`semi_supervised_em`
    (random-row start, unit variances, equal weights; :data:`COVARIANCE_FLOOR` added to the
    variances; stop once the mean training log-likelihood rises by less than ``tol``; the
    iterate with the best validation log-likelihood kept), with diagonal covariances: full
    784 x 784 ones would cost about 10^11 flops per EM step on 25,000 images. With
    ``labels`` (``-1`` = unlabelled) the labelled rows keep one-hot responsibilities and
    component k starts at the mean of the rows labelled k (as the seeded k-means), so
    that component k is class k.
    """
    x, x_val = x.double(), x_val.double()
    n, d = x.shape
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    loc = x[pick].clone()
    for j in range(k if labels is not None else 0):
        if bool((labels == j).any()):
            loc[j] = x[labels == j].mean(0)
    ones = torch.ones(k, d, dtype=torch.float64)
    mixture = (torch.full((k,), -math.log(k), dtype=torch.float64), loc, ones)
    x2 = x * x
    best, best_mixture, previous = -math.inf, mixture, -math.inf
    for _ in range(max_steps):
        log_joint = diagonal_gmm_log_joint(mixture, x)
        log_p = log_joint.logsumexp(-1, keepdim=True)
        r = (log_joint - log_p).exp()
        if labels is not None:
            known = labels >= 0
            r[known] = torch.nn.functional.one_hot(labels[known], k).double()
        weight = r.sum(0).clamp_min(1e-12)
        loc = (r.T @ x) / weight[:, None]
        var = ((r.T @ x2) / weight[:, None] - loc * loc).clamp_min(0) + COVARIANCE_FLOOR
        mixture = ((weight / weight.sum()).log(), loc, var)
        val = diagonal_gmm_log_joint(mixture, x_val).logsumexp(-1).mean().item()
        if val > best:
            best, best_mixture = val, mixture
        mean_log_p = log_p.mean().item()
        if mean_log_p - previous < tol:
            break
        previous = mean_log_p
    return best_mixture


def classification_accuracy(pred, labels):
    """Fraction of ``pred == labels`` (component k read as class k)."""
    return (pred == labels).double().mean().item()


def mnist_baselines(args, setting, data, seeds):
    """k-means, diagonal EM (and with labels the nearest labelled image), same seeds."""
    (train_set, train_pixels), (val, _), (test, test_pixels) = data
    labels = mnist_labels(train_set.labels) if setting == "semi100" else None
    score = clustering_accuracy if labels is None else classification_accuracy
    seeded = "" if labels is None else " seeded by the 100 labels"
    spaces = {
        "logit features": (train_set.data, test),
        "pixels": (train_pixels.data, test_pixels),
    }
    rows = {}
    for space, (train_x, split) in spaces.items():
        accuracies = [kmeans_baseline(train_x, split, 5, s, labels, score) for s in seeds]
        rows[f"k-means{seeded} ({space})"] = {"seeds": seeds, "accuracy": summary(accuracies)}
    em_steps = 5 if args.smoke else 500
    mixtures = [diagonal_em(train_set.data, 5, val.data, s, labels, em_steps) for s in seeds]
    log_joint = [diagonal_gmm_log_joint(m, test.data) for m in mixtures]
    name = "Gaussian mixture, diagonal covariances, EM" + ("" if labels is None else ", labels")
    rows[name] = {
        "seeds": seeds,
        "parameters": 5 * (2 * 784 + 1),
        "accuracy": summary([score(j.argmax(-1), test.labels) for j in log_joint]),
        "test_log_likelihood": summary([j.logsumexp(-1).mean().item() for j in log_joint]),
        "val_log_likelihood": [
            diagonal_gmm_log_joint(m, val.data).logsumexp(-1).mean().item() for m in mixtures
        ],
    }
    if labels is not None:  # the 100 labels alone: the nearest labelled image (no seed)
        known = labels >= 0
        for space, (train_x, split) in spaces.items():
            nearest = torch.cdist(split.data.double(), train_x[known].double()).argmin(1)
            acc = classification_accuracy(labels[known][nearest], split.labels)
            rows[f"1-NN on the 100 labels ({space})"] = {"seeds": [], "accuracy": summary([acc])}
    return rows


def mnist_test(args, device):
    """The chosen configurations and the random start (every seed) and the baselines, once."""
    path = Path(args.mnist_results) / "vmonf_mnist_selection.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing; run the selection first (vmonf_mnist.sh select)")
    selection_report = json.loads(path.read_text())
    selection, seeds = selection_report["mnist"], list(args.mnist_seeds)
    data = (mnist_data(args, "train"), mnist_data(args, "validation"), mnist_data(args, "test"))
    (_, _), (val, _), (test, _) = data
    result = {
        "stage": "test",
        "split": "test",
        "protocol": MNIST_PROTOCOL,
        "selection": {
            "path": str(path),
            "commit": selection_report["commit"],
            "selected": selection["selected"],
        },
        "configurations_tried": selection["configurations_tried"],
        "num_configurations": selection["num_configurations"],
        "seeds": seeds,
    }
    runs = {}
    for setting, headline in MNIST_HEADLINE.items():
        chosen = selection["selected"][setting]
        rows, figure_model, figure_seed = {}, None, None
        for config in dict.fromkeys((chosen, MNIST_BASELINE)):
            reports = {s: mnist_read_run(args, setting, config, s) for s in seeds}
            runs.update({mnist_run_name(setting, config, s): r for s, r in reports.items()})
            # the figure: the chosen configuration's seed of best validation log-likelihood
            best_seed = max(seeds, key=lambda s: reports[s]["validation"]["log_likelihood"])
            figure_seed = best_seed if config == chosen else figure_seed
            per_seed = []
            for seed in seeds:
                run_dir = Path(args.mnist_runs) / mnist_run_name(setting, config, seed)
                model = load_mnist_run(run_dir, device)
                recorded = reports[seed]["validation"]["log_likelihood"]
                reloaded = mnist_scores(model, val, device)["log_likelihood"]
                if not math.isclose(reloaded, recorded, rel_tol=1e-5, abs_tol=1e-3):
                    raise SystemExit(
                        f"{run_dir}/best.pt: validation ll {reloaded}, the run recorded "
                        f"{recorded}: not the checkpoint it scored"
                    )
                scores = mnist_scores(model, test, device)
                per_seed.append(
                    {
                        "seed": seed,
                        "best_step": reports[seed]["best_step"],
                        "validation_log_likelihood": recorded,
                        "validation_log_likelihood_reloaded": reloaded,
                        **scores,
                    }
                )
                if config == chosen and seed == figure_seed:
                    figure_model = model
                print(f"  mnist {setting} {config} seed {seed}: test {headline} "
                      f"{scores[headline]:.4f}", flush=True)  # fmt: skip
            name = f"VMoNF ({config})" + (
                ", chosen on validation" if config == chosen else ", the paper's random start"
            )
            rows[name] = {
                "configuration": config,
                "seeds": seeds,
                "parameters": reports[seeds[0]]["parameters"],
                "accuracy_metric": headline,
                "accuracy": summary([s[headline] for s in per_seed]),
                "test_log_likelihood": summary([s["log_likelihood"] for s in per_seed]),
                "exact_posterior_accuracy": summary(
                    [s[f"exact_posterior_{headline}"] for s in per_seed]
                ),
                "nmi": summary([s["nmi"] for s in per_seed]),
                "per_seed": per_seed,
            }
            if setting == "semi100":  # recorded: the same clusters under the best matching
                rows[name]["matched_accuracy"] = summary([s["accuracy"] for s in per_seed])
        rows.update(mnist_baselines(args, setting, data, seeds))
        print_rows(f"MNIST 0-4, {setting} ({headline})", rows)
        result[setting] = {"selected": chosen, "accuracy_metric": headline, "test": rows}
        shares = contingency_table(figure_model.cluster(test.data.to(device)).cpu(), test.labels,
                                   normalize="class", num_clusters=5)  # fmt: skip
        print("  component \\ digit " + " ".join(f"{d:>6}" for d in MNIST_DIGITS))
        for k, share in enumerate(shares.tolist()):
            print(f"  {k:>17} " + " ".join(f"{v:6.3f}" for v in share))
        result[setting]["figure"] = {"configuration": chosen, "seed": figure_seed,
                                     "test_digit_shares": shares.tolist()}  # fmt: skip
        if args.figures:  # samples per component of the chosen seed of best validation ll
            from pyro_manifold.datasets import inverse_logit_transform

            torch.manual_seed(0)
            x, k = figure_model.sample(20 if args.smoke else 400)
            images = inverse_logit_transform(x.cpu(), alpha=1e-6).clamp(0, 1)
            tag = "unsupervised" if setting == "unsupervised" else "semi"
            figure = figure_path(args, f"vmonf_mnist_{tag}")
            mnist_component_grid(images, k.cpu(), figure)
            result[setting]["figure"]["path"] = str(figure)
    if mnist_shared(runs) != selection["shared_settings"]:
        raise SystemExit(f"the runs' settings differ from the selection's ({path})")
    result["run_provenance"] = {name: run["provenance"] for name, run in runs.items()}
    return result


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
    p.add_argument(
        "--mnist-stage",
        choices=["train", "select", "test"],
        help="with --part mnist: one train job, the selection on validation, or the test "
        "(the queue benchmarks/vmonf_mnist.sh runs them in order)",
    )
    p.add_argument("--mnist-setting", choices=list(MNIST_CONFIGS), default="unsupervised")
    p.add_argument(
        "--mnist-config",
        choices=sorted({c for configs in MNIST_CONFIGS.values() for c in configs}),
        default="paper",
    )
    p.add_argument("--mnist-seed", type=int, default=0, help="seed of a train job")
    p.add_argument("--mnist-seeds", type=int, nargs="+", default=[0, 1, 2], help="test stage")
    p.add_argument("--resume", action="store_true", help="train job: continue its checkpoint")
    p.add_argument("--mnist-runs", default=None, help="checkpoints (default runs/vmonf_mnist)")
    p.add_argument(
        "--mnist-results",
        default=None,
        help="JSONs: DIR/vmonf_mnist_runs/RUN.json, DIR/vmonf_mnist_selection.json, "
        "DIR/vmonf_mnist_test.json (default benchmarks/results)",
    )
    p.add_argument("--mnist-layers", type=int, default=1, help="MAF layers per component")
    p.add_argument("--mnist-hidden", type=int, default=1024)
    p.add_argument("--mnist-steps", type=int, default=6000)
    p.add_argument("--mnist-lr", type=float, default=3e-4)
    p.add_argument("--mnist-validate-every", type=int, default=500)
    p.add_argument(
        "--mnist-encoder-steps",
        type=int,
        default=1000,
        help="kmeans_encoder: steps of fit_encoder on the k-means partition",
    )
    p.add_argument("--figures", default=None, help="folder for the figures (none without it)")
    p.add_argument(
        "--tag",
        default="",
        help="suffix of the figure names: vmonf_PART[_SETTING]_TAG.png (the JSON is --out)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="JSON file (default benchmarks/results/vmonf_PART.json; runs/smoke/ with --smoke; "
        "--part mnist writes under --mnist-results)",
    )
    p.add_argument("--smoke", action="store_true", help="a few steps of each part")
    args = p.parse_args()
    if args.smoke:
        args.seeds, args.steps, args.timing_steps, args.mnist_steps = [0, 1], 20, 3, 4
        args.validate_every, args.mnist_validate_every = 10, 4  # one validation, one checkpoint
        args.timing_rounds = 1
        args.mnist_hidden, args.mnist_encoder_steps = 800, 5  # MADE widths >= 784
    if args.part == "mnist":
        if args.mnist_stage is None or args.out is not None:
            p.error("--part mnist needs --mnist-stage and writes under --mnist-results, not --out")
        smoke = "runs/smoke" if args.smoke else None
        args.mnist_runs = args.mnist_runs or f"{smoke or 'runs'}/vmonf_mnist"
        args.mnist_results = args.mnist_results or smoke or "benchmarks/results"
        stage_out = {
            "train": mnist_run_json(args, args.mnist_setting, args.mnist_config, args.mnist_seed),
            "select": Path(args.mnist_results) / "vmonf_mnist_selection.json",
            "test": Path(args.mnist_results) / "vmonf_mnist_test.json",
        }
        args.out = str(stage_out[args.mnist_stage])
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    parts = ["pinwheel", "circles", "timing"] if args.part == "all" else [args.part]
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
