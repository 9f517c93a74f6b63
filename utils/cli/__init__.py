"""``agc``: one namespaced command whose subcommands follow the pipeline's order.

Every click command of the project lives in this package, one module per stage; a subcommand's
module is imported only when it is used, so that ``agc --help`` stays fast.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import logging
import sys

import click

from utils.errors import AGCError

# name -> "module:attribute", in pipeline order
SUBCOMMANDS: dict[str, str] = {
    "generate": "utils.cli.generate:generate",
    "datasets": "utils.cli.datasets:datasets",
    "serve-data": "utils.cli.datasets:serve_data",
    "servicex-endpoint": "utils.cli.delivery:endpoint",
    "run": "utils.cli.run:run",
    "fit": "utils.cli.inference:fit",
    "validate": "utils.cli.inference:validate",
    "train": "utils.cli.train:train",
    "benchmark": "utils.cli.benchmark:benchmark",
    "benchmark-remote": "utils.cli.benchmark:benchmark_remote",
    "publish": "utils.cli.preservation:publish",
    "reinterpret": "utils.cli.preservation:reinterpret",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in SUBCOMMANDS if self._available(name)]

    @staticmethod
    def _available(name: str) -> bool:
        module = SUBCOMMANDS[name].split(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS or not self._available(name):
            return None
        module, attr = SUBCOMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """The AGC CMS open data ttbar analysis."""
    configure_logging(verbose)


#: libraries whose INFO messages are details of ours (cabinetry logs every template and fit step;
#: papermill names the notebook, folder and kernel that ``agc run`` has already named)
QUIET_LIBRARIES = ("cabinetry", "pyhf", "distributed", "numba", "matplotlib", "servicex", "httpx", "papermill")


def configure_logging(verbose: bool) -> None:
    """The project's INFO messages (DEBUG with ``verbose``), and only the warnings of the
    libraries it drives (everything with ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)


def run_command(command: click.Command) -> None:
    """Run a click command as a program: project errors, and the operating system's refusals
    (full disk, read-only folder, not a file), print one red line (exit 2), not a traceback;
    Ctrl-C stops with one line and exit 130."""
    try:
        command(standalone_mode=False)
    except AGCError as err:
        click.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
    except OSError as err:
        click.secho(f"error: {os_error_message(err)}", fg="red", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _quiet_teardown()
        click.secho("interrupted: stopped; the output folder holds no manifest (an incomplete run)", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)


def _quiet_teardown() -> None:
    """After Ctrl-C the kernel and worker clients are torn down half-way: their event loops and
    sockets report errors while the interpreter exits. They say nothing the user needs."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda _unraisable: None


def os_error_message(err: OSError) -> str:
    """One line for an operating-system error: the file, what went wrong, what to do."""
    hints = {
        errno.ENOSPC: "free space on that disk or choose another --output",
        errno.EFBIG: "the file grew past the allowed size; free space or raise the limit",
        errno.EROFS: "the folder is read-only; choose a writable --output",
        errno.EACCES: "no permission; choose a writable --output or fix the permissions",
        errno.EISDIR: "a folder was given where a file is expected",
    }
    where = err.filename if err.filename is not None else "(no file named)"
    what = err.strerror or str(err)
    hint = hints.get(err.errno) if err.errno is not None else None
    return f"{where}: {what}" + (f"; {hint}" if hint else "")


def main() -> None:
    run_command(cli)


if __name__ == "__main__":
    main()
