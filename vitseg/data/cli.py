"""`vitseg data check ROOT`: dataset statistics and a list of every bad file."""
from __future__ import annotations

import argparse
import sys

from .datasets import DATASET_TYPES


def add_parser(sub) -> None:
    """Add the `data` command (subcommand `check`) to the vitseg CLI."""
    data = sub.add_parser("data", help="inspect datasets on disk",
                          description="Inspect datasets on disk. See `vitseg data check --help`.")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    def show_help(args) -> int:
        data.print_help()
        return 2

    data.set_defaults(func=show_help)

    p = data_sub.add_parser(
        "check", help="class histogram, label values, size agreement and bad files of a dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read every image and label of a dataset and print, per split: the number of images, their "
        "sizes, the stored label values, the pixels per class (after the dataset's label remap) and whether "
        "image and label sizes agree. Every bad file is named (unreadable or missing files, size mismatches, "
        "label values that are not classes); the check does not stop at the first one.\n\n"
        "Exit status: 0 when no problem was found, 3 otherwise.",
        epilog="examples:\n"
        "  vitseg data check data/camvid\n"
        "  vitseg data check data/ade/ADEChallengeData2016 --type ade20k --splits validation\n"
        "  vitseg data check data/cityscapes --type cityscapes")
    p.add_argument("root", help="dataset folder (our layout: ROOT/images/<split>/, ROOT/labels/<split>/)")
    p.add_argument("--type", default="folder", choices=list(DATASET_TYPES), metavar="TYPE",
                   help=f"dataset layout, one of: {', '.join(DATASET_TYPES)} (default: folder)")
    p.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                   help="splits to check (default: every folder under ROOT/images, or the layout's standard splits)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="class count for a folder dataset without classes.txt / meta.json")
    p.add_argument("--reduce-zero-label", action="store_true",
                   help="folder datasets: stored 0 means 'other' (ignored) and k means class k-1")
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from .check import check_dataset
    kwargs = {}
    if args.type in ("folder", "camvid"):
        if args.num_classes:
            kwargs["num_classes"] = args.num_classes
        if args.reduce_zero_label:
            kwargs["reduce_zero_label"] = True
    report = check_dataset(args.root, args.type, args.splits, progress=sys.stderr.isatty(), **kwargs)
    print(report.summary())
    return 0 if report.ok else 3
