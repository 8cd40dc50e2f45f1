"""Compare the U-Net variants on real data with one trainer, one budget, one split and one evaluation code.

For each setting (BraTS sample 3D, ISBI 2012 EM 2D; or small synthetic phantoms with ``--synthetic``) and each
variant (unet, vnet in 3D only, unetpp, attention_unet, nnunet), train with the project's trainer
(`unetseg.training.trainer.train`) for the same wall-clock budget, on the same plan (target spacing,
normalisation, patch — rounded up to each network's total stride — batch size, augmentation, loss Dice+CE, SGD),
with every network starting from the same number of features at full resolution; then segment the held-out
cases with the project's predictor (`inference.segment`) and score them with `metrics.compute_metrics`.
Writes ``variants.md`` (the table beside the literature's figures, the hardware, the command), ``variants.json``
(every number, per case), and two plots; with real data also ``UNetSegmentation/Resources/variants.json``, which
`variant_figures.variant_summary` shows in the model catalog.

    python benchmarks/compare_variants.py [--settings brats isbi] [--budget-min 2.5] [--seeds 0 1]
    python benchmarks/compare_variants.py --synthetic --budget-min 0.08 --out-dir /tmp/variants
    python benchmarks/compare_variants.py --report-only docs/variants.json   # redraw the report, no training
    python benchmarks/compare_variants.py --report-only isbi/variants.json brats/variants.json  # merge runs

Each setting's results carry their own command, options and hardware, so settings can run as separate
invocations (on different machines, e.g. one GPU lease each) and be merged into one report with ``--report-only``.

Each run happens in its own process, one at a time, so its peak memory is its own and runs do not compete for
the CPU. Exit status: 0 done; 2 the shared data is missing (use ``--synthetic``) or the
``--report-only`` files cannot be read or merged.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import variant_report  # sibling scripts
import variant_runs
import variant_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = Path("/work/shared/data")
SHIPPED_JSON = REPO_ROOT / "UNetSegmentation" / "Resources" / "variants.json"
VARIANTS_3D = ("unet", "vnet", "unetpp", "attention_unet", "nnunet")
VARIANTS_2D = ("unet", "unetpp", "attention_unet", "nnunet")  # MONAI's V-Net is 3D only
FIRST_LEVEL_FEATURES = {"unet": 64, "unetpp": 64, "attention_unet": 64, "vnet": 16, "nnunet": 32}  # paper / plan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (every default is stated in the report, so the printed command reproduces it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", help="real settings to run (brats, isbi; default both) or, with "
                   "--synthetic, synthetic ones (synthetic_3d, synthetic_2d)")
    p.add_argument("--synthetic", action="store_true", help="tiny synthetic phantoms instead of the shared data")
    p.add_argument("--variants", nargs="+", choices=VARIANTS_3D, default=list(VARIANTS_3D))
    p.add_argument("--budget-min", type=float, default=2.5, help="wall-clock training budget per run (minutes)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--setting-seeds", nargs="+", default=[], metavar="KEY=SEEDS",
                   help="other seeds for one setting, e.g. isbi=0,1 (the rest use --seeds)")
    p.add_argument("--base-features", type=int, default=16,
                   help="features at full resolution for every network (sets each variant's width)")
    p.add_argument("--gpu-memory-gb", type=float,
                   help="the planner's memory budget (sets the patch); default: each setting's CPU-sized one")
    p.add_argument("--batch-size", type=int, help="override the planned batch size")
    p.add_argument("--iterations-per-epoch", type=int, help="iterations per epoch (default: the setting's)")
    p.add_argument("--val-every", type=int, help="validate every N epochs (default: the setting's)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--workers", type=int, default=0,
                   help="data-loading worker processes per run (a GPU needs several to stay busy)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "docs", help="where variants.md/.json and plots go")
    p.add_argument("--work-dir", type=Path, help="keep datasets, models and predictions here (default: a temp dir)")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs an interrupted invocation with the same --work-dir finished")
    p.add_argument("--records-only", action="store_true",
                   help="with --resume: report only the runs already finished, train nothing (the report lists "
                        "the runs that are missing)")
    p.add_argument("--note", nargs="+", default=[], metavar="SETTING=TEXT",
                   help="with --report-only: a fact about how a setting's runs were made that the records cannot "
                        "show (e.g. runs kept with --resume from another machine), printed under its run line")
    p.add_argument("--no-ship", action="store_true", help="do not copy variants.json into the module's Resources")
    p.add_argument("--report-only", type=Path, nargs="+", metavar="JSON",
                   help="rewrite the report and plots from earlier runs' variants.json files (no training); "
                        "several files, one per setting, are merged into one report")
    args = p.parse_args(argv)
    known = variant_settings.SYNTHETIC_SETTINGS if args.synthetic else variant_settings.REAL_SETTINGS
    args.settings = args.settings or list(known)
    unknown = sorted(set(args.settings) - set(known))
    if unknown:
        p.error(f"unknown setting(s) {unknown}; choose from {sorted(known)}")
    try:
        args.seeds_by_setting = {k: [int(s) for s in v.split(",")]
                                 for k, v in (item.split("=", 1) for item in args.setting_seeds)}
    except ValueError:
        p.error(f"--setting-seeds takes KEY=SEED[,SEED…] items; got {args.setting_seeds}")
    if any("=" not in note for note in args.note):
        p.error(f"--note takes SETTING=TEXT items; got {args.note}")
    if args.note and not args.report_only:
        p.error("--note annotates existing results: use it with --report-only")
    return args


def variant_width(variant: str, base_features: int) -> float:
    """The trainer's width for `variant` so that its first level has `base_features` features."""
    return base_features / FIRST_LEVEL_FEATURES[variant]


def load_setting(key: str, args: argparse.Namespace) -> variant_settings.Setting:
    """Read (or make) one setting's cases."""
    if args.synthetic:
        return variant_settings.SYNTHETIC_SETTINGS[key]()
    return variant_settings.REAL_SETTINGS[key](args.data_root)


def write_folders(setting: variant_settings.Setting, folder: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The nnU-Net folder (training + evaluation cases) and the plans made from the training cases only."""
    from unetseg.training.datasets import write_nnunet_dataset
    from unetseg.training.fingerprint import compute_fingerprint
    from unetseg.training.planning import plan_experiment, save_plans

    saved_plans = args.resume and (folder / "plans.json").is_file()
    if saved_plans and (folder / "dataset" / "dataset.json").is_file():
        return folder / "dataset", folder / "plans.json"
    if saved_plans:  # a dataset folder left half-written, or absent on another machine: rewrite it
        shutil.rmtree(folder / "dataset", ignore_errors=True)
    cases = setting.train + setting.evaluate
    dataset = write_nnunet_dataset(folder / "dataset", [(c.images, c.label) for c in cases], setting.channel_names,
                                   setting.labels, names=[c.name for c in cases])
    if saved_plans:  # the copied plans stay: the runs kept with --resume were trained on them
        return folder / "dataset", folder / "plans.json"
    train_names = {c.name for c in setting.train}
    train_only = dataclasses.replace(dataset, cases=[c for c in dataset.cases if c.name in train_names])
    fingerprint = compute_fingerprint(train_only)
    plan = plan_experiment(fingerprint, args.gpu_memory_gb or setting.gpu_memory_gb,
                           force_2d=setting.spatial_dims == 2)
    plans = save_plans(folder / "plans.json", {plan.configuration: plan}, fingerprint)
    return folder / "dataset", plans


def jobs_for(setting: variant_settings.Setting, dataset: Path, plans: Path, folder: Path,
             args: argparse.Namespace) -> list[variant_runs.Job]:
    """One job per variant (V-Net only in 3D) and seed, all with the same data, plan, budget and options."""
    variants = [v for v in args.variants if setting.spatial_dims == 3 or v in VARIANTS_2D]
    shared = {"iterations_per_epoch": args.iterations_per_epoch or setting.iterations_per_epoch,
              "val_every": args.val_every or setting.val_every}
    if args.batch_size:
        shared["batch_size"] = args.batch_size
    if args.workers:
        shared["num_workers"] = args.workers
    return [
        variant_runs.Job(
            setting=setting.key, variant=v, seed=seed, dataset=str(dataset), plans=str(plans),
            eval_cases=[c.name for c in setting.evaluate],
            monitor_cases=[c.name for c in setting.evaluate[:setting.monitor_cases]],
            regions={k: list(vals) for k, vals in setting.regions.items()},
            pixel_error_region=setting.pixel_error_region,
            out_dir=str(folder / "models" / f"{v}_seed{seed}"),
            prediction_dir=str(prediction_dir(folder, v, seed)),
            cache_dir=str(folder / "cache"), budget_min=args.budget_min, device=args.device,
            train_options={**shared, "width": variant_width(v, args.base_features), "name": f"{setting.key}-{v}"},
        )
        for seed in args.seeds_by_setting.get(setting.key, args.seeds) for v in variants
    ]


def prediction_dir(setting_folder: Path, variant: str, seed: int) -> Path:
    """Where one run's predictions go inside a setting's work folder."""
    return setting_folder / "predictions" / f"{variant}_seed{seed}"


def run_isolated(job: variant_runs.Job) -> dict:
    """Run a job in a child process of its own, so no run inherits another's memory peak, weights or RNG state."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
        return pool.submit(variant_runs.run_job, job).result()


def _context() -> multiprocessing.context.BaseContext:
    """A fork server where the platform has one: children fork from a clean process that imported torch, MONAI
    and the project but ran nothing (forking this process after torch ran its thread pool, e.g. to resample
    BraTS, would hang the children), so they start at once; spawn elsewhere."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *variant_runs.PRELOAD])
    return context


def run_once(job: variant_runs.Job, record_path: Path, resume: bool) -> dict:
    """A job's record: kept from an earlier, interrupted invocation (``--resume``, same job) or run now and saved."""
    if resume and record_path.is_file():
        saved = json.loads(record_path.read_text(encoding="utf-8"))
        if saved["job"] == dataclasses.asdict(job):
            print("   (kept from the earlier invocation)", flush=True)
            return saved["record"]
    shutil.rmtree(job.out_dir, ignore_errors=True)  # a run that did not finish leaves no record
    record = run_isolated(job)
    variant_report.write_json({"job": dataclasses.asdict(job), "record": record}, record_path)
    return record


def run_setting(key: str, work: Path, args: argparse.Namespace) -> dict:
    """Prepare one setting, run all its jobs, and return its section of the results."""
    print(f"== {key}: reading the data", flush=True)
    setting = load_setting(key, args)
    folder = work / key
    dataset, plans = write_folders(setting, folder, args)
    runs, missing = [], []
    jobs = jobs_for(setting, dataset, plans, folder, args)
    for job in jobs:
        start = time.perf_counter()
        record_path = folder / "runs" / f"{job.variant}_seed{job.seed}.json"
        if args.records_only and not record_path.is_file():
            missing.append(f"{job.variant} seed {job.seed}")
            continue
        print(f"-- {key} {job.variant} seed {job.seed}: training {job.budget_min:g} min …", flush=True)
        record = run_once(job, record_path, args.resume or args.records_only)
        runs.append(record)
        print(f"   {record['iterations']} iterations, {record['parameters']:,} parameters, "
              f"{variant_report.case_summary(record)} ({time.perf_counter() - start:.0f} s)", flush=True)
    schedule = {k: v for k, v in jobs[0].train_options.items() if k not in ("width", "name")}
    schedule.update(gpu_memory_gb=args.gpu_memory_gb or setting.gpu_memory_gb, monitor_cases=jobs[0].monitor_cases,
                    seeds=args.seeds_by_setting.get(key, args.seeds))
    return variant_report.setting_section(setting, plans, schedule, runs, missing)


NO_EFFECT_FLAGS = {"--resume": 0, "--records-only": 0, "--no-ship": 0, "--out-dir": 1, "--work-dir": 1}


def command_line(argv: list[str] | None) -> str:
    """The command that reproduces this run's numbers (without the options that only say where files go)."""
    args, kept = list(sys.argv[1:] if argv is None else argv), []
    while args:
        arg = args.pop(0)
        name = arg.split("=", 1)[0]
        if name in NO_EFFECT_FLAGS:
            del args[:NO_EFFECT_FLAGS[name] if "=" not in arg else 0]
        else:
            kept.append(arg)
    return shlex.join(["python", "benchmarks/compare_variants.py", *kept])


def run_all(args: argparse.Namespace, argv: list[str] | None) -> dict:
    """Train and evaluate every setting's jobs; the results document."""
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="unetseg-variants-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sections = {key: run_setting(key, work, args) for key in args.settings}
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return variant_report.results_document(sections, vars(args), command_line(argv))


def add_notes(results: dict, notes: list[str]) -> None:
    """Append each SETTING=TEXT note to that setting's provenance (kept in variants.json, shown in the report)."""
    for item in notes:
        key, text = item.split("=", 1)
        if key not in results["settings"]:
            raise ValueError(f"--note names setting {key!r}, which the results do not hold "
                             f"({', '.join(results['settings'])}).")
        provenance = results["settings"][key]["provenance"]
        provenance["notes"] = [*provenance.get("notes", []), text]


def main(argv: list[str] | None = None) -> int:
    """Run every setting, then write the report, the results file, the plots (and the shipped copy)."""
    args = parse_args(argv)
    if args.report_only:
        try:
            results = variant_report.merge_documents(
                [(str(path), json.loads(path.read_text(encoding="utf-8"))) for path in args.report_only])
            add_notes(results, args.note)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    else:
        try:
            results = run_all(args, argv)
        except variant_settings.DataMissingError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    written = variant_report.write_outputs(results, args.out_dir)
    if not results["synthetic"] and not args.no_ship:
        written.append(variant_report.write_json(results, SHIPPED_JSON))
    print("\n".join(["", variant_report.markdown(results), "", "Wrote:", *map(str, written)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
