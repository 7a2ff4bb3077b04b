"""Feature metadata for the Dagster UI: per-feature statistics and correlations, on a sample."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from instarec_assets.lake.feature_delta import Locate, feature_source

SAMPLE_ROWS = 200_000
TOP_PAIRS = 10
# Per column (feature, count, mean, std, min, max, null_share): the frame's values reach tabulate as floats.
STATS_FORMATS = ("", ".0f", ".4g", ".4g", ".4g", ".4g", ".4f")

DESCRIBE_SQL = "DESCRIBE SELECT * FROM {source}"
SAMPLE_SQL = """
SELECT {columns}
FROM {source}
USING SAMPLE reservoir({rows} ROWS) REPEATABLE (7)
"""


def feature_summary(
    conn: duckdb.DuckDBPyConnection,
    staged_path: Path | str,
    feature_columns: Sequence[str],
    sample_rows: int = SAMPLE_ROWS,
    locate: Locate | None = None,
) -> tuple[str, str]:
    """(stats, correlation) markdown tables, computed on a reservoir sample to stay cheap at full size.

    stats: count, mean, std, min, max and null share per feature. correlation: the Pearson correlation
    of each feature with `label` (when the file has labels), then the most correlated feature pairs.
    A delta file is summarised as the table it resolves to (`locate`: lake/feature_delta.py).
    """
    source = feature_source(conn, staged_path, locate)
    names = [row[0] for row in conn.execute(DESCRIBE_SQL.format(source=source)).fetchall()]
    columns = [*feature_columns, "label"] if "label" in names else list(feature_columns)
    sample = conn.execute(
        SAMPLE_SQL.format(
            columns=", ".join(f'"{column}"' for column in columns), source=source, rows=int(sample_rows)
        )
    ).df()
    features = sample[list(feature_columns)].astype("float64")
    stats = pd.DataFrame(
        {
            "count": features.notna().sum(),
            "mean": features.mean(),
            "std": features.std(),
            "min": features.min(),
            "max": features.max(),
            "null_share": features.isna().mean(),
        }
    )
    stats.index.name = "feature"
    return stats.to_markdown(floatfmt=STATS_FORMATS), _correlations(features, sample.get("label"))


def _correlations(features: pd.DataFrame, label: pd.Series | None) -> str:
    parts = []
    if label is not None and label.notna().any():
        with_label = features.corrwith(label.astype("float64")).rename("pearson_with_label")
        order = with_label.abs().sort_values(ascending=False, na_position="last").index
        parts.append(with_label.loc[order].to_frame().rename_axis("feature").to_markdown(floatfmt=".4f"))
    matrix = features.corr()
    upper = matrix.where(np.triu(np.ones(matrix.shape, dtype=bool), k=1)).stack()
    pairs = upper.reindex(upper.abs().sort_values(ascending=False).index).head(TOP_PAIRS)
    table = pd.DataFrame(
        {
            "feature_a": [a for a, _ in pairs.index],
            "feature_b": [b for _, b in pairs.index],
            "pearson": pairs.to_numpy(),
        }
    )
    parts.append(table.to_markdown(index=False, floatfmt=".4f"))
    return "\n\n".join(parts)
