"""`glfuse classify` (being built)."""


def add_parser(sub) -> None:
    p = sub.add_parser("classify", help="(being built)")
    p.set_defaults(func=lambda args: print("glfuse classify: not available yet"))
