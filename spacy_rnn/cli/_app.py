import typer

app = typer.Typer(
    name="spacy-rnn",
    help="spacy-rnn commands: corpus conversion, evaluation, compression.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """spacy-rnn commands: corpus conversion, evaluation, compression."""
