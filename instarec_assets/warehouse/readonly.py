"""Runs one analyst query on the warehouse, read-only, and refuses anything that is not a single SELECT.

Three locks, each enough on its own for some attacks, together for all of them:

- DuckDB's own parser (`extract_statements`) must find exactly one statement of type SELECT
  (`SHOW`, `DESCRIBE`, `SUMMARIZE`, `FROM t`, `VALUES`, `WITH ... SELECT` are SELECTs too);
  INSERT, CREATE, COPY, ATTACH, INSTALL/LOAD, SET, PRAGMA, CALL, EXPORT, EXPLAIN and a second
  statement after a `;` are refused before anything runs;
- the database is opened `read_only`, so nothing can change it;
- `enable_external_access = false` (then `lock_configuration`), so no query reads or writes a file
  outside the warehouse (`read_csv('/etc/passwd')`, `glob`, `COPY ... TO`, extensions, `getenv`).
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
from tabulate import tabulate

ALLOWED_STATEMENTS = (duckdb.StatementType.SELECT,)

REFUSAL = "only read-only SELECT queries are allowed"


class WarehouseNotBuiltError(FileNotFoundError):
    """There is no warehouse file yet."""


class QueryRefusedError(ValueError):
    """The query is not a single read-only SELECT, or it reached outside the warehouse."""


class WarehouseQueryError(ValueError):
    """DuckDB rejected the query (syntax, unknown table or column, ...); the message is one line."""


class WarehouseUnreadableError(OSError):
    """The warehouse file exists but DuckDB cannot open it (corrupt, truncated, unreadable)."""


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple]
    truncated: bool = False


def readonly_config(memory_limit: str | None = None, temp_directory: str | None = None) -> dict:
    """Connection settings of every reader; the same in-process, as DuckDB requires for one file."""
    config: dict = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "lock_configuration": True,
    }
    if memory_limit:
        config["memory_limit"] = memory_limit
    if temp_directory:
        config["temp_directory"] = temp_directory
    return config


def connect_readonly(db_path: Path, **settings: str | None) -> duckdb.DuckDBPyConnection:
    """A read-only connection that cannot reach any other file; the caller closes it.

    DuckDB's own error is raised when the file cannot be opened: the warehouse build tells a corrupt
    file (replace it) from a connection conflict (never replace it) by that error's type.
    """
    if not Path(db_path).is_file():
        raise WarehouseNotBuiltError(
            f"no analyst warehouse at {db_path}: materialize a partition first "
            "(instarec materialize --landing DIR, or the analyst_warehouse asset in the UI)"
        )
    return duckdb.connect(str(db_path), read_only=True, config=readonly_config(**settings))


def open_readonly(db_path: Path, **settings: str | None) -> closing[duckdb.DuckDBPyConnection]:
    """`connect_readonly`, closed on exit."""
    return closing(connect_readonly(db_path, **settings))


@contextmanager
def open_for_query(db_path: Path, **settings: str | None) -> Iterator[duckdb.DuckDBPyConnection]:
    """`open_readonly` for an analyst: a file DuckDB cannot open is one WarehouseUnreadableError line."""
    try:
        conn = connect_readonly(db_path, **settings)
    except duckdb.Error as error:
        raise WarehouseUnreadableError(
            f"{db_path}: cannot open the analyst warehouse ({one_line(error)}); "
            "if the file is damaged, materialize a partition to rebuild it"
        ) from None
    with closing(conn):
        yield conn


def checked_statement(conn: duckdb.DuckDBPyConnection, sql: str):
    """The one SELECT statement in `sql`, parsed by DuckDB; anything else raises QueryRefusedError."""
    try:
        statements = conn.extract_statements(sql)
    except duckdb.Error as error:
        raise WarehouseQueryError(one_line(error)) from None
    if not statements:
        raise QueryRefusedError(f"{REFUSAL} (got no statement)")
    if len(statements) > 1:
        kinds = ", ".join(_kind(statement) for statement in statements)
        raise QueryRefusedError(f"{REFUSAL} (got {len(statements)} statements: {kinds})")
    statement = statements[0]
    if statement.type not in ALLOWED_STATEMENTS:
        raise QueryRefusedError(f"{REFUSAL} (got {_kind(statement)})")
    return statement


def run_readonly_sql(
    db_path: Path,
    sql: str,
    max_rows: int | None = None,
    memory_limit: str | None = None,
    temp_directory: str | None = None,
) -> QueryResult:
    """Columns and rows of one SELECT on the warehouse; at most `max_rows` rows (then `truncated`)."""
    with open_for_query(db_path, memory_limit=memory_limit, temp_directory=temp_directory) as conn:
        statement = checked_statement(conn, sql)
        try:
            result = conn.execute(statement)
            columns = tuple(column[0] for column in result.description)
            if max_rows is None:
                return QueryResult(columns, result.fetchall())
            rows = result.fetchmany(max_rows + 1)
        except duckdb.PermissionException as error:
            raise QueryRefusedError(
                f"only the warehouse's own tables can be read ({one_line(error)})"
            ) from None
        except duckdb.Error as error:
            raise WarehouseQueryError(one_line(error)) from None
    return QueryResult(columns, rows[:max_rows], truncated=len(rows) > max_rows)


def format_table(result: QueryResult) -> str:
    """An aligned text table (numbers right, NULL shown as NULL) and a row count."""
    numeric = []
    for index in range(len(result.columns)):
        values = [row[index] for row in result.rows if row[index] is not None]
        numeric.append(bool(values) and all(_is_number(value) for value in values))
    cells = [[_cell(value) for value in row] for row in result.rows]
    table = tabulate(
        cells,
        headers=list(result.columns),
        tablefmt="simple",
        disable_numparse=True,
        colalign=["right" if is_number else "left" for is_number in numeric] or None,
    )
    count = len(result.rows)
    footer = f"({count} row{'' if count == 1 else 's'})"
    if result.truncated:
        footer = f"(first {count} rows shown; add a LIMIT or raise --max-rows to see more)"
    return f"{table}\n{footer}"


def one_line(error: BaseException) -> str:
    """DuckDB's message without the `LINE 1: ... ^` pointer, on one line."""
    lines: list[str] = []
    for line in str(error).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines) or type(error).__name__


def _kind(statement) -> str:
    return statement.type.name


def _is_number(value) -> bool:
    return isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool)


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)
