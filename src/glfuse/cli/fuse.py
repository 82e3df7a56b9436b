"""`glfuse fuse` (being built)."""


def add_parser(sub) -> None:
    p = sub.add_parser("fuse", help="(being built)")
    p.set_defaults(func=lambda args: print("glfuse fuse: not available yet"))
