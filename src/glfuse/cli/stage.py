"""`glfuse stage` (being built)."""


def add_parser(sub) -> None:
    p = sub.add_parser("stage", help="(being built)")
    p.set_defaults(func=lambda args: print("glfuse stage: not available yet"))
