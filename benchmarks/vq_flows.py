"""VQ-Flows against plain flows: 3D toy manifolds and MNIST (Sidheekh, Dock et al. 2022).

Parts (``--part``, default ``toy``; ``all`` runs every part):

* ``toy``: the four toy manifolds of ``pyro_manifold.datasets`` (sphere with a non-uniform
  density, torus, Swiss roll, linked rings): ``--train`` training points on the manifold
  plus isotropic noise ``--noise`` (seed 0), ``--test`` validation points (seed 2) and
  ``--test`` test points (seed 1). VQ-RealNVP (``VQFlow``: stage 1 the VQ autoencoder for
  ``--steps`` steps, stage 2 the chart flows for ``2 * --steps``) against RealNVP whose
  width is the smallest giving at least as many parameters as every VQ configuration tried,
  trained for ``3 * --steps`` steps (the same total). Protocol (issue 21; fixed before any
  run under it):

  - Configurations tried (``configurations_tried`` in the JSON): VQ-RealNVP with K in
    {8, 4} charts x region margin epsilon in {0.2, 0.1} (``TOY_VQ_CONFIGS``; session 1 ran
    K = 8, epsilon = 0.2 without a validation split); RealNVP with 8 or 4 couplings
    (``TOY_NF_LAYERS``). Fixed: VQ chart flows of 4 conditional couplings with one hidden
    layer of 32, autoencoder hidden 64, code dimension 3, m = 1; Adam, batch 256 (VQ: lr
    3e-3 for the atlas, then 1e-3 with a cosine decay; RealNVP: 1e-3 cosine).
  - Seeds 0, 1, 2 (``--seeds``) for every configuration: initialisation, data order and
    training randomness (``fit``'s seed).
  - Selection, per manifold and family, on validation only: the lowest mean over seeds of
    MMD² (multi-bandwidth Gaussian kernel, unbiased) between 2000 samples and the
    validation points (``lowest_mean``). The distance to the true manifold chooses
    nothing.
  - Test, once, after the choice: the test points are drawn only then; the chosen VQ and
    RealNVP configurations, every seed, 2000 fresh samples each: MMD² to the test points
    and the mean Euclidean distance of the samples to the true manifold (lower is better
    for both). Claim (issue 5): on every manifold the VQ version has the lower mean of
    both. Mean ± std and per seed; the JSON records the command, commit and machine.
  - Each training is a job: its weights, training time and commit are saved to
    ``--toy-runs DIR/MANIFOLD_CONFIG_seedS.pt`` when it ends; run again with ``--resume``
    and the finished jobs are loaded instead of trained (refused if the file was trained
    with other ``--train``/``--test``/``--noise``/``--steps``), so the 72 trainings may
    span several sessions. The JSON lists the commits that trained its jobs.
  - Cost: 6 configurations x 3 seeds x 4 manifolds = 72 trainings on one CPU thread. On
    the Swiss roll, seed 0, next to about 6 busy processes on 2 cores: VQ K = 8 146 s,
    K = 4 75 s, RealNVP(8) 129 s, RealNVP(4) 49 s, so about 10 minutes per manifold and
    seed and about 2 hours in all (about 1 hour on a quiet core: session 7 timed 35-70 s
    per model).

  ``--figures DIR`` saves ``vq_flows_toy.png``: rows of test points, RealNVP samples,
  VQ-RealNVP samples and the learned chart regions on the training data (the chosen
  configurations, seed 0).
* ``mnist`` (the runs of sessions 4-8, made before issue 21's protocol; the MNIST claim
  under the protocol is ``benchmarks/vq_protocol.py``): dequantized logit-space MNIST;
  RealNVP vs VQ-RealNVP and MAF vs VQ-MAF (d = 784), Fréchet distance in the features of
  the package's MNIST classifier (not FID) between 5000 samples and the test images,
  every ``--eval-every`` steps, over ``--seeds`` seeds. Needs ``PYRO_MANIFOLD_DATA`` and a
  GPU for the full protocol.
* ``dimension``: VQ-RealNVP on MNIST with chart dimension d < 784 (``--latent-dims``),
  through the conformal embeddings: Fréchet distance and the pixel-space reconstruction
  error of test images (projection onto the charts) against d. A report for issue 5's
  item 3, with no bar to meet: it chooses nothing and compares with no baseline.

Run (CPU):   OMP_NUM_THREADS=1 python benchmarks/vq_flows.py --part toy --device cpu --threads 1
                 --figures benchmarks/figures --resume
             (writes benchmarks/results/vq_flows_toy.json; interrupted, the same command
             goes on from the finished jobs under runs/vq_flows_toy)
GPU:         PYRO_MANIFOLD_DATA=../shared/data python benchmarks/vq_flows.py --part mnist
             PYRO_MANIFOLD_DATA=../shared/data python benchmarks/vq_flows.py --part dimension
Smoke:       python benchmarks/vq_flows.py --part all --smoke --device cpu
             (tiny sizes, one evaluation, an untrained classifier (never trained or cached
             here); without MNIST data the MNIST parts run on random images; the numbers
             only exercise the code; written to runs/smoke/vq_flows.json unless --out)
Results are printed as Markdown tables and written to ``--out`` (JSON).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyro
import torch
from provenance import provenance  # benchmarks/ is the script's directory

from pyro_manifold.datasets import (
    dequantize_logit,
    inverse_logit_transform,
    load_mnist,
    logit_transform,
    make_manifold,
)
from pyro_manifold.infer import fit, resolve_device
from pyro_manifold.metrics import (
    load_mnist_classifier,
    maximum_mean_discrepancy,
    mean_manifold_distance,
    mnist_frechet_distance,
)
from pyro_manifold.models import Flow, VQFlow
from pyro_manifold.nn import MNISTClassifier, scale_output_layer

MANIFOLDS = ("sphere", "torus", "swiss_roll", "linked_rings")
MNIST_KINDS = ("realnvp", "vq_realnvp", "maf", "vq_maf")
IN_REGIONS = "_in_regions"  # suffix of the VQ curves sampled within the chart regions
DEFAULT_COMMITMENT = 0.25  # VQ commitment weight on MNIST unless --commitment says otherwise
LAMBDA = 1e-6


def count(module):
    return sum(p.numel() for p in module.parameters())


def mean_std(values):
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def fmt(stat, spec=".4f"):
    return f"{stat['mean']:{spec}} ± {stat['std']:{spec}}"


# ----------------------------------------------------------------------------- toy manifolds
TOY_PROTOCOL = (
    "per manifold and model family, the configuration with the lowest mean over seeds of "
    "the validation MMD² (2000 samples against the 2000 validation points, seed 2); the "
    "test points (seed 1) are drawn and scored once, for the chosen configurations, after "
    "the choice; every configuration has the same seeds and the same total steps"
)
# VQ-RealNVP configurations: K charts and region margin epsilon. Session 1 ran K = 8,
# epsilon = 0.2 (VQFlow's default epsilon is 0.1) with no validation split; both are
# chosen again here, on validation.
TOY_VQ_CONFIGS = {
    "K8_eps0.2": {"num_charts": 8, "epsilon": 0.2},
    "K8_eps0.1": {"num_charts": 8, "epsilon": 0.1},
    "K4_eps0.2": {"num_charts": 4, "epsilon": 0.2},
    "K4_eps0.1": {"num_charts": 4, "epsilon": 0.1},
}
TOY_NF_LAYERS = (8, 4)  # RealNVP depths; session 1 ran 8
TOY_VALIDATION_SEED, TOY_TEST_SEED = 2, 1  # of the points; the training points are seed 0
TOY_SAMPLE_SEED = {"validation": 100, "test": 200}  # + the training seed


def lowest_mean(scores):
    """The name whose list of per-seed scores has the lowest mean (ties: the first listed).

    The selection rule of both protocols here (lower is better: MMD², Fréchet distance).

    Example:
        >>> lowest_mean({"a": [3.0, 1.0], "b": [2.0, 1.0], "c": [1.5, 1.5]})
        'b'
    """
    if not scores or any(not values for values in scores.values()):
        raise ValueError(f"scores: expected a non-empty list per name, got {scores}")
    means = {name: statistics.fmean(values) for name, values in scores.items()}
    return min(means, key=lambda name: (means[name], list(means).index(name)))


def matched_realnvp(num_params, layers=8):
    width = 4
    while True:
        flow = Flow(3, "realnvp", num_layers=layers, hidden_dims=[width, width])
        if count(flow) >= num_params:
            return flow
        width += 1


def toy_vq(config):
    """The toy VQ-RealNVP of configuration ``config`` (a key of ``TOY_VQ_CONFIGS``)."""
    return VQFlow(
        3, flow="realnvp", num_layers=4, hidden_dims=[32], autoencoder_hidden_dims=[64],
        num_overlap=1, **TOY_VQ_CONFIGS[config],
    )  # fmt: skip


def toy_nf(layers, num_params):
    """RealNVP of ``layers`` couplings, the narrowest [w, w] with at least ``num_params``."""
    return matched_realnvp(num_params, layers)


def curve_label(kind, commitment):
    """The key of a curve: VQ kinds trained with a non-default commitment β get ``_beta<β>``.

    ``curve_label("vq_maf_in_regions", 1.0)`` is ``"vq_maf_beta1_in_regions"``; plain flows
    and the default β keep their kind.
    """
    if not kind.startswith("vq_") or commitment == DEFAULT_COMMITMENT or "_beta" in kind:
        return kind
    regions = IN_REGIONS if kind.endswith(IN_REGIONS) else ""
    return f"{kind.removesuffix(IN_REGIONS)}_beta{commitment:g}{regions}"


def train_vq(model, data, steps, device, batch_size=256, seed=0):
    """Stage 1 (atlas) ``steps`` steps, stage 2 (chart flows) ``2 * steps``: 3 x steps in all."""
    common = dict(batch_size=batch_size, device=device, progress=False, seed=seed)
    fit(model.model, model.guide, data, num_steps=steps, lr=3e-3, **common)
    model.set_stage("flows", data.to(device))
    fit(
        model.model, model.guide, data, num_steps=2 * steps, lr=1e-3, lr_schedule="cosine", **common
    )
    model.eval()
    return model


def train_toy_nf(model, data, steps, device, seed=0):
    """The plain flow's budget: ``3 * steps`` steps, the VQ model's two stages together."""
    fit(
        model.model, model.guide, data, num_steps=3 * steps, batch_size=256, lr=1e-3,
        lr_schedule="cosine", device=device, progress=False, seed=seed,
    )  # fmt: skip
    model.eval()
    return model


def toy_samples(model, n, seed):
    """``n`` samples drawn on a forked random stream seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return model.sample(n).cpu()


TOY_JOB_SETTINGS = ("train", "test", "noise", "steps")  # what a saved toy job depends on


def toy_job(args, name, config, seed, train, vq_params, device):
    """One toy training: ``(model, seconds, commit, loaded)``.

    With ``--resume`` a finished job (``--toy-runs``/NAME_CONFIG_seedS.pt) is loaded
    instead of trained; a job is saved, atomically, as soon as it has trained.
    """
    vq = config in TOY_VQ_CONFIGS
    model = toy_vq(config) if vq else toy_nf(int(config.removeprefix("realnvp")), vq_params)
    path = Path(args.toy_runs) / f"{name}_{config}_seed{seed}.pt"
    settings = {**{k: getattr(args, k) for k in TOY_JOB_SETTINGS}, "vq_params": vq_params}
    if args.resume and path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: say which, and what to do
            raise SystemExit(f"{path}: unreadable ({type(e).__name__}: {e}); remove it "
                             "to train that job again") from None  # fmt: skip
        if not isinstance(saved, dict) or saved.get("settings") != settings:
            got = saved.get("settings") if isinstance(saved, dict) else type(saved).__name__
            raise SystemExit(f"{path}: trained with {got}, this run asks for {settings}; "
                             "remove the file or run without --resume")  # fmt: skip
        if vq:
            model.set_stage("flows", train)  # a trained VQ model's structure, then its weights
        model.load_state_dict(saved["state_dict"])
        return model.to(device).eval(), saved["seconds"], saved["commit"], True
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    if vq:
        model = train_vq(model, train, args.steps, device, seed=seed)
    else:
        model = train_toy_nf(model, train, args.steps, device, seed)
    seconds, commit = time.perf_counter() - t0, provenance()["commit"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        torch.save({"settings": settings, "state_dict": model.state_dict(), "seconds": seconds,
                    "commit": commit}, f)  # fmt: skip
    os.replace(tmp, path)
    return model, seconds, commit, False


def toy_part(args, device):
    """Train every configuration with every seed, choose on validation, then test once."""
    seeds = list(range(args.seeds))
    vq_configs = list(TOY_VQ_CONFIGS)[:1] if args.smoke else list(TOY_VQ_CONFIGS)
    nf_configs = [f"realnvp{layers}" for layers in TOY_NF_LAYERS]
    vq_params = max(count(toy_vq(c)) for c in vq_configs)  # baselines: at least every VQ
    results = {
        "protocol": TOY_PROTOCOL,
        "configurations_tried": {"vq_realnvp": vq_configs, "realnvp": nf_configs},
        "num_configurations": len(vq_configs) + len(nf_configs),
        "seeds": seeds,
        "budget": {
            "steps_total": 3 * args.steps,
            "vq_atlas_steps": args.steps,
            "vq_chart_steps": 2 * args.steps,
            "batch_size": 256,
        },  # fmt: skip
    }
    figure_rows, job_commits, jobs_loaded = [], set(), 0
    for name in args.manifolds:
        manifold = make_manifold(name)
        train = manifold.sample(args.train, noise=args.noise, seed=0).data
        validation = manifold.sample(args.test, noise=args.noise, seed=TOY_VALIDATION_SEED).data
        models, scores, seconds, params = {}, {}, {}, {}
        for config in vq_configs + nf_configs:
            for seed in seeds:
                model, took, commit, loaded = toy_job(
                    args, name, config, seed, train, vq_params, device
                )
                job_commits.add(commit)
                jobs_loaded += loaded
                seconds.setdefault(config, []).append(took)
                params[config] = count(model)
                models[config, seed] = model
                sample = toy_samples(model, len(validation), TOY_SAMPLE_SEED["validation"] + seed)
                scores.setdefault(config, []).append(
                    float(maximum_mean_discrepancy(sample, validation))
                )
                print(f"{name} {config} seed {seed}: validation MMD² {scores[config][-1]:.2e} "
                      f"({took:.0f} s{', loaded' if loaded else ''})", flush=True)  # fmt: skip
        selected = {
            "vq_realnvp": lowest_mean({c: scores[c] for c in vq_configs}),
            "realnvp": lowest_mean({c: scores[c] for c in nf_configs}),
        }
        # the choice is made: only now are the test points drawn and scored, once
        test = manifold.sample(args.test, noise=args.noise, seed=TOY_TEST_SEED).data
        tested, samples0 = {}, {}
        for family, config in selected.items():
            mmd2, distance = [], []
            for seed in seeds:
                sample = toy_samples(
                    models[config, seed], len(test), TOY_SAMPLE_SEED["test"] + seed
                )
                mmd2.append(float(maximum_mean_discrepancy(sample, test)))
                distance.append(mean_manifold_distance(sample, manifold.distance))
                if seed == seeds[0]:
                    samples0[family] = sample
            tested[family] = {"configuration": config, "parameters": params[config],
                              "mmd2": mean_std(mmd2), "distance": mean_std(distance)}  # fmt: skip
        vq, nf = tested["vq_realnvp"], tested["realnvp"]
        results[name] = {
            "parameters": params,
            "validation": {c: {"mmd2": mean_std(v)} for c, v in scores.items()},
            "train_seconds": {c: mean_std(v) for c, v in seconds.items()},
            "selected": selected,
            "test": tested,
            "claim_met": {m: vq[m]["mean"] < nf[m]["mean"] for m in ("mmd2", "distance")},
            "vq_wins_per_seed": {
                m: sum(a < b for a, b in zip(vq[m]["values"], nf[m]["values"], strict=True))
                for m in ("mmd2", "distance")
            },
        }
        with torch.no_grad():
            chart = models[selected["vq_realnvp"], seeds[0]].autoencoder.assign(train.to(device))
        figure_rows.append((name, test, samples0["realnvp"], samples0["vq_realnvp"], train,
                            chart.cpu()))  # fmt: skip
    print("\n| manifold | model (chosen on validation) | parameters | test MMD² | "
          "test distance to the manifold |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name in args.manifolds:
        for family, r in results[name]["test"].items():
            print(
                f"| {name} | {family} ({r['configuration']}) | {r['parameters']} | "
                f"{fmt(r['mmd2'], '.2e')} | {fmt(r['distance'])} |"
            )
    if args.figures:
        toy_figure(figure_rows, Path(args.figures) / "vq_flows_toy.png")
    results["jobs"] = {"folder": args.toy_runs, "loaded": jobs_loaded,
                       "commits": sorted(job_commits)}  # fmt: skip
    return results


def toy_figure(rows, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4 * len(rows)))
    titles = ("test points", "RealNVP", "VQ-RealNVP", "chart regions")
    for i, (name, test, nf, vq, train, chart) in enumerate(rows):
        for j, points in enumerate((test, nf, vq, train)):
            ax = fig.add_subplot(len(rows), 4, 4 * i + j + 1, projection="3d")
            p = points[:2000]
            color = chart[:2000].numpy() if j == 3 else "C0"
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1, c=color, cmap="tab10" if j == 3 else None)
            ax.set_title(f"{name}: {titles[j]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    print(f"figure: {path}")


# ----------------------------------------------------------------------------- MNIST
def mnist_data(args, device):
    """Logit-space training images, test images in [0, 1], the classifier; or stand-ins."""
    if os.environ.get("PYRO_MANIFOLD_DATA"):
        pixels = load_mnist(split="train").data
        test = load_mnist(split="test").data.float() / 255
        if args.smoke:  # never trains (or caches) the classifier: its numbers mean nothing
            pixels, test = pixels[:512], test[:256]
            classifier = MNISTClassifier().to(device)
        else:
            classifier = load_mnist_classifier(train_if_missing=True, device=device)
    else:
        if not args.smoke:
            raise SystemExit("the MNIST parts need PYRO_MANIFOLD_DATA (or --smoke)")
        g = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (512, 784), generator=g, dtype=torch.uint8)
        test = torch.rand(256, 784, generator=g)
        classifier = MNISTClassifier().to(device)
    train = dequantize_logit(pixels, 0, alpha=LAMBDA)[0]
    return train, test, classifier


def mnist_model(kind, args, latent_dim=784):
    """The four MNIST models; every flow layer starts near the identity (as VQFlow's do)."""
    flow = kind.removeprefix("vq_")
    if flow == "maf":
        hidden = args.maf_hidden  # MADE: widths >= 784 connect every input
    else:
        hidden = [64] if args.smoke else args.realnvp_hidden
    layers = 1 if args.smoke else args.mnist_layers
    if kind.startswith("vq_"):
        return VQFlow(
            784, num_charts=args.mnist_charts, latent_dim=latent_dim, code_dim=args.code_dim,
            commitment=args.commitment, flow=flow,
            num_layers=layers, hidden_dims=hidden if latent_dim >= 100 else [4 * latent_dim],
            autoencoder_hidden_dims=[64] if args.smoke else [512],
            num_reflections=8 if args.smoke else None,
        )  # fmt: skip
    model = Flow(784, flow, num_layers=layers, hidden_dims=hidden)
    for layer in model.layers:  # MAF layers name their network `arn`, as Pyro's do
        scale_output_layer(layer.arn if flow == "maf" else layer.nn)
    return model


def frechet_of(model, test, classifier, num_samples, draws=None, within_regions=False):
    """Fréchet distance of ``num_samples`` samples (or of the logit-space ``draws``)."""
    model.eval()
    with torch.no_grad():
        if draws is None:
            options = {"within_regions": True} if within_regions else {}
            draws = model.sample(num_samples, **options)
        images = inverse_logit_transform(draws, alpha=LAMBDA)
    return mnist_frechet_distance(images.nan_to_num(0.0).clamp(0, 1), test, classifier)


def vq_scores(model, test, classifier, num_samples):
    """Fréchet distance with every draw and with the draws inside their regions; acceptance.

    The first draw uses the random stream exactly as ``model.sample`` does; the rejection
    sampler runs on a forked stream, so training continues as without it.
    """
    model.eval()
    with torch.no_grad():
        mixture = model.distribution()
        x, k = mixture.sample_with_charts((num_samples,))
        kept = mixture.region_mask(x)[torch.arange(num_samples, device=x.device), k]
    plain = frechet_of(model, test, classifier, num_samples, draws=x)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        within = frechet_of(model, test, classifier, num_samples, within_regions=True)
    return plain, within, float(kept.double().mean())


def train_with_curve(model, train, args, device, evaluate, lr):
    """Train in chunks of ``--eval-every`` steps (resuming the optimiser state) and evaluate.

    ``evaluate()`` returns a number or a tuple of numbers; the curve holds
    ``(step, *numbers)``.
    """
    curve = []
    with tempfile.TemporaryDirectory() as run_dir:
        checkpoint = Path(run_dir) / "checkpoint.pt"
        for step in range(args.eval_every, args.mnist_steps + 1, args.eval_every):
            fit(
                model.model, model.guide, train, num_steps=step, batch_size=args.batch_size, lr=lr,
                device=device, run_dir=run_dir, checkpoint_every=args.eval_every,
                resume=checkpoint if checkpoint.exists() else None, progress=False,
            )  # fmt: skip
            scores = evaluate()
            curve.append((step, *(scores if isinstance(scores, tuple) else (scores,))))
            print(f"  step {step}: " + ", ".join(f"{v:.3f}" for v in curve[-1][1:]), flush=True)
            model.train()
    return curve


def mnist_part(args, device):
    train, test, classifier = mnist_data(args, device)
    n_samples = 64 if args.smoke else args.frechet_samples
    seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    curves, atlas, acceptance = {}, {}, {}
    for kind in args.kinds:
        label = curve_label(kind, args.commitment)
        curves[label] = {}
        for seed in seeds:
            pyro.set_rng_seed(seed)
            model = mnist_model(kind, args)
            print(f"{kind} seed {seed} ({count(model)} parameters)", flush=True)
            start = time.perf_counter()
            if isinstance(model, VQFlow):
                fit(
                    model.model, model.guide, train, num_steps=args.atlas_steps,
                    batch_size=args.batch_size, lr=1e-3, device=device, progress=False,
                )  # fmt: skip
                model.set_stage("flows", train[:5000].to(device))
                with torch.no_grad():  # how the atlas shares out the images (dead codes)
                    codes = torch.cat([model.autoencoder.assign(c.to(device)).cpu()
                                       for c in train[:20000].split(5000)])  # fmt: skip
                share = torch.bincount(codes, minlength=args.mnist_charts) / len(codes)
                atlas.setdefault(label, {})[str(seed)] = share.tolist()
                print(f"  charts in use: {int((share > 0).sum())} of {len(share)}, "
                      f"largest share {float(share.max()):.2f}", flush=True)  # fmt: skip
            score = vq_scores if isinstance(model, VQFlow) else frechet_of
            curve = train_with_curve(
                model,
                train,
                args,
                device,
                lambda model=model, score=score: score(model, test, classifier, n_samples),
                lr=args.mnist_lr,
            )
            if args.save_models:
                path = Path(args.save_models) / f"{label}_seed{seed}.pt"
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), path)
            curves[label][str(seed)] = [point[:2] for point in curve]
            if isinstance(model, VQFlow):  # the sampler that rejects draws outside U_k
                within = curves.setdefault(f"{label}{IN_REGIONS}", {})
                within[str(seed)] = [(point[0], point[2]) for point in curve]
                kept = acceptance.setdefault(label, {})
                kept[str(seed)] = [(point[0], point[3]) for point in curve]
            print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    return {
        **summarize_mnist(curves, args.figures),
        "atlas_chart_shares": atlas,
        "acceptance": acceptance,
    }


def summarize_mnist(curves, figures=None):
    """Mean ± std over seeds at every evaluation step; table; figure across training."""
    results = {"curves": curves}
    for kind, per_seed in curves.items():
        runs = list(per_seed.values())
        steps = [step for step, _ in runs[0]]
        results[kind] = {
            "steps": steps,
            "seeds": list(per_seed),
            "frechet": [mean_std([run[i][1] for run in runs]) for i in range(len(steps))],
        }
    print("\n| model | seeds | Fréchet distance at the end (mean ± std over seeds) |")
    print("|---|---|---|")
    for kind in curves:
        r = results[kind]
        print(f"| {kind} | {len(r['seeds'])} | {fmt(r['frechet'][-1], '.2f')} |")
    if figures:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 4))
        panels = {"realnvp": fig.add_subplot(1, 2, 1), "maf": fig.add_subplot(1, 2, 2)}
        for kind in curves:
            r = results[kind]
            mu = [f["mean"] for f in r["frechet"]]
            sd = [f["std"] for f in r["frechet"]]
            # one panel per flow family; plain grey dashed, VQ solid (a colour per β),
            # VQ sampled within the chart regions dotted
            style = ":" if kind.endswith(IN_REGIONS) else "-" if kind.startswith("vq_") else "--"
            color = "C7" if not kind.startswith("vq_") else "C3" if "_beta" in kind else "C0"
            ax = panels["realnvp" if "realnvp" in kind else "maf"]
            ax.errorbar(
                r["steps"], mu, yerr=sd, label=f"{kind} ({len(r['seeds'])} seeds)",
                capsize=3, linestyle=style, color=color,
            )  # fmt: skip
        for family, ax in panels.items():
            ax.set_title(family)
            ax.set_xlabel("training step")
            ax.set_ylabel("Fréchet distance (classifier features)")
            ax.set_yscale("log")
            if ax.lines:
                ax.legend(fontsize=8)
        path = Path(figures) / "vq_flows_mnist.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path)
    return results


def merge_mnist(paths, figures=None):
    """Combine the ``mnist`` results of several output files (e.g. one process per seed).

    Each file's curves and in-region shares (``acceptance``: per seed, the share of the draws
    inside their chart's region at each evaluation step) are filed under
    ``curve_label(kind, commitment)``, the commitment β read from the file's config (the
    default where it records none). A file that ran at β = 1 and named its curves by kind
    alone (``vq_maf``) therefore lands under ``vq_maf_beta1``, apart from β = 0.25.
    """
    curves, acceptance = {}, {}
    for path in paths:
        run = json.loads(Path(path).read_text())
        commitment = run.get("config", {}).get("commitment", DEFAULT_COMMITMENT)
        for kind, per_seed in run["mnist"]["curves"].items():
            curves.setdefault(curve_label(kind, commitment), {}).update(per_seed)
        for kind, per_seed in run["mnist"].get("acceptance", {}).items():
            acceptance.setdefault(curve_label(kind, commitment), {}).update(per_seed)
    return {**summarize_mnist(curves, figures), "acceptance": acceptance}


def dimension_part(args, device):
    train, test, classifier = mnist_data(args, device)
    n_samples = 64 if args.smoke else args.frechet_samples
    test_logit = logit_transform(test.clamp(1 / 512, 1 - 1 / 512), alpha=LAMBDA)[0]
    results = {}
    for d in args.latent_dims:
        pyro.set_rng_seed(0)
        model = mnist_model("vq_realnvp", args, latent_dim=d)
        common = dict(batch_size=args.batch_size, device=device, progress=False)
        fit(model.model, model.guide, train, num_steps=args.atlas_steps, lr=1e-3, **common)
        model.set_stage("flows", train[:5000].to(device))
        fit(model.model, model.guide, train, num_steps=args.mnist_steps, lr=args.mnist_lr, **common)
        model.eval()
        with torch.no_grad():
            x = test_logit[:1000].to(device)
            recon = inverse_logit_transform(model.reconstruct(x), alpha=LAMBDA).cpu()
            mse = float((recon - test[:1000]).pow(2).mean())
        results[d] = {
            "frechet": frechet_of(model, test, classifier, n_samples),
            "reconstruction_mse": mse,
        }
        print(f"d = {d}: {results[d]}", flush=True)
    print("\n| d | Fréchet distance | reconstruction MSE (pixels) |")
    print("|---|---|---|")
    for d, r in results.items():
        print(f"| {d} | {r['frechet']:.2f} | {r['reconstruction_mse']:.4f} |")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="toy", choices=["toy", "mnist", "dimension", "all"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--manifolds", nargs="+", default=list(MANIFOLDS), choices=MANIFOLDS)
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--num-charts", type=int, default=8)
    parser.add_argument("--mnist-charts", type=int, default=10)
    parser.add_argument("--code-dim", type=int, default=16, help="VQ code size on MNIST")
    parser.add_argument(
        "--commitment", type=float, default=DEFAULT_COMMITMENT, help="VQ commitment on MNIST"
    )
    parser.add_argument("--mnist-steps", type=int, default=20000)
    parser.add_argument("--atlas-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--kinds", nargs="+", default=list(MNIST_KINDS), choices=MNIST_KINDS)
    parser.add_argument("--seed-list", type=int, nargs="+", default=None, help="overrides --seeds")
    parser.add_argument("--mnist-layers", type=int, default=5)
    parser.add_argument("--realnvp-hidden", type=int, nargs="+", default=[1024, 1024])
    parser.add_argument("--maf-hidden", type=int, nargs="+", default=[1024])
    parser.add_argument("--mnist-lr", type=float, default=1e-4)
    parser.add_argument("--frechet-samples", type=int, default=5000)
    parser.add_argument("--merge", nargs="+", default=None, help="combine mnist output files")
    parser.add_argument("--figures", default=None)
    parser.add_argument("--save-models", default=None, help="directory for the trained weights")
    parser.add_argument("--toy-runs", default=None, help="toy jobs' folder (runs/vq_flows_toy)")
    parser.add_argument("--resume", action="store_true", help="load the finished toy jobs")
    parser.add_argument(
        "--out",
        default=None,
        help="default benchmarks/results/vq_flows_PART.json (--smoke: runs/smoke/vq_flows.json)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.seeds, args.train, args.test, args.steps = 1, 300, 200, 10
        args.manifolds = args.manifolds[:2]
        args.mnist_steps, args.atlas_steps, args.eval_every = 4, 2, 4
        args.batch_size, args.latent_dims, args.maf_hidden = 32, [8, 16], [800]
    default = (
        "runs/smoke/vq_flows.json"
        if args.smoke
        else f"benchmarks/results/vq_flows_{args.part}.json"
    )
    args.out = args.out or default
    args.toy_runs = args.toy_runs or f"runs/{'smoke/' if args.smoke else ''}vq_flows_toy"
    if args.merge:
        results = {"merged": args.merge, "mnist": merge_mnist(args.merge, args.figures)}
        Path(args.out).write_text(json.dumps(results, indent=1))
        return
    device = resolve_device(args.device)
    print(f"device: {device}")
    parts = ["toy", "mnist", "dimension"] if args.part == "all" else [args.part]
    results = {"config": vars(args), "device": str(device), **provenance()}
    for part in parts:
        results[part] = {"toy": toy_part, "mnist": mnist_part, "dimension": dimension_part}[part](
            args, device
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
