"""``python -m reproduce --config FILE [--scale S] [key=value ...]``: your own item file, run and
checked as the shipped items are (``reproduce.runner``)."""

import sys

from reproduce.runner import main

if __name__ == "__main__":
    sys.exit(main(None))
