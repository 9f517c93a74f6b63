"""``python -m utils.preservation STEP``: the workflow steps (see :mod:`utils.preservation.steps`)."""

import sys

import click

from utils.errors import AGCError
from utils.preservation.steps import steps


def main() -> None:
    try:
        steps(standalone_mode=False)
    except AGCError as err:
        click.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
