"""``voxlm`` command line: ``voxlm info``, ``voxlm demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print voxlm, torch and CUDA versions, threads and build profile")
    demo = sub.add_parser("demo", help="run voxlm's main job on bundled data")
    demo.add_argument("--steps", type=int, default=60, help="training steps")
    demo.add_argument("--out", default="demo_out", help="folder for the demo's outputs")
    demo.add_argument("--no-meteor", action="store_true", help="skip METEOR (Java)")
    args = parser.parse_args(argv)

    if args.command == "info":
        from . import info

        print(info())
        return 0
    if args.command == "demo":
        from .demo import run

        run(steps=args.steps, out=args.out, meteor=False if args.no_meteor else None)
        return 0
    return 2
