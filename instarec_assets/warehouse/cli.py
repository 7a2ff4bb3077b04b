"""`instarec sql "SELECT ..."`: one read-only query on the analysts' warehouse, printed as a table.

Registered by the main parser with `add_sql_command(subparsers)`. Failures raise the warehouse's
errors (subclasses of ValueError and OSError: a refused or failed query, a missing or unreadable
warehouse file), which `instarec` prints as one `instarec: error:` line with exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from instarec_assets.lake.locations import LakeLocations
from instarec_assets.settings import Settings
from instarec_assets.warehouse.build import warehouse_path
from instarec_assets.warehouse.readonly import format_table, run_readonly_sql

DEFAULT_MAX_ROWS = 1000


def cmd_sql(args: argparse.Namespace) -> None:
    locations = LakeLocations.from_env(home=args.home)
    query = sys.stdin.read() if args.query == "-" else args.query
    if args.max_rows < 1:
        raise ValueError(f"--max-rows must be at least 1, not {args.max_rows}")
    result = run_readonly_sql(
        warehouse_path(locations.home_path),
        query,
        max_rows=args.max_rows,
        memory_limit=Settings.from_env().duckdb_memory_limit,
        temp_directory=str(locations.home_path / "tmp" / "duckdb"),
    )
    print(format_table(result))


def add_sql_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `sql` to the `instarec` subcommands."""
    sql = subparsers.add_parser(
        "sql",
        help="run one read-only SELECT on the analysts' warehouse and print a table",
        description=(
            "Query INSTAREC_HOME/warehouse/analyst.duckdb (built by the analyst_warehouse asset). "
            "Tables: aisles, departments, products, product_history, orders, order_products; "
            "view: joined_order_products; marts: mart_*; warehouse_info. Only one SELECT is allowed."
        ),
    )
    sql.add_argument("query", help="one SELECT statement, or - to read it from stdin")
    sql.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    sql.add_argument(
        "--max-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        help=f"print at most this many rows (default {DEFAULT_MAX_ROWS})",
    )
    sql.set_defaults(handler=cmd_sql)
    return sql
