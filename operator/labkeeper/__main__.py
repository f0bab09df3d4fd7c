"""`labkeeper operator` and `labkeeper agent` entry points."""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: labkeeper {operator|agent} [options]")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "operator":
        from labkeeper.controller.main import main as run_operator

        return run_operator(rest)
    if command == "agent":
        from labkeeper.agent.main import main as run_agent

        return run_agent(rest)
    print(f"labkeeper: unknown command {command!r}; expected 'operator' or 'agent'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
