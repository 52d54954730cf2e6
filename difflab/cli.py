"""The ``difflab`` command line: ``generate | train | eval | bench | serve | info``.

Each command validates its arguments first and prints one clear line on bad input (exit code 2),
never a traceback. Heavy imports happen inside the commands so ``difflab --help`` is instant.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="difflab: train, sample, edit and evaluate diffusion models.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: difflab beside the reference libraries.")
app.add_typer(bench_app, name="bench")


def fail(message: str) -> None:
    """Print one line to stderr and exit with status 2 (bad usage)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command()
def info() -> None:
    """Print versions and the samplers, schedules and devices difflab sees."""
    import torch

    import difflab

    typer.echo(f"difflab {difflab.__version__}, torch {torch.__version__}, "
               f"cuda {'yes' if torch.cuda.is_available() else 'no'}, threads {torch.get_num_threads()}")
    typer.echo("samplers: " + ", ".join(difflab.SAMPLERS))


# --- bench commands -------------------------------------------------------------------------


# --- eval command ---------------------------------------------------------------------------


def main() -> None:
    app()
