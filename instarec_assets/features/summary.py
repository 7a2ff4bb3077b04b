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
# A row is sampled when the hash of its key falls in the first rows/total of the hash range: the
# same rows whatever the file's order or DuckDB's threads, chosen without carrying every row's
# columns through a reservoir (3.4 s for the resolved full-size training set; this: 1.3 s), in key
# order so that the sums behind the statistics add up the same way.
SAMPLE_SQL = "SELECT {columns} FROM {source} {where} ORDER BY user_id, product_id, eval_set"
SAMPLE_WHERE = "WHERE hash(user_id, product_id, eval_set) < {threshold}::UBIGINT"
COUNT_SQL = "SELECT count(*) FROM {source}"
HASH_RANGE = 1 << 64


def feature_summary(
    conn: duckdb.DuckDBPyConnection,
    staged_path: Path | str,
    feature_columns: Sequence[str],
    sample_rows: int = SAMPLE_ROWS,
    locate: Locate | None = None,
    total_rows: int | None = None,
) -> tuple[str, str]:
    """(stats, correlation) markdown tables, computed on a sample of about `sample_rows` rows (by a
    hash of the row's key) to stay cheap at full size.

    stats: count, mean, std, min, max and null share per feature. correlation: the Pearson correlation
    of each feature with `label` (when the file has labels), then the most correlated feature pairs.
    A delta file is summarised as the table it resolves to (`locate`: lake/feature_delta.py);
    `total_rows` is its row count when the caller has it (counting a resolved delta is a join).
    """
    source = feature_source(conn, staged_path, locate)
    names = [row[0] for row in conn.execute(DESCRIBE_SQL.format(source=source)).fetchall()]
    columns = [*feature_columns, "label"] if "label" in names else list(feature_columns)
    total = (
        int(conn.execute(COUNT_SQL.format(source=source)).fetchall()[0][0])
        if total_rows is None
        else total_rows
    )
    where = (
        "" if total <= sample_rows else SAMPLE_WHERE.format(threshold=HASH_RANGE * int(sample_rows) // total)
    )
    sample = conn.execute(
        SAMPLE_SQL.format(columns=", ".join(f'"{column}"' for column in columns), source=source, where=where)
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
