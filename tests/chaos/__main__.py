"""``python -m tests.chaos [--long] [--seed N] [--minutes M] ...`` from the repository root.

Prints the seed first, then a JSON summary; exit status 1 (with every violation and
the command that replays the seed) when the checker found one. See docs/proof.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import shutil
import sys
import tempfile

from .harness import LONG, SHORT, new_seed, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--long", action="store_true",
                        help=f"the long profile: rounds for --minutes ({LONG.minutes:g}), "
                        "with and without reattach")
    parser.add_argument("--seed", type=int, default=None,
                        help="replay this seed (default: SG_CHAOS_SEED, else a new one)")
    parser.add_argument("--minutes", type=float, help="how long the long profile runs")
    parser.add_argument("--sessions", type=int, help="sessions per round")
    parser.add_argument("--subscribers", type=int, help="subscribers per session")
    parser.add_argument("--steps", type=int, help="plan steps per session and round")
    parser.add_argument("--workdir", type=pathlib.Path,
                        help="where gateway logs and state go (default: a temporary folder, "
                        "kept when a violation is found)")
    args = parser.parse_args(argv)
    profile = LONG if args.long else SHORT
    changes = {name: value for name in ("minutes", "sessions", "subscribers", "steps")
               if (value := getattr(args, name)) is not None}
    if any(value <= 0 for value in changes.values()):
        parser.error("--minutes, --sessions, --subscribers and --steps must be > 0")
    profile = dataclasses.replace(profile, **changes)
    seed = new_seed() if args.seed is None else args.seed
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="sg-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: profile {profile.name}, seed {seed}, workdir {workdir}", flush=True)
    report = asyncio.run(run(profile, seed, workdir))
    print(report.text())
    if report.violations:
        replay = " ".join(["python -m tests.chaos", *(["--long"] if args.long else []),
                           f"--seed {seed}", *(f"--{k} {v:g}" for k, v in changes.items())])
        print(f"replay: {replay}")
        return 1
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
