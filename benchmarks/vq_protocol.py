"""VQ-Flows against plain flows on MNIST under issue 21's protocol: select on validation, test once.

Protocol (issue 21; fixed before any run under it):

* Data: dequantized logit-space MNIST (lambda = 1e-6, dequantization noise of seed 0, as
  in ``vq_flows.py --part mnist``). Training: the 50,000 images of
  ``load_mnist(split="train")``; validation: the 10,000 of ``split="validation"`` (the rest
  of the official training set, disjoint); test: the 10,000 official test images, read only
  by ``--stage test``.
* Models (the reduced CPU protocol of RESULTS.md, issue 5): 3 flow layers, each starting
  near the identity. VQ-RealNVP: ``VQFlow`` with conditional affine-coupling chart flows
  of two hidden layers of 512; VQ-MAF: conditional MADE chart flows of one hidden layer of
  1024; both K = 10 charts, chart dimension d = 784 (conformal embeddings), code dimension
  16, autoencoder hidden 512, m = 1, epsilon = 0.1.
* Configurations tried (``CONFIGURATIONS``; listed in every JSON): the VQ commitment
  weight beta in {0.25, 1.0} for each VQ family. These are the two values sessions 4-8
  compared; beta = 1.0 had been adopted after reading the atlas's class purity on the test
  images' labels (``vq_atlas_purity.py``), so this protocol makes that choice again, on
  validation. The plain flows have one configuration each (they have no beta).
* Baselines, same budget: a plain RealNVP and a plain MAF of the VQ model's depth whose
  hidden width is the narrowest giving at least as many parameters as the whole VQ model
  of its family (autoencoder, chart-placement network and chart weights included):
  RealNVP [w, w], MAF [w] (``matched_width``). Both stages of a VQ model count as steps:
  the VQ models take ``atlas_steps`` = 2000 atlas steps (lr 1e-3) then ``chart_steps`` =
  10,000 chart-flow steps (lr 3e-4), the plain flows 12,000 steps (lr 3e-4); Adam, batch
  128, constant learning rates. 12,000 steps are 30.7 epochs of the 50,000 images (the
  MAF baseline of issue 2 trains 30 epochs; the earlier VQ runs stopped after 3000).
* Seeds 0, 1, 2 for every candidate and every baseline: initialisation, data order and
  training randomness (``fit``'s seed).
* Validation metric: the Fréchet distance in the features of the package's MNIST
  classifier (not FID) between 1000 samples (the paper's sampler: every draw
  x = g_k(z) is kept) and the 10,000 validation images, at total steps 4000, 8000 and
  12,000 (the curve); the selection reads the end of training. Samples are drawn on a
  forked random stream with a fixed seed, so evaluating changes no training step.
* Rule (``choose``): for each VQ family, the beta with the lowest mean over the three
  seeds of the validation Fréchet distance at the end of training; ties go to the smaller
  beta. The plain flows are not chosen among (one configuration each).
* Test, once per final configuration, after ``vq_protocol_selection.json`` is written:
  ``--stage test`` loads the final weights of the chosen VQ configuration of each family
  and of its plain flow, seeds 0, 1, 2, draws 1000 samples each (a fixed sampling seed
  per training seed, not the validation one) and scores them against the 10,000 test
  images; for VQ models also the sampler that keeps only draws inside their chart's region
  (a second figure, not the claim). Claim (issue 5): in each family the VQ version's mean
  test Fréchet distance is lower than the plain flow's. Mean ± std and per seed.
* CPU budget (one thread per job; per-step times measured on this 2-core machine under
  a load of about 10 runnable processes, divided by 3 as RealNVP's time under that load
  compares with RESULTS.md's): VQ-RealNVP about 0.5 h, VQ-MAF about 2.5 h, RealNVP
  (matched) about 0.3 h, MAF (matched) about 1.3 h per job (MAF sampling, 784 sequential
  passes, costs about 10 minutes per evaluation). A full VQ-MAF job measured 1.5 s per
  chart-flow step over its first 500 steps and 1.1 s over the next 500 (resumed) next to
  4-5 busy processes, so next to other jobs allow up to twice. Candidates: 6 VQ-RealNVP
  + 6 VQ-MAF jobs, about 18 CPU hours; baselines: 6 jobs, about 5; the test stage about
  1.5 hours. About 12 hours of wall time with two workers. Each VQ-MAF job holds about
  2.3 GB of memory and leaves about 0.3 GB of checkpoints in its run folder.

Stages (``benchmarks/vq_protocol.sh`` is the queue):

1. ``bash benchmarks/vq_protocol.sh train`` (run it twice, side by side: each worker
   takes the next job no worker holds): the 12 candidates, then the 6 baselines; each job
   is ``--stage train`` with one thread, checkpointed every 500 steps under
   ``runs/vq_protocol/NAME_seedS`` and resumed from there (``--resume``) after an
   interruption; it writes ``benchmarks/results/vq_protocol_runs/NAME_seedS.json``
   (validation figures only) when it is done, and a job whose JSON exists is skipped;
2. ``python benchmarks/vq_protocol.py --stage select`` writes
   ``benchmarks/results/vq_protocol_selection.json``;
3. ``python benchmarks/vq_protocol.py --stage test`` writes
   ``benchmarks/results/vq_protocol_test.json`` and the figure
   ``benchmarks/figures/vq_protocol_mnist.png`` (validation curves across training, mean
   ± std over seeds, and the test figures at the end).

Every JSON records the command, the commit and the machine. Needs ``PYRO_MANIFOLD_DATA``.

Smoke: python benchmarks/vq_protocol.py --smoke --stage train --kind vq_realnvp
       --commitment 1 --seed 0 --runs DIR --results DIR  (then --stage select / test with
       --smoke, --seeds and --families): 512 training, 256 validation and 256 test images,
       one flow layer, a few steps, 64 samples, an untrained classifier; numbers mean
       nothing. ``VQ_PROTOCOL_ARGS=--smoke`` passes it to the queue.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
from provenance import provenance  # benchmarks/ is the script's directory
from vq_atlas_purity import purity

from pyro_manifold.datasets import dequantize_logit, inverse_logit_transform, load_mnist
from pyro_manifold.infer import fit, load_checkpoint, resolve_device, save_checkpoint
from pyro_manifold.metrics import load_mnist_classifier, mnist_frechet_distance
from pyro_manifold.models import Flow, VQFlow
from pyro_manifold.nn import MNISTClassifier, scale_output_layer

LAMBDA = 1e-6
FAMILIES = ("realnvp", "maf")
COMMITMENTS = (0.25, 1.0)
SEEDS = (0, 1, 2)
CONFIGURATIONS = {
    family: [f"vq_{family}_beta{beta:g}" for beta in COMMITMENTS] + [f"{family}_matched"]
    for family in FAMILIES
}
RULE = (
    "per VQ family, the commitment beta with the lowest mean over seeds 0, 1, 2 of the "
    "validation Fréchet distance (1000 samples against the 10,000 validation images) at "
    "the end of training; ties to the smaller beta"
)
PROTOCOL = {
    "layers": 3,
    "realnvp_hidden": [512, 512],
    "maf_hidden": [1024],
    "charts": 10,
    "code_dim": 16,
    "autoencoder_hidden": [512],
    "num_reflections": None,  # VQFlow's default, min(d, D - 1, 64)
    "atlas_steps": 2000,
    "chart_steps": 10000,
    "eval_every": 4000,  # total steps (atlas steps included)
    "batch_size": 128,
    "atlas_lr": 1e-3,
    "lr": 3e-4,
    "checkpoint_every": 500,
    "frechet_samples": 1000,
    "train_images": None,  # all
    "validation_images": None,
    "test_images": None,
    "set_stage_images": 5000,  # chart weights p_k from the first training images
}
SMOKE = {
    **PROTOCOL,
    "layers": 1,
    "realnvp_hidden": [64],
    "maf_hidden": [800],  # MADE: at least 784 units connect every input
    "autoencoder_hidden": [64],
    "num_reflections": 8,
    "atlas_steps": 2,
    "chart_steps": 4,
    "eval_every": 3,
    "batch_size": 32,
    "checkpoint_every": 2,
    "frechet_samples": 64,
    "train_images": 512,
    "validation_images": 256,
    "test_images": 256,
    "set_stage_images": 512,
}
VALIDATION_SAMPLE_SEED = 10_000  # + the total step of the evaluation
IN_REGIONS_SAMPLE_SEED = 20_000  # + the training seed (validation, end of training)
TEST_SAMPLE_SEED = 30_000  # + the training seed; the in-regions test draw adds 1000


def settings_of(smoke):
    return SMOKE if smoke else PROTOCOL


def run_name(kind, commitment=None):
    """``vq_maf_beta1``, ``vq_realnvp_beta0.25``; a plain flow is ``maf_matched``."""
    return f"{kind}_beta{commitment:g}" if kind.startswith("vq_") else f"{kind}_matched"


def count(module):
    return sum(p.numel() for p in module.parameters())


def build(kind, settings, commitment=None, width=None):
    """A model of the protocol: ``vq_realnvp``/``vq_maf`` (with ``commitment``) or a plain
    ``realnvp``/``maf`` of hidden width ``width``; every flow layer starts near the identity."""
    family = kind.removeprefix("vq_")
    if kind.startswith("vq_"):
        return VQFlow(
            784, num_charts=settings["charts"], code_dim=settings["code_dim"],
            commitment=commitment, flow=family, num_layers=settings["layers"],
            hidden_dims=settings[f"{family}_hidden"],
            autoencoder_hidden_dims=settings["autoencoder_hidden"],
            num_reflections=settings["num_reflections"],
        )  # fmt: skip
    hidden = [width, width] if family == "realnvp" else [width]
    model = Flow(784, family, num_layers=settings["layers"], hidden_dims=hidden)
    for layer in model.layers:  # MAF layers name their network `arn`, as Pyro's do
        scale_output_layer(layer.arn if family == "maf" else layer.nn)
    return model


def matched_width(family, settings):
    """(width, VQ parameters): the narrowest plain flow with at least the VQ model's count.

    The VQ model's count does not depend on the commitment weight. Models are built on a
    forked random stream, so the caller's initialisation is unchanged.
    """
    with torch.random.fork_rng(devices=[]):
        target = count(build(f"vq_{family}", settings, commitment=COMMITMENTS[0]))

        def enough(w):
            return count(build(family, settings, width=w)) >= target

        low = settings[f"{family}_hidden"][0]  # never narrower than the chart flows
        high = low
        while not enough(high):
            low, high = high + 1, 2 * high
        while low < high:  # the narrowest width in [low, high] with enough parameters
            mid = (low + high) // 2
            low, high = (low, mid) if enough(mid) else (mid + 1, high)
    return high, target


def choose(validation):
    """The protocol's rule: ``{family: beta}`` from ``{family: {beta: [end Fréchet per seed]}}``.

    Lowest mean over seeds; ties go to the smaller beta. Every beta must have the same
    number of seeds (at least one).

    Example:
        >>> choose({"maf": {0.25: [430.0, 350.0, 500.0], 1.0: [320.0, 360.0, 315.0]}})
        {'maf': 1.0}
    """
    chosen = {}
    for family, by_beta in validation.items():
        counts = {len(values) for values in by_beta.values()}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"{family}: expected the same seeds for every beta, got {by_beta}")
        chosen[family] = min(sorted(by_beta), key=lambda b: statistics.fmean(by_beta[b]))
    return chosen


def summary(values):
    values = [float(v) for v in values]
    return {
        "per_seed": values,
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def write_json(path, report):
    """Write ``report`` atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- data
def images(split, settings):
    """(pixels uint8, labels) of a split, cut to the smoke size."""
    data = load_mnist(split=split)
    n = settings[f"{split}_images"]
    return (data.data, data.labels) if n is None else (data.data[:n], data.labels[:n])


def classifier_for(smoke, device):
    """The package's MNIST classifier; with ``smoke`` an untrained one (never cached)."""
    if not smoke:
        return load_mnist_classifier(train_if_missing=True, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MNISTClassifier().to(device).eval()


@torch.no_grad()
def score(model, reference, classifier, n, seed, within_regions=False):
    """Fréchet distance of ``n`` samples drawn on a forked stream seeded with ``seed``.

    Returns ``{"frechet", "nonfinite_fraction"}`` and, for a VQ model drawing every
    sample, ``"acceptance"`` (the share of draws inside their chart's region).
    """
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        result = {}
        if isinstance(model, VQFlow) and not within_regions:
            mixture = model.distribution()
            x, k = mixture.sample_with_charts((n,))
            kept = mixture.region_mask(x)[torch.arange(n, device=x.device), k]
            result["acceptance"] = float(kept.double().mean())
        elif isinstance(model, VQFlow):
            x = model.sample(n, within_regions=True)
        else:
            x = model.sample(n)
    pixels = inverse_logit_transform(x, alpha=LAMBDA)
    finite = torch.isfinite(pixels).all(-1)
    result["nonfinite_fraction"] = float(1 - finite.double().mean())
    pixels = pixels.nan_to_num(0.0).clamp(0, 1).cpu()
    result["frechet"] = mnist_frechet_distance(pixels, reference, classifier)
    return result


# ----------------------------------------------------------------------------- stage train
def eval_steps(settings, vq):
    """Total steps at which the curve is evaluated (a VQ model only after its atlas)."""
    total = settings["atlas_steps"] + settings["chart_steps"]
    steps = list(range(settings["eval_every"], total, settings["eval_every"])) + [total]
    return [t for t in steps if not vq or t > settings["atlas_steps"]]


def train(args):
    settings = settings_of(args.smoke)
    vq = args.kind.startswith("vq_")
    if vq != (args.commitment is not None):
        raise SystemExit("--commitment: needed by the VQ kinds, not allowed for plain flows")
    name = f"{run_name(args.kind, args.commitment)}_seed{args.seed}"
    run_dir, out = Path(args.runs) / name, Path(args.results) / f"{name}.json"
    if out.exists():
        raise SystemExit(f"{out}: exists, the job is done")
    if run_dir.exists() and any(run_dir.iterdir()) and not args.resume:
        raise SystemExit(f"{run_dir}: holds a started run; pass --resume to continue it")
    device = resolve_device(args.device)
    family = args.kind.removeprefix("vq_")
    width, vq_parameters = (None, None) if vq else matched_width(family, settings)

    # training and validation images only: this stage never reads the test split
    train_pixels, _ = images("train", settings)
    val_pixels, val_labels = images("validation", settings)
    x_train = dequantize_logit(train_pixels, 0, alpha=LAMBDA)[0]
    reference = val_pixels.float() / 255
    classifier = classifier_for(args.smoke, device)

    pyro.set_rng_seed(args.seed)
    model = build(args.kind, settings, args.commitment, width)
    progress_path = run_dir / "progress.json"
    progress = (
        json.loads(progress_path.read_text())
        if progress_path.exists()
        else {"curve": [], "seconds": 0.0, "sessions": 0}
    )
    progress["sessions"] += 1
    seconds_before, start = progress["seconds"], time.perf_counter()

    def save_progress():
        progress["seconds"] = seconds_before + time.perf_counter() - start
        write_json(progress_path, progress)

    def interrupt(step):  # --interrupt-at: a simulated interruption (tests of --resume)
        if args.interrupt_at is not None and step >= args.interrupt_at:
            save_progress()
            print(f"interrupted after step {step} (--interrupt-at)", flush=True)
            sys.exit(3)

    common = dict(batch_size=settings["batch_size"], device=device, progress=False,
                  seed=args.seed, checkpoint_every=settings["checkpoint_every"])  # fmt: skip

    def run(stage_dir, num_steps, lr):
        checkpoint = run_dir / stage_dir / "checkpoint.pt"
        fit(model.model, model.guide, x_train, num_steps=num_steps, lr=lr,
            run_dir=run_dir / stage_dir, resume=checkpoint if checkpoint.exists() else None,
            **common)  # fmt: skip

    report = {"stage": "train", "split": "validation", "name": name, "kind": args.kind,
              "family": family, "commitment": args.commitment, "seed": args.seed,
              "settings": settings, "parameters": count(model)}  # fmt: skip
    offset = 0
    if vq:
        run("atlas", settings["atlas_steps"], settings["atlas_lr"])
        interrupt(settings["atlas_steps"])
        model.set_stage("flows", x_train[: settings["set_stage_images"]].to(device))
        offset = settings["atlas_steps"]
        with torch.no_grad():  # how the atlas shares out the images, and its class purity
            codes = torch.cat([model.autoencoder.assign(c.to(device)).cpu()
                               for c in x_train[:20000].split(5000)])  # fmt: skip
            x_val = dequantize_logit(val_pixels, 1, alpha=LAMBDA)[0]
            val_codes = torch.cat([model.autoencoder.assign(c.to(device)).cpu()
                                   for c in x_val.split(5000)])  # fmt: skip
        shares = torch.bincount(codes, minlength=settings["charts"]) / len(codes)
        report["atlas_chart_shares"] = shares.tolist()
        # a diagnostic on the validation labels: recorded, chooses nothing
        report["atlas_validation_purity"] = purity(val_codes, val_labels, settings["charts"])
    else:
        report.update(width=width, vq_parameters=vq_parameters)
    done = {point["step"] for point in progress["curve"]}
    for step in eval_steps(settings, vq):
        if step in done:
            continue
        run("flows" if vq else "flow", step - offset, settings["lr"])
        interrupt(step)
        point = score(model, reference, classifier, settings["frechet_samples"],
                      VALIDATION_SAMPLE_SEED + step)  # fmt: skip
        progress["curve"].append({"step": step, **point})
        save_progress()
        print(f"{name} step {step}: validation " + json.dumps(point), flush=True)
        model.train()
    if vq:  # the sampler within the chart regions, on validation, at the end
        report["validation_in_regions"] = score(
            model, reference, classifier, settings["frechet_samples"],
            IN_REGIONS_SAMPLE_SEED + args.seed, within_regions=True,
        )  # fmt: skip
    save_checkpoint({"model": model.state_dict(), "step": eval_steps(settings, vq)[-1]},
                    run_dir / "model.pt")  # fmt: skip
    save_progress()
    report.update(
        budget={
            "total_steps": settings["atlas_steps"] + settings["chart_steps"],
            "atlas_steps": settings["atlas_steps"] if vq else 0,
            "flow_steps": settings["chart_steps"] + (0 if vq else settings["atlas_steps"]),
            "batch_size": settings["batch_size"],
            "epochs": (settings["atlas_steps"] + settings["chart_steps"])
            * settings["batch_size"]
            / len(x_train),
        },
        curve=progress["curve"],
        validation_frechet_end=progress["curve"][-1]["frechet"],
        train_seconds=progress["seconds"],  # up to the last saved evaluation of each session
        sessions=progress["sessions"],
        run_dir=str(run_dir),
        args=vars(args),
        **provenance(),
    )
    write_json(out, report)
    print(f"{name}: done, validation Fréchet {report['validation_frechet_end']:.2f} ({out})")


# ----------------------------------------------------------------------------- stage select
def read_runs(args, names):
    """The run JSONs of ``names`` x ``--seeds``; stops naming every one that is missing."""
    paths = {(n, s): Path(args.results) / f"{n}_seed{s}.json" for n in names for s in args.seeds}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise SystemExit("missing (train them with vq_protocol.sh train): " + ", ".join(missing))
    runs = {key: json.loads(p.read_text()) for key, p in paths.items()}
    settings = settings_of(args.smoke)
    for (n, s), run in runs.items():
        if run["settings"] != json.loads(json.dumps(settings)):
            raise SystemExit(f"{n} seed {s}: trained with other settings than this stage's")
    return runs


def select(args):
    names = [f"vq_{f}_beta{b:g}" for f in args.families for b in COMMITMENTS]
    runs = read_runs(args, names)
    validation = {
        f: {b: [runs[f"vq_{f}_beta{b:g}", s]["validation_frechet_end"] for s in args.seeds]
            for b in COMMITMENTS}
        for f in args.families
    }  # fmt: skip
    chosen = choose(validation)
    return {
        "stage": "select",
        "split": "validation",
        "rule": RULE,
        "configurations_tried": {f: CONFIGURATIONS[f] for f in args.families},
        "num_configurations": {f: len(CONFIGURATIONS[f]) for f in args.families},
        "seeds": list(args.seeds),
        "validation": {
            f"vq_{f}_beta{b:g}": summary(values)
            for f, by_beta in validation.items()
            for b, values in by_beta.items()
        },
        "chosen": {f: f"vq_{f}_beta{b:g}" for f, b in chosen.items()},
        "chosen_commitment": chosen,
        "settings": settings_of(args.smoke),
    }


# ----------------------------------------------------------------------------- stage test
def load_model(run, device):
    """The final weights of a finished run (its JSON names the run folder and settings)."""
    model = build(run["kind"], run["settings"], run["commitment"], run.get("width"))
    if isinstance(model, VQFlow):
        model.set_stage("flows")
    state = load_checkpoint(Path(run["run_dir"]) / "model.pt")
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def test(args):
    selection = json.loads(Path(args.selection).read_text())
    if selection["seeds"] != list(args.seeds) or set(selection["chosen"]) != set(args.families):
        raise SystemExit(f"{args.selection}: made for other seeds or families than --seeds, "
                         "--families")  # fmt: skip
    settings = settings_of(args.smoke)
    device = resolve_device(args.device)
    names = [selection["chosen"][f] for f in args.families]
    runs = read_runs(args, names + [f"{f}_matched" for f in args.families])
    test_pixels, _ = images("test", settings)  # the test split: read here only
    reference = test_pixels.float() / 255
    classifier = classifier_for(args.smoke, device)
    n = settings["frechet_samples"]
    families = {}
    for family in args.families:
        chosen, plain = selection["chosen"][family], f"{family}_matched"
        rows = {}
        for name in (chosen, plain):
            rows[name] = []
            for seed in args.seeds:
                run = runs[name, seed]
                model = load_model(run, device)
                sample_seed = TEST_SAMPLE_SEED + seed
                row = {"seed": seed, "parameters": run["parameters"],
                       **score(model, reference, classifier, n, sample_seed)}  # fmt: skip
                if isinstance(model, VQFlow):
                    row["in_regions"] = score(model, reference, classifier, n,
                                              sample_seed + 1000, within_regions=True)  # fmt: skip
                rows[name].append(row)
                print(f"{name} seed {seed}: test {json.dumps(row)}", flush=True)
        vq_values = [r["frechet"] for r in rows[chosen]]
        plain_values = [r["frechet"] for r in rows[plain]]
        families[family] = {
            "chosen": chosen,
            "baseline": plain,
            "parameters": {
                chosen: runs[chosen, args.seeds[0]]["parameters"],
                plain: runs[plain, args.seeds[0]]["parameters"],
            },  # fmt: skip
            "width": runs[plain, args.seeds[0]]["width"],
            "test_frechet": {chosen: summary(vq_values), plain: summary(plain_values)},
            "test_frechet_in_regions": summary([r["in_regions"]["frechet"] for r in rows[chosen]]),
            "per_seed": rows,
            "claim_met": statistics.fmean(vq_values) < statistics.fmean(plain_values),
            "vq_lower_seeds": sum(a < b for a, b in zip(vq_values, plain_values, strict=True)),
            "num_configurations": len(selection["configurations_tried"][family]),
        }
    print("\n| family | model | parameters | seeds | test Fréchet (mean ± std) | per seed |")
    print("|---|---|---|---|---|---|")
    for family, r in families.items():
        for name, s in r["test_frechet"].items():
            per_seed = ", ".join(f"{v:.1f}" for v in s["per_seed"])
            print(f"| {family} | {name} | {r['parameters'][name]:,} | {len(s['per_seed'])} | "
                  f"{s['mean']:.1f} ± {s['std']:.1f} | {per_seed} |")  # fmt: skip
    if args.figures:
        figure(families, runs, args, Path(args.figures) / "vq_protocol_mnist.png")
    return {
        "stage": "test",
        "split": "test",
        "claim": "per family, the chosen VQ model's mean test Fréchet distance is lower "
        "than the plain flow's (same steps, at least as many parameters)",
        "seeds": list(args.seeds),
        "families": families,
        "configurations_tried": selection["configurations_tried"],
        "selection_commit": selection.get("commit"),
        "settings": settings,
    }


def figure(families, runs, args, path):
    """Validation curves (mean ± std over seeds) and the test figures at the end."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    for i, (family, r) in enumerate(families.items()):
        ax = fig.add_subplot(1, len(families), i + 1)
        for j, name in enumerate((r["chosen"], r["baseline"])):
            curves = [runs[name, s]["curve"] for s in args.seeds]
            steps = [p["step"] for p in curves[0]]
            values = [[c[k]["frechet"] for c in curves] for k in range(len(steps))]
            mean = [statistics.fmean(v) for v in values]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            color = f"C{3 if j == 0 else 7}"
            ax.errorbar(steps, mean, yerr=std, color=color, capsize=3,
                        linestyle="-" if j == 0 else "--", label=f"{name}, validation")  # fmt: skip
            test_figure = r["test_frechet"][name]
            ax.errorbar([steps[-1] * 1.02], [test_figure["mean"]], yerr=[test_figure["std"]],
                        color=color, marker="x", capsize=3, linestyle="none",
                        label=f"{name}, test (end)")  # fmt: skip
        ax.set_title(f"{family}: {len(args.seeds)} seeds")
        ax.set_xlabel("total training steps (atlas steps included)")
        ax.set_ylabel("Fréchet distance (classifier features)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    print(f"figure: {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["train", "select", "test"], required=True)
    p.add_argument("--kind", choices=["realnvp", "maf", "vq_realnvp", "vq_maf"])
    p.add_argument("--commitment", type=float, default=None, choices=COMMITMENTS,
                   help="the VQ commitment weight beta (VQ kinds only)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue a started run")
    p.add_argument("--interrupt-at", type=int, default=None,
                   help="stop after the chunk reaching this total step (tests)")  # fmt: skip
    p.add_argument("--runs", default="runs/vq_protocol", help="folder of the run folders")
    p.add_argument("--results", default="benchmarks/results/vq_protocol_runs",
                   help="folder of the finished runs' JSONs")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--selection", default="benchmarks/results/vq_protocol_selection.json")
    p.add_argument("--figures", default="benchmarks/figures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="select/test: default benchmarks/results/"
                   "vq_protocol_{selection,test}.json (runs/smoke/ with --smoke)")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny sizes, an untrained classifier")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage == "train":
        if args.kind is None:
            p.error("--stage train needs --kind")
        train(args)
        return
    folder = "runs/smoke" if args.smoke else "benchmarks/results"
    out = (
        args.out or f"{folder}/vq_protocol_{'selection' if args.stage == 'select' else 'test'}.json"
    )
    report = select(args) if args.stage == "select" else test(args)
    report.update(args=vars(args), **provenance())
    write_json(out, report)
    print(json.dumps(report.get("chosen") or {f: r["claim_met"]
                     for f, r in report["families"].items()}))  # fmt: skip


if __name__ == "__main__":
    main()
