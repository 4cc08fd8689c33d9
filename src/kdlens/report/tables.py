"""Result rows as console tables and CSV."""

from __future__ import annotations

from typing import Any

from kdlens.io import rows_to_csv  # noqa: F401  (re-exported: CSV text is written below the report)


def flatten_report(report: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{split: {metric: value}}`` -> ``{"split.metric": value}``; nested per-group dicts are left out."""
    return {
        f"{split}.{key}": value
        for split, metrics in report.items()
        for key, value in metrics.items()
        if not isinstance(value, dict)
    }


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] | None = None) -> str:
    """A plain-text table; ``columns`` are (title, key) pairs, default every key of the first row."""
    columns = columns or [(key, key) for key in rows[0]]
    header = [title for title, _ in columns]
    body = [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)
