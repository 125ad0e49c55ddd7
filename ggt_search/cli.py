"""`ggt-search` (or `python search.py`): data, train, evaluate, search, dashboard, ablate, report, bench.

Model and training flags are generated from the config dataclasses, so every config
field has exactly one flag and `--help` lists them all with their defaults.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import sys
import textwrap
import tokenize
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from ggt_search.errors import UserError
from ggt_search.files import file_error

DATASET_HELP = "ogbg-mol* name, nci-tpsa (embedded, no network), or a CSV path"
METAVARS = {int: "INT", float: "NUMBER", str: "TEXT"}


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported on one line (argparse's own way adds the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def at_least(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def port_number(text: str) -> int:
    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1-65535, got {value}")
    return value


def number_in(what: str, low: float, high: float, low_included: bool):
    """An argparse type: a number in [low, high] (or (low, high] when not `low_included`), named `what`."""
    interval = f"{'[' if low_included else '('}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value >= low if low_included else value > low
        if not (above and value <= high):  # NaN is neither
            raise argparse.ArgumentTypeError(f"must be {what} in {interval}, got {value}")
        return value

    parse.__name__ = f"{what} in {interval}"
    return parse


fraction = number_in("a fraction", 0, 1, low_included=False)
probability = number_in("a probability", 0, 1, low_included=True)


def add_dataset_flags(parser: argparse.ArgumentParser, required: bool = False) -> None:
    from ggt_search.sources import dataset_flags

    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", required=required, default=argparse.SUPPRESS, help=DATASET_HELP)
    for flag in dataset_flags():
        group.add_argument(flag.name, type=flag.type, choices=flag.choices, default=argparse.SUPPRESS, help=flag.help)


def dataset_overrides(args: argparse.Namespace) -> dict:
    from ggt_search.sources import dataset_flags

    values = {"name": args.dataset} if hasattr(args, "dataset") else {}
    return values | {flag.field: getattr(args, flag.dest) for flag in dataset_flags() if hasattr(args, flag.dest)}


def field_comments(cls) -> dict[str, str]:
    """Each field's comment in the dataclass's source, the flag's help: the one after the field
    (`name: type = default  # comment`), or else the comment lines right above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {
        token.start[0]: (token.string.removeprefix("#").strip(), token.line.strip() == token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }  # line number -> (text, whether the comment is the whole line)
    fields_comments = {}
    for number, line in enumerate(source.splitlines(), start=1):
        name, colon, _ = line.strip().partition(":")
        if not (colon and name.isidentifier()) or comments.get(number, ("", False))[1]:
            continue
        if number in comments:
            fields_comments[name] = comments[number][0]
            continue
        above = number - 1
        while comments.get(above, ("", False))[1]:
            above -= 1
        if above < number - 1:
            fields_comments[name] = " ".join(comments[n][0] for n in range(above + 1, number))
    return fields_comments


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """--config FILE plus one flag per model and train field, explained by the field's comment
    in config.py; given flags override the file."""
    from ggt_search.config import ModelConfig, TrainConfig, choices

    parser.add_argument("--config", type=Path, help="YAML/JSON run config (sections dataset, model, train)")
    add_dataset_flags(parser)
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        options, comments, hints = choices(cls), field_comments(cls), typing.get_type_hints(cls)
        group = parser.add_argument_group(section, f"{cls.__name__}: {cls.__doc__}")
        for f in fields(cls):
            if f.name in skip:
                continue
            default = f.default if f.default is not MISSING else None
            flag = "--" + f.name.replace("_", "-")
            help = f"{comments[f.name]} (default {default})".replace("%", "%%")  # argparse formats help with %
            if f.type in (bool, "bool"):
                group.add_argument(
                    flag,
                    dest=f"{section}.{f.name}",
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=help,
                )
            else:
                # the value's type, a null default aside (`patience: int | None` takes an integer)
                kind = next((t for t in (int, float) if t in (hints[f.name], *typing.get_args(hints[f.name]))), str)
                group.add_argument(
                    flag,
                    dest=f"{section}.{f.name}",
                    type=kind,
                    choices=options.get(f.name),
                    metavar="{" + ",".join(options[f.name]) + "}" if f.name in options else METAVARS[kind],
                    default=argparse.SUPPRESS,
                    help=help,
                )


def run_config(args: argparse.Namespace):
    from ggt_search.config import RunConfig

    if args.config:
        base = RunConfig.load(args.config)
    elif getattr(args, "from_study", None):
        from ggt_search.config import DEFAULT_STORAGE
        from ggt_search.study import best_config

        base = best_config(args.from_study, args.storage or DEFAULT_STORAGE)
    else:
        base = RunConfig()
    values = base.to_dict()
    dataset = dataset_overrides(args)
    if "name" in dataset and dataset["name"] != values["dataset"]["name"]:
        values["dataset"] = {}  # another dataset: the file's dataset options do not apply to it
    values["dataset"].update(dataset)
    for key, value in vars(args).items():
        section, _, name = key.partition(".")
        if section in ("model", "train") and name:
            values[section][name] = value
    return RunConfig.from_dict(values)


# ----------------------------------------------------------------------------- commands


def cmd_data(args: argparse.Namespace) -> None:
    from ggt_search.config import DatasetSpec, build
    from ggt_search.datasets import load_dataset

    spec = build(DatasetSpec, dataset_overrides(args), "dataset")
    graphs = load_dataset(spec, rebuild=getattr(args, "rebuild", False))
    if args.action == "build":
        graphs.load_pe(args.pe_dim)
        print(f"cached {graphs.num_graphs} graphs and PEs (k={max(args.pe_dim, 20)}) in {graphs.cache_dir}")
    else:
        info = graphs.summary()
        print(json.dumps(info, indent=2) if args.json else "\n".join(f"{k:16s} {v}" for k, v in info.items()))


def cmd_train(args: argparse.Namespace) -> None:
    from ggt_search.final_evaluation import check_same_config
    from ggt_search.metrics import TRIVIAL
    from ggt_search.model import count_parameters
    from ggt_search.train import Trainer

    config = run_config(args)
    trainer = Trainer(config)
    out = args.out or Path("runs") / f"{trainer.graphs.name}-{config.model.conv}-seed{config.train.seed}"
    check_same_config(out, config)

    print(
        f"{trainer.graphs.name}: {trainer.graphs.num_graphs} graphs; model "
        f"{count_parameters(trainer.build_model()):,} parameters on {trainer.device}"
    )

    def show(record):
        print(
            f"epoch {record.epoch:3d}  train loss {record.train_loss:.4f}  valid loss {record.valid_loss:.4f}  "
            f"valid {trainer.graphs.metric} {record.valid_metric:.4f}  ({record.seconds:.1f}s)"
        )

    result = trainer.fit(out, on_epoch=show)
    print(
        f"best epoch {result.best_epoch}: valid {result.metric} {result.best_valid:.4f}, test {result.metric} "
        f"{result.test:.4f}"
    )
    print(f"for scale, {TRIVIAL} scores valid {result.trivial['valid']:.4f}, test {result.trivial['test']:.4f}")
    print(f"run directory: {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from ggt_search.final_evaluation import evaluate_seeds, parse_seeds, summary_markdown

    config = run_config(args)
    name = args.from_study or f"{Path(config.dataset.name).stem}-{config.model.conv}"
    out = args.out or Path("runs") / f"evaluate-{name}"
    summary = evaluate_seeds(config, parse_seeds(args.seeds), out, args.workers)
    print(summary_markdown(summary))
    print(f"written: {out / 'summary.md'}, {out / 'summary.json'}")


def cmd_search(args: argparse.Namespace) -> None:
    from optuna.trial import TrialState

    from ggt_search.dashboard import save_report_notes
    from ggt_search.study import SearchSettings, search

    if args.trials is None and args.timeout is None:
        args.trials = 20
    settings = SearchSettings(
        study=args.study,
        base=run_config(args).with_overrides(train={"seed": args.seed}),
        space_file=args.space,
        trials=args.trials,
        timeout=args.timeout,
        sampler=args.sampler,
        pruner=args.pruner,
        storage=args.storage,
        artifacts=args.artifacts,
        seed=args.seed,
        workers=args.workers,
        heartbeat=args.heartbeat,
        seeds_per_trial=args.seeds_per_trial,
        race_p=args.race_p,
        confirm_top=args.confirm_top,
        confirm_seeds=args.confirm_seeds,
    )
    study = search(settings)
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) and save_report_notes(args.study, args.storage):
        print("the report's best configurations are the study's note in the dashboard")


def cmd_dashboard(args: argparse.Namespace) -> None:
    from ggt_search.dashboard import serve

    serve(args.storage, args.artifacts, args.host, args.port)


def cmd_bench(args: argparse.Namespace) -> None:
    from ggt_search.bench import markdown, run_bench, write_report

    report = run_bench(
        run_config(args),
        concurrent=args.concurrent,
        max_graphs=args.max_graphs,
        baseline=not args.no_baseline,
        profile_out=(args.out or Path(".")) if args.profile else None,
        repeats=args.repeats,
    )
    print(markdown(report))
    if args.out:
        write_report(report, args.out)
        print(f"written: {args.out / 'bench.json'}, {args.out / 'bench.md'}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from ggt_search.config import DatasetSpec
    from ggt_search.pretrain import PretrainSettings, pretrain

    config = run_config(args)
    names = [n.strip() for n in args.exclude_datasets.split(",") if n.strip()] if args.exclude_datasets else []
    downstream = [DatasetSpec(n, source=getattr(args, "source", None)) for n in names] or (
        [config.dataset] if hasattr(args, "dataset") else []
    )
    summary = pretrain(
        PretrainSettings(
            args.corpus,
            args.out,
            config,
            smiles_column=args.smiles_column_corpus,
            max_molecules=args.max_molecules,
            mask_rate=args.mask_rate,
            mask_bonds=args.mask_bonds,
            downstream=tuple(downstream),
        )
    )
    print(
        f"pre-trained on {summary['corpus']['molecules']:,} molecules ({summary['graphs_per_second']} graphs/s "
        f"on {summary['device']}); "
        f"checkpoint: {args.out / 'pretrained.pt'}; fine-tune with --init {args.out / 'pretrained.pt'}"
    )


def write_ablation_from_study(args: argparse.Namespace) -> None:
    """`ablate FILE --from-study NAME`: write FILE, the path from the reference config to the search's answer."""
    import yaml

    from ggt_search.ablate import ablation_from_study
    from ggt_search.config import RunConfig
    from ggt_search.files import write_text

    reference = RunConfig.load(args.reference) if args.reference else RunConfig()
    values = ablation_from_study(args.from_study, args.storage, reference, args.seeds or "0-4")
    text = yaml.safe_dump(values, sort_keys=False)
    if args.file.exists() and args.file.read_text() != text:
        raise UserError(f"{args.file} exists and holds another ablation; pass another file name, or delete it")
    write_text(args.file, text)
    print(f"written: {args.file} ({len(values['variants'])} variants: {', '.join(values['variants'])})")
    if not args.run:
        print(f"run it: ggt-search ablate {args.file} --storage {args.storage}")


def cmd_ablate(args: argparse.Namespace) -> None:
    from optuna.trial import TrialState

    from ggt_search.ablate import SUITES, AblationSettings, load_ablation, run_ablation
    from ggt_search.dashboard import save_report_notes

    if args.from_study:
        write_ablation_from_study(args)
        if not args.run:
            return
    elif args.run or args.reference:
        raise UserError("--run and --reference go with --from-study; without it, the file is run as it is")

    dataset = dataset_overrides(args) or None
    if args.suite and dataset and "name" in dataset:
        raise UserError("give --suite or --dataset, not both")
    suite = (
        [{"name": name} | ({"source": args.source} if hasattr(args, "source") else {}) for name in SUITES[args.suite]]
        if args.suite
        else None
    )
    if dataset and "name" not in dataset and not suite:
        raise UserError("--source needs --dataset (or --suite) to say which dataset it builds")
    ablation = load_ablation(
        args.file, dataset=dataset if not suite else None, seeds=args.seeds, epochs=args.epochs, datasets=suite
    )
    if args.device:
        ablation.base = ablation.base.with_overrides(train={"device": args.device})
    from ggt_search.storage import hide_password

    group = args.study or ablation.name
    studies = run_ablation(AblationSettings(ablation, group, args.storage, args.workers, args.heartbeat))
    finished = bool(studies) and all(s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) for s in studies)
    noted = finished and save_report_notes(group, args.storage)
    storage = hide_password(args.storage)
    print(
        f"studies {', '.join(s.study_name for s in studies)} in {storage}"
        f"{' (the verdicts are their note in the dashboard)' if noted else ''}; report: ggt-search report {group} "
        f"--storage {storage}"
    )


def cmd_report(args: argparse.Namespace) -> None:
    from ggt_search.report import build_report
    from ggt_search.report.page import slug

    out = args.out or Path("reports") / slug("-".join(args.studies))  # a study's name is no path
    from ggt_search.config import DEFAULT_STORAGE

    storages = args.storage or [DEFAULT_STORAGE]
    print(f"report written: {build_report(args.studies, storages, out)} (and report.md)")


def add_storage_flags(parser: argparse.ArgumentParser, many: bool = False) -> None:
    from ggt_search.config import DEFAULT_STORAGE

    parser.add_argument(
        "--storage",
        **({"action": "append"} if many else {"default": DEFAULT_STORAGE}),
        help="study storage: SQLite file or any SQLAlchemy URL, e.g. postgresql+psycopg2://user@host/db "
        f"(default {DEFAULT_STORAGE}){'; repeat it to report studies of several storages together' if many else ''}",
    )
    parser.add_argument(
        "--artifacts",
        help="folder of the artifact store (best weights); default: beside the SQLite file, else ./artifacts",
    )


def add_worker_flags(parser: argparse.ArgumentParser, what: str, heartbeat: bool = True) -> None:
    parser.add_argument(
        "--workers",
        type=at_least(1),
        default=1,
        help=f"{what} at once, in worker processes (spread over GPUs; on a CPU each gets its share of the cores)",
    )
    if heartbeat:
        parser.add_argument(
            "--heartbeat",
            type=at_least(1),
            default=30,
            help="seconds between run heartbeats; a run silent for 4x this (its worker was killed) is retried",
        )


def add_data_command(commands) -> None:
    data = commands.add_parser("data", help="inspect or prepare a dataset")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    info = actions.add_parser("info", help="size, tasks, label coverage, split, atoms and bonds per graph")
    info.add_argument("--json", action="store_true", help="print JSON")
    build = actions.add_parser("build", help="featurize and cache a dataset and its Laplacian PEs")
    build.add_argument("--pe-dim", type=at_least(0), default=20, help="PE columns to cache (default 20)")
    build.add_argument("--rebuild", action="store_true", help="ignore the cache")
    for sub in (info, build):
        sub.add_argument("name", metavar="NAME|PATH", help=DATASET_HELP)
        add_dataset_flags(sub)
        sub.set_defaults(func=cmd_data)


def add_train_command(commands) -> None:
    train = commands.add_parser("train", help="train one model (the reference's defaults)")
    add_config_flags(train)
    train.add_argument("--out", type=Path, help="run directory (default runs/<dataset>-<conv>-seed<seed>)")
    train.set_defaults(func=cmd_train)


def add_evaluate_command(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="train one config over several seeds and print OGB's summary")
    add_config_flags(evaluate)
    evaluate.add_argument("--seeds", default="0-9", help="seed list, e.g. 0-9 (OGB's rule) or 0,1")
    evaluate.add_argument(
        "--out", type=Path, help="output folder; finished seeds of the same config there are not rerun"
    )
    add_worker_flags(evaluate, "seeds trained", heartbeat=False)
    evaluate.add_argument(
        "--from-study",
        metavar="STUDY",
        help="start from this search study's answer (in --storage): its confirmed winner (search --confirm-top), "
        "else its best trial",
    )
    evaluate.add_argument(
        "--storage", help="storage of --from-study (default: search's default, sqlite:///ggt-search.db)"
    )
    evaluate.set_defaults(func=cmd_evaluate)


def add_search_command(commands) -> None:
    from ggt_search.space import packaged_spaces

    search = commands.add_parser(
        "search",
        help="run or resume an Optuna architecture search",
        description="Each trial samples a config from the space, trains it, reports the validation metric every "
        "epoch and may be pruned. The same command resumes the study.",
    )
    search.add_argument("--study", required=True, help="study name (re-use it to resume or add trials)")
    search.add_argument(
        "--space",
        default="default",
        help="search space YAML, or a packaged space: "
        f"{', '.join(packaged_spaces())} (quick: small models for a CPU); default: default",
    )
    search.add_argument(
        "--trials", type=at_least(1), help="the study's total number of trials (default 20; rerun with more to add)"
    )
    search.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    search.add_argument(
        "--sampler",
        choices=("tpe", "random", "grid", "gp", "controlled"),
        default="tpe",
        help="controlled: GraphGym's controlled random search, groups of trials that differ in one design "
        "dimension only, for the report's rank analysis",
    )
    search.add_argument(
        "--pruner",
        choices=("median", "hyperband", "none"),
        help="default: median (none with --sampler controlled, whose groups train to the end)",
    )
    search.add_argument("--seed", type=at_least(0), default=0, help="seeds the sampler and every trial's training")
    search.add_argument(
        "--seeds-per-trial",
        type=at_least(1),
        default=1,
        metavar="K",
        help="train each trial on seeds SEED..SEED+K-1; its value is their mean validation score (default 1)",
    )
    search.add_argument(
        "--race-p",
        type=probability,
        default=0.1,
        help="with --seeds-per-trial: after each seed, stop a trial that a one-sided Wilcoxon test on the shared "
        "seeds finds worse than the best trial at this p (default 0.1: possible from the 4th seed; 0: no race)",
    )
    search.add_argument(
        "--confirm-top",
        type=at_least(0),
        default=0,
        metavar="N",
        help="once the trials are done, retrain the N best on fresh seeds (validation only); the best mean is the "
        "confirmed winner that evaluate --from-study takes (default 0: no confirmation)",
    )
    search.add_argument(
        "--confirm-seeds",
        type=at_least(2),
        default=5,
        metavar="M",
        help="fresh seeds per confirmed trial (default 5)",
    )
    add_worker_flags(search, "trials trained")
    add_storage_flags(search)
    add_config_flags(search, skip=("seed",))
    search.set_defaults(func=cmd_search)


def add_pretrain_command(commands) -> None:
    pretrain = commands.add_parser(
        "pretrain",
        help="self-supervised pre-training (attribute masking) on a SMILES corpus",
        description="Pre-trains the encoders and blocks of the given model config by masked-atom prediction "
        "(and masked-bond prediction, with --mask-bonds). "
        "--dataset names the downstream dataset whose validation and test molecules are removed from the corpus.",
    )
    pretrain.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="SMILES file (csv or csv.gz), e.g. ../shared/data/zinc-moses/train.csv.gz",
    )
    pretrain.add_argument("--out", type=Path, required=True, help="folder for pretrained.pt and pretrained.json")
    pretrain.add_argument(
        "--corpus-smiles-column",
        dest="smiles_column_corpus",
        help="the corpus's SMILES column (default: 'smiles', any case)",
    )
    pretrain.add_argument("--max-molecules", type=at_least(2), help="read only the corpus's first N molecules")
    pretrain.add_argument("--mask-rate", type=fraction, default=0.15, help="fraction of atoms masked (default 0.15)")
    pretrain.add_argument(
        "--mask-bonds",
        action="store_true",
        help="also mask the bonds touching masked atoms and predict their bond type (Hu et al.'s edge masking)",
    )
    pretrain.add_argument(
        "--exclude-datasets",
        help="comma-separated downstream datasets (built with --source) whose validation and test "
        "molecules leave the corpus; default: --dataset, if given",
    )
    add_config_flags(pretrain)
    pretrain.set_defaults(func=cmd_pretrain)


def add_dashboard_command(commands) -> None:
    dashboard = commands.add_parser("dashboard", help="serve optuna-dashboard on the study storage")
    add_storage_flags(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=port_number, default=8080)
    dashboard.set_defaults(func=cmd_dashboard)


def add_ablate_command(commands) -> None:
    ablate = commands.add_parser("ablate", help="run a multi-seed ablation (ablations/*.yaml) as an Optuna study")
    ablate.add_argument(
        "file",
        type=Path,
        help="ablation definition, e.g. ablations/convolution.yaml (with --from-study: the file written)",
    )
    ablate.add_argument(
        "--from-study",
        metavar="SEARCH",
        help="write FILE: an ablation whose baseline is this search study's answer (its confirmed winner, else its "
        "best trial) and whose variants each put back one searched field it changed from the reference config",
    )
    ablate.add_argument(
        "--reference",
        type=Path,
        metavar="CONFIG",
        help="with --from-study: the run config (YAML) to put fields back from (default: the default config)",
    )
    ablate.add_argument("--run", action="store_true", help="with --from-study: run the ablation it writes, too")
    ablate.add_argument("--study", help="study name (default: the file's name)")
    ablate.add_argument("--seeds", help="override the file's seeds, e.g. 0-4")
    ablate.add_argument("--epochs", type=at_least(1), help="override the file's epoch budget")
    ablate.add_argument("--device", help="training device (default auto)")
    ablate.add_argument(
        "--suite",
        choices=("cpu", "gpu"),
        help="run on a packaged dataset suite instead of the file's datasets: "
        "cpu = bbbp, clintox, tox21, esol, freesolv (build offline with --source); gpu = hiv, pcba",
    )
    add_worker_flags(ablate, "runs trained")
    add_storage_flags(ablate)
    add_dataset_flags(ablate)
    ablate.set_defaults(func=cmd_ablate)


def add_report_command(commands) -> None:
    report = commands.add_parser("report", help="write an HTML + Markdown report of ablation and search studies")
    report.add_argument("studies", nargs="+", metavar="STUDY")
    report.add_argument("--out", type=Path, help="output folder (default reports/<study names>)")
    add_storage_flags(report, many=True)
    report.set_defaults(func=cmd_report)


def add_bench_command(commands) -> None:
    bench = commands.add_parser(
        "bench",
        help="training throughput: device-resident batches vs PyG DataLoader",
        description="Times one training epoch (after warm-up) of the given model on the given dataset, by both "
        "data paths, plus dataset/PE cache build times. "
        "Example: ggt-search bench --dataset ogbg-molhiv --source ../shared/data/moleculenet",
    )
    add_config_flags(bench)
    bench.add_argument(
        "--concurrent",
        type=at_least(1),
        default=1,
        help="also run K trainings at once on the device and report total graphs/s",
    )
    bench.add_argument("--max-graphs", type=at_least(2), help="time only this many training graphs (for slow CPUs)")
    bench.add_argument("--no-baseline", action="store_true", help="skip the PyG DataLoader baseline")
    bench.add_argument(
        "--repeats",
        type=at_least(1),
        default=3,
        help="timed epochs per path, taking turns; the fastest counts (default 3)",
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="also profile 20 steps: wall vs device time per step, launches, syncs (profile.txt)",
    )
    bench.add_argument("--out", type=Path, help="folder for bench.json and bench.md")
    bench.set_defaults(func=cmd_bench)


COMMANDS = (
    add_data_command,
    add_train_command,
    add_evaluate_command,
    add_search_command,
    add_dashboard_command,
    add_ablate_command,
    add_report_command,
    add_bench_command,
    add_pretrain_command,
)


def build_parser() -> argparse.ArgumentParser:
    from ggt_search import __version__

    parser = Parser(
        prog="ggt-search", description="Architecture search and ablations for Gated Graph Transformers on molecules."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def check_paths(args: argparse.Namespace) -> None:
    """Every folder and storage the user named, checked once, before the command makes anything."""
    from ggt_search.files import check_folder

    for flag in ("out", "artifacts"):
        if getattr(args, flag, None) is not None:
            check_folder(getattr(args, flag), f"--{flag}")
    if getattr(args, "storage", None) is not None:
        from ggt_search.storage import check_storage

        for storage in args.storage if isinstance(args.storage, list) else [args.storage]:  # report takes several
            check_storage(storage)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "name", None) is not None and args.command == "data":
        args.dataset = args.name
    try:
        check_paths(args)
        args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file-system fault no command foresaw (a full disk, a read-only folder): one line
        user_error = file_error(error)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: what had finished is recorded; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
