"""Command line of the harness: argument parsing and calls into ``harness``; no logic of its own.

    python run.py --model clip_multimodal --folds 3
    python run.py --model clip_multimodal --config my.yaml model.freeze_clip=false train.lr=3e-4
    python run.py --list-models
    python run.py tune --model clip_multimodal --folds 3 --trials 30
    python run.py ensemble --runs ID1,ID2 --method weighted_mean --weights optimize
    python run.py leaderboard --dataset views --format md
    python run.py score submissions/clip_multimodal-1a2b3c4d.csv --dataset views [--private]
"""

from __future__ import annotations

import argparse
import sys

from harness.errors import HarnessError

DATA_HELP = "directory with real data in the dataset's format (default: embedded data)"


def cv_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Cross-validate a registered model family and write a submission. "
        "Other commands: run.py tune|ensemble|leaderboard|score --help.",
        epilog="Overrides: key=value pairs such as train.lr=3e-4, model.freeze_clip=false, "
        "data.options.columns.id=video_id.",
    )
    parser.add_argument("--model", help="registered model family (see --list-models)")
    parser.add_argument("--folds", type=int, help="number of CV folds (default 3)")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--config", help="YAML file with run, data, train and model settings")
    parser.add_argument("--seed", type=int, help="seed for initialisation and shuffling, and the folds (default 42)")
    parser.add_argument("--fold-seed", type=int, help="seed for the fold split only (default: --seed); runs that "
                        "share it share a fold file and blend")  # fmt: skip
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--workers", type=int, help="run this many folds at once, one process each (default 1)")
    parser.add_argument("--devices", help="comma-separated devices, one fold worker each (e.g. cuda:0,cuda:1)")
    parser.add_argument("--params", metavar="best", choices=("best",), help="start from the best tuned params")
    parser.add_argument("--resume", metavar="RUN", help="continue an interrupted run: its name (<model>-<id>) or 'last'")
    parser.add_argument("--list-models", action="store_true", help="list the registered model families and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def tune_parser() -> argparse.ArgumentParser:
    parser = cv_parser()
    parser.prog = "run.py tune"
    parser.description = "Tune a family's search space with Optuna, pruning on fold scores."
    parser.add_argument("--trials", type=int, default=30, help="total trials of the study, across all workers")
    parser.add_argument("--study", help="study name (default <model>-<dataset>); an existing study resumes")
    parser.add_argument("--storage", help="RDB URL shared by workers (default sqlite:///leaderboard/optuna.db)")
    return parser


def ensemble_parser() -> argparse.ArgumentParser:
    from harness.blending import METHODS, STACKERS

    parser = argparse.ArgumentParser(prog="run.py ensemble", description="Blend CV runs into a submission.")
    members = parser.add_mutually_exclusive_group(required=True)
    members.add_argument("--runs", help="comma-separated MLflow run ids of CV runs")
    members.add_argument("--top", type=int, help="the N best CV runs of --dataset on one fold file")
    parser.add_argument("--dataset", default="views", help="dataset of --top (default views)")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--weights", help="weighted_mean: comma-separated weights, or 'optimize' (fitted on OOF)")
    parser.add_argument("--stacker", choices=STACKERS, default="ridge", help="stacking: level-2 model")
    parser.add_argument("--fold-models", action="store_true", help="blend the fold models of the one run in --runs")
    parser.add_argument("--use-best-checkpoint", choices=("true", "false"), default="true",
                        help="with --fold-models: best-epoch weights (true) or last-epoch weights (false)")  # fmt: skip
    return parser


def leaderboard_parser() -> argparse.ArgumentParser:
    from harness.leaderboard import BOARDS

    parser = argparse.ArgumentParser(prog="run.py leaderboard", description="Rank CV runs and ensembles.")
    parser.add_argument("--dataset", help="only this dataset")
    parser.add_argument("--metric", help="only runs scored with this metric")
    parser.add_argument("--all-data", action="store_true", help="rank runs on different data fingerprints together")
    parser.add_argument("--board", default="cv", choices=BOARDS,
                        help="rank by CV score (default) or by the public / private score of scored submissions")
    parser.add_argument("--format", default="table", choices=("table", "csv", "md"))
    parser.add_argument("--plot", metavar="PATH", help="also write a PNG comparison plot")
    return parser


def score_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py score",
        description="Check a submission file against the dataset's format and score it on the held-out test "
        "labels: the public board's score, and the private one with --private. Logged to MLflow.",
    )
    parser.add_argument("submission", metavar="SUBMISSION.csv")
    parser.add_argument("--dataset", required=True, help="the dataset the file answers (e.g. views, movielens)")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--metric", help="any metric of the task (default: the dataset's)")
    parser.add_argument("--labels", metavar="FILE", help="the test targets in the submission's format, for test "
                        "files without them (default: test_labels.csv in the data directory)")  # fmt: skip
    parser.add_argument("--private", action="store_true", help="also print the private board's score")
    parser.add_argument("overrides", nargs="*", metavar="data.options.key=value",
                        help="reader options, as for a CV run")  # fmt: skip
    return parser


def list_models_table() -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.registry import get_model_entry, list_models

    table = Table(title="registered model families")
    for column in ("model", "task", "default dataset", "description"):
        table.add_column(column)
    for name in list_models():
        entry = get_model_entry(name)
        table.add_row(name, entry.task.value, entry.dataset, entry.description)
    Console().print(table)


def config_layers(args: argparse.Namespace) -> tuple:
    """YAML < best tuned params < key=value < flags."""
    from harness.config import load_yaml, parse_overrides

    if not args.model:
        raise HarnessError("--model is required (see --list-models).")
    flags = {"folds": args.folds, "seed": args.seed, "fold_seed": args.fold_seed, "device": args.device,
             "workers": args.workers, "devices": args.devices, "data": {"dir": args.data}}  # fmt: skip
    best = None
    if args.params == "best":
        from harness.tune import load_best_params

        best = load_best_params(args.model)
    return (
        load_yaml(args.config) if args.config else None,
        best,
        parse_overrides(args.overrides),
        flags,
    )


def cross_validate(args: argparse.Namespace) -> None:
    if args.list_models:
        return list_models_table()
    from harness.cv import make_run_config, run_cv

    run_cv(make_run_config(args.model, *config_layers(args)), resume=args.resume)


def tune(args: argparse.Namespace) -> None:
    from harness.tune import tune as run_study

    if args.resume:
        raise HarnessError("--resume continues a CV run; a study resumes by name with --study.")

    result = run_study(args.model, args.trials, layers=config_layers(args), study_name=args.study, storage=args.storage)
    print(f"study {result['study']}: {result['n_complete']} complete, {result['n_pruned']} pruned, "
          f"{result['n_failed']} failed; best {result['best_value']:.4f} with {result['best_params']}")  # fmt: skip
    print(f"best params: {result['best_params_path']} (reuse with --params best)")


def ensemble(args: argparse.Namespace) -> None:
    from harness.ensemble import fold_ensemble, run_ensemble, top_runs

    run_ids = args.runs.split(",") if args.runs else top_runs(args.dataset, args.top)
    weights = args.weights
    if weights is not None and weights != "optimize":
        try:
            weights = [float(w) for w in weights.split(",")]
        except ValueError:
            raise HarnessError(f"--weights must be comma-separated numbers or 'optimize', got {args.weights!r}.") from None
    if args.fold_models:
        if len(run_ids) != 1 or weights == "optimize":
            raise HarnessError("--fold-models blends the folds of exactly one run (--runs ID), with given weights.")
        fold_ensemble(run_ids[0], args.method, use_best_checkpoint=args.use_best_checkpoint == "true", weights=weights)
        return
    run_ensemble(run_ids, args.method, weights=weights, stacker=args.stacker)


def leaderboard(args: argparse.Namespace) -> None:
    from harness.leaderboard import leaderboard as build, plot, render

    frame = build(dataset=args.dataset, metric=args.metric, all_data=args.all_data, board=args.board)
    print(render(frame, args.format, board=args.board))
    if args.plot:
        print(f"plot: {plot(frame, args.plot, board=args.board)}")


def score(args: argparse.Namespace) -> None:
    from harness.config import parse_overrides
    from harness.scoring import reader_options, score_submission

    score_submission(args.submission, args.dataset, args.data, metric=args.metric, labels=args.labels,
                     private=args.private, reader_options=reader_options(parse_overrides(args.overrides)))  # fmt: skip


COMMANDS = {
    "tune": (tune_parser, tune),
    "ensemble": (ensemble_parser, ensemble),
    "leaderboard": (leaderboard_parser, leaderboard),
    "score": (score_parser, score),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    make_parser, command = COMMANDS.get(argv[0], (cv_parser, cross_validate)) if argv else (cv_parser, cross_validate)
    args = make_parser().parse_intermixed_args(argv[1:] if argv and argv[0] in COMMANDS else argv)
    try:
        command(args)
        return 0
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
