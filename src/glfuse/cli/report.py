"""``glfuse report DIR``: (re)build ``DIR/report.html`` from the CSV/JSON files of a run or output folder.

Works on training runs (log.json), ``classify evaluate`` / ``stage evaluate`` / ``fuse compare`` output folders and
``stage ablate`` folders; a folder holding several of these gets one page with all of them.

Examples:
  glfuse report runs/covid_tiny
  glfuse report runs/covid_tiny/test
  glfuse report out/compare --output compare.html
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="(re)build the HTML report of a run or output folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="run folder or output folder of a glfuse command")
    p.add_argument("--output", "-o", default=None, help="HTML file to write (default FOLDER/report.html)")
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glfuse.reports import build_report, report_kinds

    path = build_report(args.folder, args.output, title=args.title)
    print(f"report ({', '.join(report_kinds(args.folder))}): {path}")
    return 0
