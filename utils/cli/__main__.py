"""``python -m utils.cli``: the ``agc`` command."""

from utils.cli import main

if __name__ == "__main__":
    main()
