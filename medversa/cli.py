"""The ``medversa`` command: one entry point, a sub-command group per room."""

from __future__ import annotations

import logging
import os
import warnings

import typer

from medversa.benchmarks.cli import bench_app
from medversa.inference.cli import model_app
from medversa.node.cli import ask, config_app, infer, retry, serve, status, worker
from medversa.training.cli import train
from medversa.training.eval_cli import eval_command

app = typer.Typer(
    help="medversa-node: a DICOM AI node running MedVersa (not for clinical use without validation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model_app, name="model")
app.add_typer(bench_app, name="bench")
app.command("infer")(infer)
app.command("ask")(ask)
app.command("serve")(serve)
app.command("worker")(worker)
app.command("status")(status)
app.command("retry")(retry)
app.add_typer(config_app, name="config")
app.command("train")(train)
app.command("eval")(eval_command)


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Never reach for a model hub: everything loads from local paths.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not verbose:  # known third-party warnings the user cannot act on; --verbose shows them
        # peft 0.21's PeftModel.__init__ reads transformers 5's deprecated is_gradient_checkpointing
        # alias on every model load (inference.model.build_llm); nothing in our code uses it.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning, module=r"transformers\.modeling_utils")
        # highdicom warns when a person name has one component; result objects copy the patient's
        # and referring physician's names from the source images unchanged (PS3.3 C.7.1.1, C.7.2.1),
        # so such a name belongs to the input and is not ours to correct.
        warnings.filterwarnings("ignore", message=r'The string ".*" is unlikely to represent the intended person name',
                                category=UserWarning, module=r"highdicom\.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
