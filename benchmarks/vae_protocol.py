"""The VAE claims of issue 6 under the protocol: recipe chosen on validation, test scored once.

Claims (issue 6): on dynamically binarized MNIST, the test negative log-likelihood by
the IWAE bound with 5000 samples is (1) at most 87.5 nats for the Gaussian encoder
(anchor: 86.76, Burda et al. 2016, one stochastic layer), (2) at least 1.0 nat lower
for the IAF encoder than for the Gaussian encoder, (3) lower for the PCP-Map encoder
than for the Gaussian encoder.

Protocol (issue 21; fixed before any run under it)
--------------------------------------------------

* **Data.** ``load_mnist``'s ``"train"`` split (50,000 images) is the only data
  trained on, binarized afresh at every step (dynamic binarization); its
  ``"validation"`` split (the other 10,000 official training images, as in
  ``mnist_flows.py``), binarized once (seed 0), is the only data any choice reads; the
  10,000 official test images, binarized once (seed 0, as in ``flow_vae_mnist.py``), are
  read by the ``test`` stage only, which refuses to run before the selection JSON exists
  and refuses a run it has already scored. (The earlier runs of ``flow_vae_mnist.py``
  trained on all 60,000 images and drew their curves on test images.)
* **Model, the same for every encoder.** Latent 50, tanh MLP encoder and decoder
  200-200, Bernoulli decoder whose output bias starts at the training pixels'
  log-odds; IAF: 2 layers (``FlowVAE``'s default MADE widths); PCP-Map: 2 layers.
* **Budget, the same for every encoder of a comparison.** Batch 100 (500 steps per
  epoch), Adam, learning rate 1e-3 with cosine decay over the run, the recipe's epochs
  and KL warm-up. Every run keeps the parameters of its best validation negative ELBO
  (one sample per image, all 10,000 validation images, every 5 epochs; ``fit``'s
  ``restore_best``, saved as ``best.pt``): the stopping epoch is chosen on validation.
* **Configurations tried** (``CANDIDATES``, the Gaussian encoder, seed 0): ``e500``
  (500 epochs, the first run's budget), ``e1200`` (1200 epochs, the budget raised
  after the first run missed on test) and ``e1200_w10`` (1200 epochs with a linear KL
  warm-up over the first 10% of the steps, an option of the script never compared
  before). Three configurations; the choice of the budget that was made by reading a
  test figure is made again here, on validation.
* **Validation metric.** Minus the mean IWAE bound with 500 samples
  (``VAL_IWAE_SAMPLES``) over the 10,000 validation images, of the best-validation
  parameters, in nats.
* **Rule** (``choose``). The candidate with the lowest validation NLL among those with
  a finite one; on a tie the earlier in ``CANDIDATES`` (the cheaper). The recipe is
  chosen on the baseline (the Gaussian encoder) and given unchanged to the flow
  encoders: nothing is tuned for the flows.
* **Final runs** (``final_runs``), seeds 0, 1, 2 each (seed 0 of the chosen Gaussian
  is the candidate run itself):
  - claims 1 and 2: Gaussian and IAF with the chosen recipe;
  - claim 3 on this CPU: PCP-Map with PICNN widths 64-64 (``pcp64``) and, as its
    baseline, the Gaussian encoder, both with the chosen recipe shortened to 300 epochs
    (``PCP_CPU_EPOCHS``; the warm-up keeps its share of the steps);
  - claim 3 at the full protocol, on a GPU only (``pcp``): PCP-Map with the default
    PICNN widths (200-200) and the chosen recipe, against the chosen Gaussian runs.
* **Test, once per final run**: the IWAE bound with 5000 samples on all 10,000 test
  images, in blocks of 500 images (a block's draws are seeded by its index, so an
  interrupted evaluation resumes to the same numbers). The report gives, per
  configuration, mean ± standard deviation over the seeds and the per-seed figures,
  and per claim the seed-paired differences (with their per-image standard errors). A
  claim is **met** when it holds for the means over the seeds; how many seeds meet it
  on their own is reported beside it.

Why PCP-Map is reduced on this CPU (issue 21 item 4). Costs on one CPU thread next to
other jobs, from RESULTS.md/LOG.md: Gaussian 6.8 ms per step (81 min for 1200 epochs
of 600 steps), IAF 11.2 ms (2 h 15 min), PCP-Map with PICNN 64-64 74 ms (89 min for 120
epochs; 52 ms alone) and with the default 200-200 131-138 ms alone. IWAE-5000: Gaussian
13-23 min and IAF 16-19 min on 10,000 images; PCP-Map 64-64 45 min on 2000 images,
so 3.8 h on 10,000 (1.36 s per image). With the default widths (whose IWAE-5000 on
10,000 images ``flow_vae_mnist.py`` estimates at 6e14 flops) each step is 2.6 times
slower, so a PCP-Map 200-200 evaluation would take about 10 h and a 1200-epoch training
22-30 h: over 100 CPU hours for three seeds. PCP-Map 64-64 at 300 epochs costs 3.1 h
of training and 3.8 h of test evaluation per seed (21 h for three seeds; 1200 epochs
would be 37 h of training). So on this CPU the PICNN is 64-64 (139,062 flow parameters
instead of 663,206) and the budget 300 epochs, against a Gaussian encoder given
the same 300 epochs; the test evaluation is not reduced (all 10,000 images, 5000
samples). ``DEVICE=cuda bash benchmarks/vae_protocol.sh gpu-pcp`` runs the full
protocol for PCP-Map on a GPU (about 2-4 h per seed at batch 100, a guess from the
H200 epoch times in RESULTS.md; more than a lent session's 15 minutes).

CPU hours per job (one thread, loaded machine; epochs of 500 steps), to plan the queue:

====================  ======================  ==========================================
job                   training (+ val IWAE)   test (IWAE-5000, 10,000 images)
====================  ======================  ==========================================
gaussian e500         0.5 h (+ 3 min)         0.2-0.4 h
gaussian e1200[_w10]  1.2 h (+ 3 min)         0.2-0.4 h
gaussian e300         0.3 h (+ 3 min)         0.2-0.4 h
iaf e1200             1.9 h (+ 3 min)         0.3 h
pcp64 e300            3.1 h (+ 23 min)        3.8 h
====================  ======================  ==========================================

Stages (``benchmarks/vae_protocol.sh`` runs them as a resumable queue):

1. ``--stage train --encoder E --recipe R --seed S``: one run (checkpoint every epoch,
   ``--resume``), validation figures in ``RESULTS/vae_protocol_runs/E_R_seedS.json``;
2. ``--stage select``: the rule on the three candidates,
   ``RESULTS/vae_protocol_selection.json`` and ``FIGURES/vae_protocol_candidates.png``;
3. ``--stage plan --which candidates|finals|gpu``: the jobs, one ``E R S`` a line;
4. ``--stage test --encoder E --recipe R --seed S``: one final run on the test images,
   ``RESULTS/vae_protocol_runs/E_R_seedS_test.json``;
5. ``--stage report``: ``RESULTS/vae_protocol_test.json``,
   ``FIGURES/vae_protocol_validation_curves.png`` and
   ``FIGURES/vae_protocol_samples_E_R.png`` (seed 0 of each final configuration).

Smoke (tiny data and sizes, seeds 0 and 1; numbers mean nothing):
    SMOKE=1 RESULTS=DIR/results FIGURES=DIR/figures RUNS=DIR/runs \
        bash benchmarks/vae_protocol.sh all
"""

import argparse
import json
import math
import re
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from flow_vae_mnist import binarize_batch, build  # noqa: E402  (benchmarks/ is on the path)
from provenance import provenance  # noqa: E402

CANDIDATES = ("e500", "e1200", "e1200_w10")  # cheapest first: ties go to the cheaper
SEEDS = (0, 1, 2)
SMOKE_SEEDS = (0, 1)
PCP_CPU_EPOCHS = 300
BAR_GAUSSIAN = 87.5  # claim 1, nats
IAF_MARGIN = 1.0  # claim 2, nats
TEST_IWAE_SAMPLES = 5000
VAL_IWAE_SAMPLES = 500
IWAE_BLOCK = 500  # images per resumable block
VAL_IWAE_SEED, TEST_IWAE_SEED = 12345, 1
# name -> (FlowVAE's encoder_flow, flow layer widths; None: FlowVAE's default)
ENCODERS = {
    "gaussian": (None, None),
    "iaf": ("iaf", None),
    "pcp64": ("pcp", [64, 64]),  # PICNN 64-64: the CPU's PCP-Map
    "pcp": ("pcp", None),  # PICNN 200-200 (FlowVAE's default): the GPU's
}
SHARED = {
    "latent": 50,
    "hidden": [200, 200],
    "activation": "tanh",
    "num_flows": 2,
    "batch_size": 100,
    "optimizer": "adam",
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "init_output_bias": True,
    "eval_every": 5,
}


def recipe(name: str) -> dict:
    """Epochs and KL warm-up of a recipe name ``e<epochs>[_w<percent of the steps>]``.

    Example:
        >>> recipe("e1200_w10")
        {'epochs': 1200, 'kl_warmup_fraction': 0.1}
        >>> recipe("e500")
        {'epochs': 500, 'kl_warmup_fraction': 0.0}
    """
    match = re.fullmatch(r"e([1-9]\d*)(?:_w(\d+))?", name)
    if match is None:
        raise ValueError(f"recipe: expected e<epochs>[_w<percent>], got {name!r}")
    return {"epochs": int(match[1]), "kl_warmup_fraction": int(match[2] or 0) / 100}


def with_epochs(name: str, epochs: int) -> str:
    """The same recipe with another number of epochs (the warm-up keeps its share).

    Example:
        >>> with_epochs("e1200_w10", 300), with_epochs("e500", 300)
        ('e300_w10', 'e300')
    """
    recipe(name)
    return re.sub(r"^e\d+", f"e{epochs}", name)


def choose(validation_nll: dict) -> str:
    """The protocol's rule: the lowest finite validation NLL; ties go to the earlier key.

    Example:
        >>> choose({"e500": 88.9, "e1200": 88.1, "e1200_w10": float("nan")})
        'e1200'
    """
    finite = [name for name, v in validation_nll.items() if math.isfinite(v)]
    if not finite:
        raise SystemExit("select: no candidate has a finite validation NLL")
    return min(finite, key=lambda name: (validation_nll[name], finite.index(name)))


def final_runs(chosen: str) -> dict:
    """The comparisons scored on the test images: name -> [(encoder, recipe), ...].

    Example:
        >>> final_runs("e1200")["pcp_cpu"]
        [['gaussian', 'e300'], ['pcp64', 'e300']]
    """
    reduced = with_epochs(chosen, min(PCP_CPU_EPOCHS, recipe(chosen)["epochs"]))
    return {
        "main": [["gaussian", chosen], ["iaf", chosen]],  # claims 1 and 2
        "pcp_cpu": [["gaussian", reduced], ["pcp64", reduced]],  # claim 3, reduced
        "pcp_gpu": [["gaussian", chosen], ["pcp", chosen]],  # claim 3, full (GPU)
    }


def job_name(encoder: str, recipe_name: str, seed: int) -> str:
    return f"{encoder}_{recipe_name}_seed{seed}"


# ------------------------------------------------------------------------------ helpers
def model_settings(encoder: str, smoke: bool) -> dict:
    """What ``flow_vae_mnist.build`` needs for this encoder (tiny under ``--smoke``)."""
    flow, flow_hidden = ENCODERS[encoder]
    settings = {k: SHARED[k] for k in ("latent", "hidden", "activation", "num_flows")}
    settings.update(encoder_flow=flow, flow_hidden=flow_hidden)
    if smoke:
        settings.update(latent=8, hidden=[64], flow_hidden=[16] * len(flow_hidden or [32]))
    return settings


def new_vae(settings: dict, warmup_steps: int = 0, pixel_mean=None):
    """A ``FlowVAE`` of these settings, with a KL warm-up of ``warmup_steps`` steps."""
    args = SimpleNamespace(**settings, kl_warmup_epochs=warmup_steps, init_output_bias=True)
    flow = settings["encoder_flow"]
    # build's warm-up is kl_warmup_epochs * steps_per_epoch: the steps, at 1 step per "epoch"
    return build(args, "gaussian" if flow is None else flow, 1, pixel_mean)


def load_vae(run_dir: Path, settings: dict):
    """The run's parameters of the best validation loss (``best.pt``), in eval mode."""
    from pyro_manifold.infer import load_checkpoint

    vae = new_vae(settings)
    vae.load_state_dict(load_checkpoint(run_dir / "best.pt")["modules"][0])
    return vae.eval()


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)


def iwae_in_blocks(
    vae,
    x,
    num_samples,
    partial: Path,
    seed: int,
    *,
    block=IWAE_BLOCK,
    chunk=100,
    batch=100,
    max_blocks=None,
):
    """Per-image IWAE bounds of ``x``, block by block, kept in ``partial`` as they come.

    Block ``b`` draws with ``torch.manual_seed(seed + b)``, so a call that resumes from
    ``partial`` returns what one uninterrupted call returns. ``max_blocks`` stops after
    that many new blocks (for tests); returns ``(bounds so far, complete?)``.
    """
    from pyro_manifold.metrics import iwae_log_likelihood

    key = {"num_samples": num_samples, "block": block, "seed": seed, "points": len(x)}
    state = json.loads(partial.read_text()) if partial.exists() else {**key, "bounds": []}
    if {k: state[k] for k in key} != key:
        raise SystemExit(f"{partial}: made with {state}, not {key}; remove it to start again")
    bounds, new = state["bounds"], 0
    while len(bounds) < len(x) and (max_blocks is None or new < max_blocks):
        start = len(bounds)
        torch.manual_seed(seed + start // block)
        part = iwae_log_likelihood(
            vae,
            x[start : start + block],
            num_samples=num_samples,
            chunk_size=chunk,
            batch_size=batch,
        )
        bounds += part.tolist()
        new += 1
        write_json(partial, {**key, "bounds": bounds})
    return torch.tensor(bounds, dtype=torch.float64), len(bounds) == len(x)


def nll_summary(bounds: torch.Tensor, prefix: str) -> dict:
    return {
        f"{prefix}_nll_iwae": -bounds.mean().item(),
        f"{prefix}_nll_iwae_stderr": bounds.std().item() / math.sqrt(bounds.numel()),
        f"{prefix}_iwae_points": bounds.numel(),
        f"{prefix}_iwae_bound": [round(v, 4) for v in bounds.tolist()],
    }


def paired(a: list, b: list) -> dict:
    """Per-image ``b - a`` of two bound lists (positive: ``b`` is the better model)."""
    d = torch.tensor(b, dtype=torch.float64) - torch.tensor(a, dtype=torch.float64)
    return {
        "mean": d.mean().item(),
        "stderr": d.std().item() / math.sqrt(d.numel()),
        "share_favouring_second": (d > 0).double().mean().item(),
    }


def mean_std(values: list) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def plot_curves(rows: dict, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, row in rows.items():
        ax.plot(row["curve_epochs"], row["curve_validation_neg_elbo"], ".-", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation negative ELBO (nats)")
    ax.set_title(title)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Paths:
    def __init__(self, args):
        self.results, self.figures, self.runs = map(Path, (args.results, args.figures, args.runs))
        self.selection = self.results / "vae_protocol_selection.json"
        self.report = self.results / "vae_protocol_test.json"

    def train_json(self, name):
        return self.results / "vae_protocol_runs" / f"{name}.json"

    def test_json(self, name):
        return self.results / "vae_protocol_runs" / f"{name}_test.json"


def read_selection(paths: Paths) -> dict:
    if not paths.selection.exists():
        raise SystemExit(f"{paths.selection}: missing; run the select stage first")
    return json.loads(paths.selection.read_text())


# ------------------------------------------------------------------------------- stages
def train(args, paths):
    from pyro_manifold.datasets import load_mnist, static_binarize
    from pyro_manifold.infer import fit

    name = job_name(args.encoder, args.recipe, args.seed)
    settings = model_settings(args.encoder, args.smoke)
    budget = recipe(args.recipe)
    epochs = max(1, budget["epochs"] // 500) if args.smoke else budget["epochs"]
    train_x = load_mnist(args.data, "train").data  # never the test split here
    val_x = load_mnist(args.data, "validation").data
    if args.smoke:
        train_x, val_x = train_x[:500], val_x[:200]
    device = torch.device(args.device)
    val_binary = static_binarize(val_x, seed=0).to(device)
    pixel_mean = train_x.float().mean(0) / 255
    steps_per_epoch = train_x.shape[0] // SHARED["batch_size"]
    num_steps = epochs * steps_per_epoch
    warmup_steps = round(budget["kl_warmup_fraction"] * num_steps)
    eval_every = 1 if args.smoke else SHARED["eval_every"]
    run_dir = paths.runs / name
    partial = run_dir / "validation_iwae.json"
    if not args.resume and partial.exists():
        partial.unlink()  # a fresh run: the old run's bounds are stale
    torch.manual_seed(args.seed)
    vae = new_vae(settings, warmup_steps, pixel_mean)
    result = fit(
        vae.model,
        vae.guide,
        train_x.to(device),
        num_steps=num_steps,
        batch_size=SHARED["batch_size"],
        optimizer=SHARED["optimizer"],
        lr=SHARED["lr"],
        lr_schedule=SHARED["lr_schedule"],
        validation_data=val_binary,
        validate_every=eval_every * steps_per_epoch,
        restore_best=True,  # the stopping epoch, chosen on validation
        transform_batch=binarize_batch,
        device=device,
        seed=args.seed,
        run_dir=run_dir,
        checkpoint_every=steps_per_epoch,
        resume=run_dir / "checkpoint.pt" if args.resume else None,
        log_every=50 if not args.smoke else 1,
        progress=False,
        config={
            "job": name,
            "encoder": args.encoder,
            "recipe": args.recipe,
            "seed": args.seed,
            "smoke": args.smoke,
            **settings,
        },
    )
    history = result.history
    best = history["val_step"][history["val_loss"].index(min(history["val_loss"]))]
    t0 = time.perf_counter()
    val_samples = 10 if args.smoke else VAL_IWAE_SAMPLES
    bounds, _ = iwae_in_blocks(
        vae, val_binary, val_samples, partial, VAL_IWAE_SEED, block=50 if args.smoke else IWAE_BLOCK
    )
    report = {
        "stage": "train",
        "split": "validation",
        "job": name,
        "encoder": args.encoder,
        "recipe": args.recipe,
        "seed": args.seed,
        "model": settings,
        "budget": {
            **{k: SHARED[k] for k in ("batch_size", "optimizer", "lr", "lr_schedule")},
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "kl_warmup_steps": warmup_steps,
            "train_images": train_x.shape[0],
            "validation_images": val_x.shape[0],
        },
        "parameters": sum(p.numel() for p in vae.parameters()),
        "epochs_run": result.step / steps_per_epoch,
        "best_epoch": best / steps_per_epoch,
        "best_validation_neg_elbo": result.best_validation_loss,
        "train_seconds": history["time"][-1],
        "seconds_per_epoch": history["time"][-1] * steps_per_epoch / result.step,
        "curve_epochs": [s / steps_per_epoch for s in history["val_step"]],
        "curve_validation_neg_elbo": history["val_loss"],
        "curve_train_epochs": [s / steps_per_epoch for s in history["step"]],
        "curve_train_loss": history["loss"],
        "validation_iwae_samples": val_samples,
        "validation_iwae_seconds": time.perf_counter() - t0,
        **nll_summary(bounds, "validation"),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "args": vars(args),
        **provenance(),
    }
    write_json(paths.train_json(name), report)
    print(
        f"{name}: best epoch {report['best_epoch']:.0f}, validation NLL (IWAE-{val_samples}) "
        f"{report['validation_nll_iwae']:.2f} ± {report['validation_nll_iwae_stderr']:.2f}, "
        f"{report['train_seconds'] / 3600:.2f} h"
    )


def select(args, paths):
    rows = {}
    for name in CANDIDATES:
        path = paths.train_json(job_name("gaussian", name, 0))
        if not path.exists():
            raise SystemExit(f"{path}: missing; train it with vae_protocol.sh candidates")
        rows[name] = json.loads(path.read_text())
    chosen = choose({name: row["validation_nll_iwae"] for name, row in rows.items()})
    plot_curves(
        {f"gaussian {name}": row for name, row in rows.items()},
        paths.figures / "vae_protocol_candidates.png",
        "VAE recipes (Gaussian encoder, seed 0) on validation",
    )
    report = {
        "stage": "select",
        "split": "validation",
        "encoder": "gaussian",
        "seed": 0,
        "configurations_tried": list(CANDIDATES),
        "num_configurations": len(CANDIDATES),
        "rule": "lowest validation NLL (IWAE bound, all validation images); ties: the cheaper",
        "validation": {
            name: {
                k: row[k]
                for k in (
                    "validation_nll_iwae",
                    "validation_nll_iwae_stderr",
                    "validation_iwae_samples",
                    "best_epoch",
                    "epochs_run",
                    "best_validation_neg_elbo",
                    "train_seconds",
                )
            }
            for name, row in rows.items()
        },
        "paired_vs_chosen": {
            name: paired(rows[name]["validation_iwae_bound"], rows[chosen]["validation_iwae_bound"])
            for name in CANDIDATES
            if name != chosen
        },
        "chosen": chosen,
        "final_runs": final_runs(chosen),
        "seeds": list(SMOKE_SEEDS if args.smoke else SEEDS),
        "args": vars(args),
        **provenance(),
    }
    write_json(paths.selection, report)
    print(json.dumps({k: report[k] for k in ("validation", "chosen", "final_runs")}, indent=1))


def plan(args, paths):
    if args.which == "candidates":
        jobs = [("gaussian", name, 0) for name in CANDIDATES]
    else:
        selection = read_selection(paths)
        groups = ("pcp_gpu",) if args.which == "gpu" else ("main", "pcp_cpu")
        pairs = []
        for group in groups:
            pairs += [p for p in selection["final_runs"][group] if p not in pairs]
        jobs = [(e, r, s) for e, r in pairs for s in selection["seeds"]]
    for job in jobs:
        print(*job)


def score(args, paths):
    from pyro_manifold.datasets import load_mnist, static_binarize

    selection = read_selection(paths)  # nothing reads the test images before this exists
    finals = [p for pairs in selection["final_runs"].values() for p in pairs]
    if [args.encoder, args.recipe] not in finals or args.seed not in selection["seeds"]:
        raise SystemExit(
            f"test: {args.encoder} {args.recipe} seed {args.seed} is not a final "
            f"run of {paths.selection}"
        )
    name = job_name(args.encoder, args.recipe, args.seed)
    out, trained = paths.test_json(name), paths.train_json(name)
    if out.exists():
        raise SystemExit(f"{out}: this run was scored on the test images already (once)")
    if not trained.exists():
        raise SystemExit(f"{trained}: missing; train the run first")
    row = json.loads(trained.read_text())
    run_dir = paths.runs / name
    vae = load_vae(run_dir, row["model"]).to(args.device)
    test_x = load_mnist(args.data, "test").data
    if args.smoke:
        test_x = test_x[:100]
    test_binary = static_binarize(test_x, seed=0).to(args.device)
    samples = 20 if args.smoke else TEST_IWAE_SAMPLES
    t0 = time.perf_counter()
    bounds, complete = iwae_in_blocks(
        vae,
        test_binary,
        samples,
        run_dir / "test_iwae.json",
        TEST_IWAE_SEED,
        block=50 if args.smoke else IWAE_BLOCK,
        chunk=args.iwae_chunk,
        batch=args.iwae_batch,
    )
    assert complete
    report = {
        "stage": "test",
        "split": "test",
        "job": name,
        "encoder": args.encoder,
        "recipe": args.recipe,
        "seed": args.seed,
        "test_iwae_samples": samples,
        "test_iwae_seconds_this_call": time.perf_counter() - t0,
        **nll_summary(bounds, "test"),
        "selection_commit": selection["commit"],
        "train_commit": row["commit"],
        "device": args.device,
        "args": vars(args),
        **provenance(),
    }
    write_json(out, report)
    print(
        f"{name}: test NLL (IWAE-{samples}, {bounds.numel()} images) "
        f"{report['test_nll_iwae']:.2f} ± {report['test_nll_iwae_stderr']:.2f}"
    )


def report_stage(args, paths):
    selection = read_selection(paths)
    seeds = selection["seeds"]
    configurations, missing = {}, []
    for group, pairs in selection["final_runs"].items():
        for encoder, name in pairs:
            key = f"{encoder} {name}"
            runs = [job_name(encoder, name, s) for s in seeds]
            absent = [r for r in runs if not paths.test_json(r).exists()]
            if absent:
                if group != "pcp_gpu":  # the GPU's runs are optional here
                    missing += absent
                continue
            trained = [json.loads(paths.train_json(r).read_text()) for r in runs]
            tested = [json.loads(paths.test_json(r).read_text()) for r in runs]
            configurations[key] = {
                "encoder": encoder,
                "recipe": name,
                "seeds": seeds,
                "parameters": trained[0]["parameters"],
                "budget": trained[0]["budget"],
                "model": trained[0]["model"],
                "test_nll_iwae": mean_std([t["test_nll_iwae"] for t in tested]),
                "test_nll_iwae_stderr_per_seed": [t["test_nll_iwae_stderr"] for t in tested],
                "validation_nll_iwae": mean_std([t["validation_nll_iwae"] for t in trained]),
                "best_epoch_per_seed": [t["best_epoch"] for t in trained],
                "train_hours_per_seed": [t["train_seconds"] / 3600 for t in trained],
                "test_iwae_samples": tested[0]["test_iwae_samples"],
                "test_iwae_points": tested[0]["test_iwae_points"],
                "_bounds": [t["test_iwae_bound"] for t in tested],
                "_trained": trained,
            }
    if missing:
        raise SystemExit("report: not scored on the test images yet: " + ", ".join(missing))

    def compare(baseline, model, margin, claim):
        """Claim: mean NLL of ``model`` + margin <= baseline's (strictly below for 0)."""
        if baseline not in configurations or model not in configurations:
            return None
        b, m = configurations[baseline], configurations[model]
        per_seed = [
            x - y
            for x, y in zip(
                b["test_nll_iwae"]["per_seed"], m["test_nll_iwae"]["per_seed"], strict=True
            )
        ]
        gain = b["test_nll_iwae"]["mean"] - m["test_nll_iwae"]["mean"]
        holds = (lambda g: g >= margin) if margin > 0 else (lambda g: g > 0)  # noqa: E731
        return {
            "claim": claim,
            "baseline": baseline,
            "model": model,
            "gain_nats": gain,
            "gain_per_seed": per_seed,
            "met": holds(gain),
            "seeds_meeting": sum(map(holds, per_seed)),
            "paired_per_seed": [
                paired(x, y) for x, y in zip(b["_bounds"], m["_bounds"], strict=True)
            ],
        }

    chosen = selection["chosen"]
    reduced = selection["final_runs"]["pcp_cpu"][0][1]
    gaussian = configurations[f"gaussian {chosen}"]["test_nll_iwae"]
    claims = {
        "gaussian_bar": {
            "claim": f"Gaussian encoder test NLL <= {BAR_GAUSSIAN} nats",
            "figure": gaussian["mean"],
            "met": gaussian["mean"] <= BAR_GAUSSIAN,
            "seeds_meeting": sum(v <= BAR_GAUSSIAN for v in gaussian["per_seed"]),
        },
        "iaf_margin": compare(
            f"gaussian {chosen}",
            f"iaf {chosen}",
            IAF_MARGIN,
            f"IAF at least {IAF_MARGIN} nat below the Gaussian encoder",
        ),
        "pcp_cpu": compare(
            f"gaussian {reduced}",
            f"pcp64 {reduced}",
            0.0,
            "PCP-Map (PICNN 64-64, reduced budget) below the Gaussian encoder",
        ),
        "pcp_gpu": compare(
            f"gaussian {chosen}",
            f"pcp {chosen}",
            0.0,
            "PCP-Map (PICNN 200-200, full budget) below the Gaussian encoder",
        ),
    }
    from pyro_manifold.plotting import plot_image_grid

    curves = {}
    for key, row in configurations.items():
        for seed, trained in zip(seeds, row.pop("_trained"), strict=True):
            curves[f"{key} seed {seed}"] = trained
        row.pop("_bounds")
        run_dir = paths.runs / job_name(row["encoder"], row["recipe"], seeds[0])
        if not (run_dir / "best.pt").exists():  # e.g. runs trained on another machine
            row["samples_figure"] = None
            continue
        torch.manual_seed(0)
        figure = paths.figures / f"vae_protocol_samples_{row['encoder']}_{row['recipe']}.png"
        with torch.no_grad():
            plot_image_grid(
                load_vae(run_dir, row["model"]).sample(32),
                figure,
                title=f"{key}, seed {seeds[0]}: samples",
            )
        row["samples_figure"] = figure.name
    plot_curves(
        curves,
        paths.figures / "vae_protocol_validation_curves.png",
        "VAE encoders on binarized MNIST: validation curves",
    )
    report = {
        "stage": "report",
        "split": "test",
        "chosen": chosen,
        "configurations_tried": selection["configurations_tried"],
        "num_configurations": selection["num_configurations"],
        "selection_commit": selection["commit"],
        "configurations": configurations,
        "claims": {k: v for k, v in claims.items() if v is not None},
        "args": vars(args),
        **provenance(),
    }
    write_json(paths.report, report)
    print("| configuration | test NLL (IWAE), mean ± std over seeds | per seed | validation NLL |")
    print("|---|---|---|---|")
    for key, row in configurations.items():
        t, v = row["test_nll_iwae"], row["validation_nll_iwae"]
        print(
            f"| {key} | {t['mean']:.2f} ± {t['std']:.2f} | "
            f"{', '.join(f'{x:.2f}' for x in t['per_seed'])} | {v['mean']:.2f} |"
        )
    for claim in report["claims"].values():
        print(
            f"{claim['claim']}: {'met' if claim['met'] else 'not met'} "
            f"({claim['seeds_meeting']} of {len(seeds)} seeds)"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", required=True, choices=["train", "select", "plan", "test", "report"])
    p.add_argument("--encoder", choices=sorted(ENCODERS), help="train, test")
    p.add_argument("--recipe", help="train, test: e<epochs>[_w<percent>]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--which", choices=["candidates", "finals", "gpu"], default="finals")
    p.add_argument("--data", default=None, help="MNIST root (default: $PYRO_MANIFOLD_DATA)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--iwae-chunk", type=int, default=100, help="test: draws per pass")
    p.add_argument("--iwae-batch", type=int, default=100, help="test: images per pass")
    p.add_argument("--resume", action="store_true", help="train: continue from checkpoint.pt")
    p.add_argument("--results", default=None, help="default benchmarks/results")
    p.add_argument("--figures", default=None, help="default benchmarks/figures")
    p.add_argument("--runs", default=None, help="default runs/vae_protocol")
    p.add_argument("--smoke", action="store_true", help="tiny data and sizes, seeds 0 and 1")
    args = p.parse_args()
    smoke = "runs/smoke/vae_protocol/" if args.smoke else ""
    args.results = args.results or f"{smoke}benchmarks/results"
    args.figures = args.figures or f"{smoke}benchmarks/figures"
    args.runs = args.runs or f"{smoke}runs/vae_protocol"
    if args.stage in ("train", "test"):
        if args.encoder is None or args.recipe is None:
            p.error(f"--stage {args.stage} needs --encoder and --recipe")
        try:
            recipe(args.recipe)
        except ValueError as e:
            p.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    paths = Paths(args)
    stages = {"train": train, "select": select, "plan": plan, "test": score, "report": report_stage}
    stages[args.stage](args, paths)


if __name__ == "__main__":
    main()
