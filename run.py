"""Command line of the harness: argument parsing and calls into ``harness``; no logic of its own.

    python run.py --model clip_multimodal --folds 3
    python run.py --model clip_multimodal --config my.yaml model.freeze_clip=false train.lr=3e-4
    python run.py --list-models
"""

from __future__ import annotations

import argparse
import sys

from harness.errors import HarnessError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Cross-validate a registered model family and write a submission.",
        epilog="Overrides: key=value pairs such as train.lr=3e-4, model.freeze_clip=false, "
        "data.options.columns.id=video_id.",
    )
    parser.add_argument("--model", help="registered model family (see --list-models)")
    parser.add_argument("--folds", type=int, help="number of CV folds (default 3)")
    parser.add_argument("--data", help="directory with real data in the dataset's format (default: embedded data)")
    parser.add_argument("--config", help="YAML file with run, data, train and model settings")
    parser.add_argument("--seed", type=int, help="seed for folds, initialisation and shuffling (default 42)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--list-models", action="store_true", help="list the registered model families and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list_models:
            list_models_table()
            return 0
        if not args.model:
            raise HarnessError("--model is required (see --list-models).")

        from harness.config import load_yaml, parse_overrides
        from harness.cv import make_run_config, run_cv

        flags = {"folds": args.folds, "seed": args.seed, "device": args.device, "data": {"dir": args.data}}
        config = make_run_config(
            args.model, load_yaml(args.config) if args.config else None, parse_overrides(args.overrides), flags
        )
        run_cv(config)
        return 0
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
