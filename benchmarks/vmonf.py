"""Variational mixture of normalizing flows (VMoNF): clustering, likelihood and speed.

Parts (``--part``, default ``pinwheel``; ``all`` runs every part that can run here):

* ``pinwheel``: the paper's 5-wing pinwheel, 2560 training points (seed 0), 512 validation
  points (seed 2) for early stopping, 2560 test points (seed 1). Each configuration is
  trained with several seeds; we report the clustering accuracy of argmax q(k|x) against
  the generating wing (best matching) on the test points, and the test log-likelihood
  (nats per point, exact log-sum-exp over the components). Configurations: ``paper``
  (random start, uniform pi, constant T = 1), ``paper+anneal`` (T decays exponentially
  from 5 to 1), ``kmeans`` (component base distributions centred on k-means clusters,
  ``initialize_components``), k-means alone as a reference clustering, and single
  RealNVP flows with 4 and with 8 layers whose width is chosen so that each has at least
  as many parameters as the whole mixture (flows + encoder). Every model is trained for
  ``--steps`` Adam steps (batch 256) and keeps the parameters of its best validation loss.
* ``circles``: two circles, unsupervised and semi-supervised with 64 labels (32 per
  circle); accuracy of argmax q(k|x) on test points.
* ``timing``: seconds per training step (TraceEnum_ELBO, Adam) of the batched mixture with
  K = 1 and K = 10 components of the same architecture, on the chosen device.
* ``mnist``: digits 0-4, MAF components (needs ``PYRO_MANIFOLD_DATA``; slow on a CPU).

Run (CPU):  nice -n 10 python benchmarks/vmonf.py --part pinwheel --device cpu --threads 1
            python benchmarks/vmonf.py --part circles --device cpu --threads 1
            python benchmarks/vmonf.py --part timing --device cpu --threads 1
            (on a GPU also: --part timing --timing-flow maf --timing-dim 784
             --timing-hidden 1024 --timing-layers 5 --timing-batch 128)
Smoke:      python benchmarks/vmonf.py --part all --smoke --device cpu
Results are printed as Markdown tables and written to ``--out`` (JSON); ``--figures DIR``
also saves the pinwheel figure (samples coloured by component over the q(k|x) regions).
"""

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from pyro.infer import TraceEnum_ELBO

from pyro_manifold.datasets import pinwheel, two_circles
from pyro_manifold.infer import fit, resolve_device
from pyro_manifold.metrics import clustering_accuracy, contingency_table
from pyro_manifold.models import Flow, VariationalMixtureOfFlows
from pyro_manifold.nn import scale_output_layer


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


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# -- pinwheel ---------------------------------------------------------------------------
def build_vmonf(args, config, x_train):
    anneal = config == "paper+anneal"
    model = VariationalMixtureOfFlows(
        2,
        5,
        "realnvp",
        num_layers=args.layers,
        hidden_dims=[args.hidden, args.hidden],
        encoder_hidden_dims=[64, 64],
        initial_temperature=5.0 if anneal else 1.0,
        temperature_decay=math.exp(math.log(0.01) / args.steps) if anneal else 1.0,
    )
    if config == "kmeans":
        model.initialize_components(x_train, seed=0)
    return model


def run_pinwheel(args, device):
    train = pinwheel(2560, seed=0)
    val = pinwheel(512, seed=2)
    test = pinwheel(2560, seed=1)
    x_test = test.data.to(device)
    rows, models = {}, {}
    reference = build_vmonf(args, "kmeans", train.data)  # k-means alone, as a reference
    kmeans_acc = clustering_accuracy(
        torch.cdist(test.data, reference.base_loc).argmin(1), test.labels
    )
    flows = {f"flow ({n} layers)": n for n in args.flow_layers}
    for config in ["paper", "paper+anneal", "kmeans", *flows]:
        accs, lls, secs, params, extra = [], [], [], 0, {}
        for seed in args.seeds:
            torch.manual_seed(seed)
            if config in flows:
                ref = build_vmonf(args, "paper", train.data)
                model, width = matched_flow(count(ref), flows[config])
                loss = None
                extra = {"hidden_width": width, "num_layers": flows[config]}
            else:
                model = build_vmonf(args, config, train.data)
                loss = elbo()
            params = count(model)
            t0 = time.perf_counter()
            fit(
                model.model,
                model.guide,
                train.data,
                loss=loss,
                num_steps=args.steps,
                batch_size=256,
                lr=args.lr,
                validation_data=val.data,
                validate_every=250,
                device=device,
                seed=seed,
                progress=False,
            )
            secs.append(time.perf_counter() - t0)
            with torch.no_grad():
                lls.append(model.log_prob(x_test).mean().item())
                if config not in flows:
                    accs.append(clustering_accuracy(model.cluster(x_test).cpu(), test.labels))
            models.setdefault(config, []).append((lls[-1], model))
            print(
                f"  {config} seed {seed}: acc {accs[-1] if accs else float('nan'):.3f} "
                f"test ll {lls[-1]:.4f} ({secs[-1]:.0f} s)",
                flush=True,
            )
        rows[config] = {
            "parameters": params,
            "accuracy": accs,
            "test_log_likelihood": lls,
            "seconds": secs,
            **extra,
        }
    rows["kmeans_alone"] = {"accuracy": [kmeans_acc]}
    print("\n| pinwheel (5 wings) | parameters | accuracy (mean ± sd) | test log-lik (mean ± sd) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        acc = "n/a" if not r["accuracy"] else "{:.3f} ± {:.3f}".format(*mean_std(r["accuracy"]))
        ll = (
            "{:.4f} ± {:.4f}".format(*mean_std(r["test_log_likelihood"]))
            if "test_log_likelihood" in r
            else "n/a"
        )
        print(f"| {name} | {r.get('parameters', '-')} | {acc} | {ll} |")
    if args.figures:
        best = max(models["kmeans"], key=lambda t: t[0])[1]
        plot_regions(best, test.data, Path(args.figures) / "vmonf_pinwheel.png")
        best_table = contingency_table(best.cluster(x_test).cpu(), test.labels)
        rows["kmeans"]["contingency_table_best"] = best_table.tolist()
    return rows


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
    train = two_circles(2048, noise=0.05, factor=0.5, seed=0)
    test = two_circles(1024, noise=0.05, factor=0.5, seed=1)
    labels = torch.full_like(train.labels, -1)
    for c in (0, 1):
        idx = (train.labels == c).nonzero()[:32, 0]
        labels[idx] = c
    rows = {}
    for name, y in (("unsupervised", None), ("semi-supervised (64 labels)", labels)):
        accs = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = VariationalMixtureOfFlows(
                2,
                2,
                "realnvp",
                num_layers=args.layers,
                hidden_dims=[args.hidden, args.hidden],
                label_weight=args.label_weight or 0.05 * train.data.shape[0],
            )
            data = train.data if y is None else (train.data, y)
            fit(
                model.model,
                model.guide,
                data,
                loss=elbo(),
                num_steps=args.steps,
                batch_size=256,
                lr=args.lr,
                device=device,
                seed=seed,
                progress=False,
            )
            with torch.no_grad():
                accs.append(
                    clustering_accuracy(model.cluster(test.data.to(device)).cpu(), test.labels)
                )
            print(f"  circles {name} seed {seed}: acc {accs[-1]:.3f}", flush=True)
        rows[name] = {"accuracy": accs}
    print("\n| two circles | accuracy (mean ± sd) |\n|---|---|")
    for name, r in rows.items():
        print("| {} | {:.3f} ± {:.3f} |".format(name, *mean_std(r["accuracy"])))
    return rows


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
            tag = "unsupervised" if y is None else "semi"
            mnist_component_grid(images, k.cpu(), Path(args.figures) / f"vmonf_mnist_{tag}.png")
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-3)
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
    p.add_argument("--figures", default=None)
    p.add_argument(
        "--out",
        default=None,
        help="JSON file (default benchmarks/results/vmonf_PART.json; runs/smoke/ with --smoke)",
    )
    p.add_argument("--smoke", action="store_true", help="a few steps of each part")
    args = p.parse_args()
    if args.smoke:
        args.seeds, args.steps, args.timing_steps, args.mnist_steps = [0], 20, 3, 5
        args.timing_rounds = 1
        args.mnist_hidden = 800
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    parts = ["pinwheel", "circles", "timing"] if args.part == "all" else [args.part]
    if args.part == "all" and os.environ.get("PYRO_MANIFOLD_DATA") and not args.smoke:
        parts.append("mnist")
    results = {"device": str(device), "args": vars(args)}
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
