"""`glfuse demo` (being built)."""


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="(being built)")
    p.set_defaults(func=lambda args: print("glfuse demo: not available yet"))
