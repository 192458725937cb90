"""Run a command with extra arguments given as one shell-like string — a Make variable such as
``PYTEST_ARGS='-m "not slow"'`` — split as a shell splits words (quotes group them) but with
nothing evaluated: ``;``, ``$(...)`` and backquotes stay literal text.

    python scripts/exec_with_args.py COMMAND [ARG ...] -- "EXTRA ARGUMENTS"
"""

import os
import shlex
import sys


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == 0:
        print("exec_with_args: usage: exec_with_args.py COMMAND [ARG ...] -- 'EXTRA ARGUMENTS'", file=sys.stderr)
        return 2
    split = argv.index("--")
    command, extra = argv[:split], argv[split + 1:]
    try:
        words = [word for text in extra for word in shlex.split(text)]
    except ValueError as e:  # an unclosed quote
        print(f"exec_with_args: cannot split {' '.join(extra)!r}: {e}", file=sys.stderr)
        return 2
    os.execvp(command[0], command + words)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
