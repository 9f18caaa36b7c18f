"""``python -m overparam ...``: the book's command line (``overparam.book.cli``)."""

import sys

from overparam.book.cli import main

if __name__ == "__main__":
    sys.exit(main())
