"""Command line: `python -m data_prep <job> --help`."""

from __future__ import annotations

import argparse
import shlex
import sys

from data_prep import amazon, default_job, embed_items, logs_job, synthetic_industrial, verify
from data_prep.integrity import IntegrityError
from data_prep.limits import limits_from_args
from data_prep.rejects import DataPrepError

JOBS = {
    "default": (
        default_job,
        "build the embedded synthetic default dataset (skips when up to date)",
    ),
    "logs": (logs_job, "generic click logs + item table -> prepared folder"),
    "embed-items": (embed_items, "item table with titles -> item table with mm_vector"),
    "synthetic-industrial": (
        synthetic_industrial,
        "industrial-shaped synthetic raw logs (+ the logs job)",
    ),
    "amazon": (amazon, "Amazon 2014 reviews + metadata -> prepared folder (DIN-style protocol)"),
    "verify": (verify, "check a prepared folder against its manifest (sizes and sha256)"),
}
# What an unusable input or output raises: reported in one line, without a traceback.
# (OSError: a path that is missing, not a folder, not writable..., named by its message.)
USER_ERRORS = (DataPrepError, IntegrityError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    sub = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    for name, (module, help_text) in JOBS.items():
        job_parser = sub.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(job_parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a job; a bad input raises (DataPrepError, IntegrityError...), see `cli`."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "min_timestamp"):
        try:
            limits_from_args(args)
        except ValueError as error:
            parser.error(str(error))
    JOBS[args.job][0].main(args, "python -m data_prep " + shlex.join(argv))
    # Only after success: on a failure the launcher tears the ranks down, and a barrier
    # here could pair with another rank's unrelated collective.
    _leave_process_group()


def _leave_process_group() -> None:
    """Tear down the gloo group of a `--distributed` run before the interpreter exits:
    a live group at exit races gloo's threads and aborts ("terminate called without an
    active exception"), failing a job whose output is already complete."""
    if "torch.distributed" not in sys.modules:  # no group without it; importing torch costs 2 s
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cli(argv: list[str] | None = None) -> int:
    """The command line: `main`, with an unusable input reported as one line naming it
    (file, line, reason) and exit status 1 instead of a traceback."""
    try:
        main(argv)
    except USER_ERRORS as error:
        print(f"python -m data_prep: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
