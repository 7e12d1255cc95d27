"""Classification metrics per head and per language, as a JSON-able dict and a rich table.

Written out rather than taken from scikit-learn so that the engine carries no extra
dependency, and so that the dict keeps one fixed shape: every label of the model appears in
per_class and in the confusion matrix, even in a language slice where it never occurs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from rich.console import Group
from rich.table import Table

_LABEL_WIDTH = 12  # confusion-matrix column headers are cut to this many characters


def classification_report(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and confusion[gold][pred].

    Macro-F1 averages over the labels that occur in gold or pred (scikit-learn's default):
    a label absent from both says nothing about this slice and would only drag the mean to 0.
    Precision or recall with a zero denominator counts as 0.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        raise ValueError("no rows to evaluate")
    labels = _with_extra_labels(labels, gold, pred)
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred):
        confusion[index[g]][index[p]] += 1

    per_class: dict[str, dict[str, float | int]] = {}
    present_f1: list[float] = []
    for i, label in enumerate(labels):
        hits, support, predicted = confusion[i][i], sum(confusion[i]), sum(row[i] for row in confusion)
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support or predicted:
            present_f1.append(f1)
    return {
        "n": len(gold),
        "accuracy": sum(confusion[i][i] for i in range(len(labels))) / len(gold),
        "macro_f1": fmean(present_f1),
        "labels": labels,
        "per_class": per_class,
        "confusion": confusion,
    }


def _with_extra_labels(labels: Sequence[str], *seen: Sequence[str]) -> list[str]:
    """The model's labels, then any others found in the data (e.g. a dev topic unseen in training)."""
    known = set(labels)
    return [*labels, *sorted({label for values in seen for label in values} - known)]


def evaluate(
    gold: Mapping[str, Sequence[str | None]],
    pred: Mapping[str, Sequence[str]],
    langs: Sequence[str],
    labels: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """{head: {"all": report, "by_lang": {lang: report}}} over the rows with a gold label.

    gold[head][i] is None where row i has no label for that head (it is then skipped for that
    head only); a head without any gold label is left out. labels[head] fixes the label order.
    """
    result: dict[str, Any] = {}
    for head, head_gold in gold.items():
        if not len(head_gold) == len(pred[head]) == len(langs):
            raise ValueError(f"{head}: {len(head_gold)} gold, {len(pred[head])} predictions, {len(langs)} langs")
        keep = [i for i, g in enumerate(head_gold) if g is not None]
        if not keep:
            continue
        g = [head_gold[i] for i in keep]
        p = [pred[head][i] for i in keep]
        names = _with_extra_labels((labels or {}).get(head, ()), g, p)
        by_lang: dict[str, dict[str, Any]] = {}
        for lang in sorted({langs[i] for i in keep}):
            rows = [j for j, i in enumerate(keep) if langs[i] == lang]
            by_lang[lang] = classification_report([g[j] for j in rows], [p[j] for j in rows], names)
        result[head] = {"all": classification_report(g, p, names), "by_lang": by_lang}
    return result


def mean_macro_f1(report: Mapping[str, Any]) -> float:
    """One number to select a checkpoint on: the heads' overall macro-F1s, averaged."""
    return fmean(section["all"]["macro_f1"] for section in report.values())


def render_report(report: Mapping[str, Any], title: str = "dev") -> Group:
    """A summary table (head x language) followed by per-class and confusion tables per head."""
    summary = Table(title=f"{title}: accuracy and macro-F1")
    for column in ("head", "lang", "n", "accuracy", "macro-F1"):
        summary.add_column(column, justify="left" if column in ("head", "lang") else "right")
    tables: list[Table] = [summary]
    for head, section in report.items():
        for lang, metrics in (("all", section["all"]), *section["by_lang"].items()):
            summary.add_row(head, lang, str(metrics["n"]), f"{metrics['accuracy']:.3f}", f"{metrics['macro_f1']:.3f}")
        summary.add_section()
        tables += [_per_class_table(head, section["all"]), _confusion_table(head, section["all"])]
    return Group(*tables)


def _per_class_table(head: str, metrics: Mapping[str, Any]) -> Table:
    table = Table(title=f"{head}: per class (all languages)")
    table.add_column("label")
    for column in ("precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    for label, m in metrics["per_class"].items():
        table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    return table


def _confusion_table(head: str, metrics: Mapping[str, Any]) -> Table:
    table = Table(title=f"{head}: confusion (rows gold, columns predicted)")
    table.add_column("gold \\ pred")
    for label in metrics["labels"]:
        table.add_column(label[:_LABEL_WIDTH], justify="right")
    for label, row in zip(metrics["labels"], metrics["confusion"]):
        table.add_row(label, *map(str, row))
    return table
