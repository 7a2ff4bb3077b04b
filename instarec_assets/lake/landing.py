"""Landing files into the raw zone: find each file, check its header, keep every row as it came.

Rows are kept as text (so a bad value is quarantined later, with its original spelling) next to
lineage columns. Lines the CSV reader cannot split (a truncated last line, an unterminated quote,
too many fields) are kept too, with the parser's message, so raw rows always equal landed records.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from instarec_assets.lake.duck import StagedParquet, attach_filesystem, scalar
from instarec_assets.lake.schemas import LandingFile

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

HASH_CHUNK_BYTES = 8 * 1024 * 1024


class LandingFileError(ValueError):
    """A landed file that cannot be read at all; the message names the file and the problem."""


@dataclass(frozen=True)
class RawIngest:
    """What landing one file produced: the staged raw table plus the file's identity."""

    staged: StagedParquet
    source_file: str
    sha256: str
    size_bytes: int
    rejected_lines: int


def find_landing_file(fs: AbstractFileSystem, folder_uri: str, spec: LandingFile) -> str:
    """The one file for `spec` in a landing folder, `.csv` or `.csv.gz`."""
    present = [f"{folder_uri}/{name}" for name in spec.file_names if fs.exists(f"{folder_uri}/{name}")]
    if not present:
        raise LandingFileError(
            f"{folder_uri}/{spec.file_stem}.csv: file is missing (also looked for .csv.gz)"
        )
    if len(present) > 1:
        raise LandingFileError(
            f"{folder_uri}: both {spec.file_stem}.csv and {spec.file_stem}.csv.gz are present; keep one"
        )
    return present[0]


def read_header(fs: AbstractFileSystem, uri: str) -> list[str]:
    """Column names from the first line, tolerating gzip, a UTF-8 BOM and CRLF line ends."""
    name = uri.rsplit("/", 1)[-1]
    try:
        with fs.open(uri, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if uri.endswith(".gz") else raw
            first_line = stream.readline()
    except (OSError, EOFError, zlib.error) as error:
        raise LandingFileError(f"{name}: cannot be read{_as_gzip(uri)}: {error}") from None
    if not first_line.strip():
        raise LandingFileError(f"{name}: file is empty (expected a header line)")
    try:
        text = first_line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LandingFileError(f"{name}: header line is not valid UTF-8") from None
    return [column.strip().strip('"') for column in text.rstrip("\r\n").split(",")]


def check_header(uri: str, header: list[str], spec: LandingFile) -> None:
    """Exactly the Kaggle columns, in any order; name what is missing or unexpected."""
    name = uri.rsplit("/", 1)[-1]
    missing = [column for column in spec.columns if column not in header]
    extra = [column for column in header if column not in spec.columns]
    duplicated = sorted({column for column in header if header.count(column) > 1})
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected column(s) {', '.join(column or '(unnamed)' for column in extra)}")
    if duplicated:
        problems.append(f"repeated column(s) {', '.join(duplicated)}")
    if problems:
        raise LandingFileError(f"{name}: {'; '.join(problems)} (expected: {','.join(spec.columns)})")


def file_sha256(fs: AbstractFileSystem, uri: str) -> tuple[str, int]:
    """sha256 and size of the landed bytes, streamed so large files stay out of memory."""
    digest = hashlib.sha256()
    size = 0
    with fs.open(uri, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


INGEST_ACCEPTED_SQL = """
SELECT {columns},
       $source_file AS _source_file,
       row_number() OVER () AS _source_row,
       $ingested_at::TIMESTAMPTZ AS _ingested_at,
       NULL::VARCHAR AS _parse_error,
       NULL::VARCHAR AS _raw_line
FROM read_csv($uri, header = true, auto_detect = false, columns = $columns_spec, delim = ',',
              quote = '"', escape = '"', compression = 'auto', store_rejects = true,
              rejects_table = 'landing_reject_errors', rejects_scan = 'landing_reject_scans',
              max_line_size = 1048576, null_padding = false)
"""

# DuckDB reports a short line once per missing field: keep the first error of each line, so one landed
# line is one raw row. `line` counts records with the header as line 1, so its data row is line - 1.
REJECTED_LINES_SQL = """
CREATE OR REPLACE TEMP TABLE landing_rejected_lines AS
SELECT (line - 1)::BIGINT AS data_row,
       'line ' || line || ': ' || error_type || ': ' || error_message AS parse_error,
       trim(csv_line, chr(10) || chr(13)) AS raw_line
FROM landing_reject_errors
QUALIFY row_number() OVER (PARTITION BY line ORDER BY column_idx NULLS LAST, byte_position) = 1
"""

# Accepted rows were numbered among themselves; the j-th rejected row (data row r) has r - j accepted
# rows before it, so an accepted row moves down by the number of rejected rows ahead of it.
INGEST_COMBINED_SQL = """
SELECT accepted.* REPLACE ((accepted._source_row + coalesce(shift.rejected_before, 0))::BIGINT AS _source_row)
FROM read_parquet($accepted_path, hive_partitioning = false) AS accepted
ASOF LEFT JOIN (
    SELECT data_row - rank AS accepted_before, max(rank) AS rejected_before
    FROM (SELECT data_row, row_number() OVER (ORDER BY data_row) AS rank FROM landing_rejected_lines)
    GROUP BY ALL
) AS shift ON accepted._source_row > shift.accepted_before
UNION ALL
SELECT {null_columns},
       $source_file AS _source_file,
       data_row AS _source_row,
       $ingested_at::TIMESTAMPTZ AS _ingested_at,
       parse_error AS _parse_error,
       raw_line AS _raw_line
FROM landing_rejected_lines
ORDER BY _source_row
"""


def ingest_landing_file(
    conn: duckdb.DuckDBPyConnection,
    fs: AbstractFileSystem,
    folder_uri: str,
    spec: LandingFile,
    scratch: Path,
    ingested_at: dt.datetime,
) -> RawIngest:
    """Land one file as a raw parquet table in `scratch`: every record, as text, with lineage."""
    uri = find_landing_file(fs, folder_uri, spec)
    header = read_header(fs, uri)
    check_header(uri, header, spec)
    sha256, size_bytes = file_sha256(fs, uri)
    attach_filesystem(conn, fs)
    name = uri.rsplit("/", 1)[-1]
    params = {
        "uri": uri,
        "source_file": uri,
        "ingested_at": ingested_at.isoformat(),
        "columns_spec": {column: "VARCHAR" for column in header},
    }
    columns = ", ".join(f'"{column}"' for column in spec.columns)
    accepted_path = scratch / f"{spec.table}.accepted.parquet"
    conn.execute("DROP TABLE IF EXISTS landing_reject_errors; DROP TABLE IF EXISTS landing_reject_scans")
    try:
        accepted = _copy_with_params(conn, INGEST_ACCEPTED_SQL.format(columns=columns), params, accepted_path)
        conn.execute(REJECTED_LINES_SQL)
        rejected_lines = scalar(conn, "SELECT count(*) FROM landing_rejected_lines")
    except duckdb.IOException as error:
        raise LandingFileError(f"{name}: cannot be read{_as_gzip(uri)}: {_first_line(error)}") from None
    except duckdb.Error as error:
        raise LandingFileError(f"{name}: cannot be parsed as CSV: {_first_line(error)}") from None
    if not rejected_lines:
        return RawIngest(accepted, uri, sha256, size_bytes, 0)
    null_columns = ", ".join(f'NULL::VARCHAR AS "{column}"' for column in spec.columns)
    staged = _copy_with_params(
        conn,
        INGEST_COMBINED_SQL.format(null_columns=null_columns),
        {"accepted_path": str(accepted_path), "source_file": uri, "ingested_at": ingested_at.isoformat()},
        scratch / f"{spec.table}.parquet",
    )
    accepted_path.unlink()
    return RawIngest(staged, uri, sha256, size_bytes, int(rejected_lines))


def _as_gzip(uri: str) -> str:
    """A `.gz` file DuckDB cannot read to the end is corrupt or truncated; say so."""
    return " as gzip (corrupt or truncated)" if uri.endswith(".gz") else ""


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _copy_with_params(
    conn: duckdb.DuckDBPyConnection, select_sql: str, params: dict, path: Path
) -> StagedParquet:
    """COPY a parameterised query to parquet (COPY itself takes no parameters, so go via a view)."""
    relation = conn.sql(select_sql, params=params)
    path.parent.mkdir(parents=True, exist_ok=True)
    relation.write_parquet(str(path), compression="zstd")
    row_count = scalar(conn, "SELECT count(*) FROM read_parquet(?, hive_partitioning = false)", [str(path)])
    return StagedParquet(path=path, row_count=int(row_count))
