"""``python -m utils.preservation STEP``: the workflow steps (see :mod:`utils.preservation.steps`)."""

from utils.cli import run_command
from utils.preservation.steps import steps

if __name__ == "__main__":
    run_command(steps)
