"""``rlpost make-task NAME --out DIR``: write an offline task's train/eval splits as jsonl."""

from __future__ import annotations

import argparse
import sys

from envs.base import make_task_file


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "make-task",
        help="write an offline task (prompts + answers) as train.jsonl / eval.jsonl",
        description="Built-in tasks: arithmetic, countdown, chain, gsm8k; options go in the "
        "name, e.g. 'arithmetic?digits=1&ops=+' (quote it in the shell).",
    )
    p.add_argument("name", help="task name with options, e.g. 'countdown?count=4'")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=2000, help="train rows (default 2000)")
    p.add_argument("--eval-n", type=int, default=200, help="eval rows (default 200)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    p.set_defaults(func=run_make_task)
    return p


def run_make_task(args: argparse.Namespace) -> int:
    if args.n < 1 or args.eval_n < 0:
        print(
            f"make-task: --n must be >= 1 and --eval-n >= 0, got {args.n}, {args.eval_n}",
            file=sys.stderr,
        )
        return 2
    try:
        paths = make_task_file(args.name, args.out, n=args.n, seed=args.seed, eval_n=args.eval_n)
    except (KeyError, ValueError, FileNotFoundError, AttributeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"make-task: {msg}", file=sys.stderr)
        return 2
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlpost.commands.make_task")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
