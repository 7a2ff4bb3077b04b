"""The `instarec` console script: parses arguments, calls the library, prints one line per step.

Every expected failure (bad landing file, bad setting, failed check, a missing or unreadable file or
store, an AWS error such as a missing table or bucket or no credentials) ends as one
`instarec: error:` line on stderr and exit status 1, never a traceback; `error_line` decides which
failures are expected. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from instarec_assets.backends.recommendations import ServingStoreError
from instarec_assets.lake.locations import LakeLocations
from instarec_assets.serving.server import add_arguments as add_serve_arguments
from instarec_assets.serving.server import cmd_serve
from instarec_assets.serving.token_command import add_token_command
from instarec_assets.warehouse.cli import add_sql_command

if TYPE_CHECKING:
    from instarec_assets.pipeline.runner import StepReport


class CommandError(Exception):
    """An expected failure whose message is already the line to print."""


# Expected failures raised by modules that a command imports when it runs, as (module, class). A
# module that was never imported cannot have raised, so checking imports nothing (`serve` must not
# load Dagster, and a bad argument should not wait for boto3 or DuckDB to load).
EXPECTED_ELSEWHERE = (
    ("instarec_assets.pipeline.runner", "PipelineError"),
    ("instarec_assets.privacy.forget", "ForgetError"),
    ("instarec_assets.backends.sagemaker", "SageMakerJobError"),
    ("instarec_assets.serving.keys", "KeysUnavailableError"),
    ("duckdb", "Error"),
    ("sqlite3", "Error"),
    ("botocore.exceptions", "ClientError"),  # a missing table or bucket, access denied, throttling
    ("botocore.exceptions", "BotoCoreError"),  # no credentials or region, endpoint unreachable
)
# Errors from libraries that do not say which table or file they were about (see `about`).
UNNAMED_ELSEWHERE = (
    ("sqlite3", "Error"),
    ("botocore.exceptions", "ClientError"),
    ("botocore.exceptions", "BotoCoreError"),
)
AWS_CLIENT_ERROR = (("botocore.exceptions", "ClientError"),)
DUCKDB_ERROR = (("duckdb", "Error"),)


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in names if module in sys.modules)


def error_line(error: BaseException) -> str | None:
    """The one line that reports an expected failure; None for anything else (a bug, to be shown).

    Expected: this project's error types, bad values (ValueError: bad input or settings), files and
    paths (OSError: `PATH: reason`), and DuckDB, SQLite, AWS and pipeline errors.
    """
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        target = f" -> {error.filename2}" if error.filename2 is not None else ""
        return f"{error.filename}{target}: {error.strerror}"
    if isinstance(error, _loaded(AWS_CLIENT_ERROR)):
        details = error.response.get("Error", {})
        message = _one_line(details.get("Message") or "")
        return (
            f"AWS {error.operation_name} failed: {details.get('Code') or 'error'}"
            + (f": {message}" if message else "")
            + (f" (bucket {details['BucketName']})" if details.get("BucketName") else "")
        )
    if isinstance(error, _loaded(DUCKDB_ERROR)):
        from instarec_assets.warehouse.readonly import one_line

        return one_line(error)
    if isinstance(
        error, (CommandError, ServingStoreError, ValueError, OSError, *_loaded(EXPECTED_ELSEWHERE))
    ):
        return _one_line(str(error)) or type(error).__name__
    return None


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


@contextmanager
def about(subject: str) -> Iterator[None]:
    """Name `subject` (a table, a bucket, a file) in errors that do not name it: AWS and SQLite
    errors, and OSErrors without a file name (s3fs's "The specified bucket does not exist")."""
    try:
        yield
    except Exception as error:
        unnamed = isinstance(error, OSError) and error.filename is None
        if not (unnamed or isinstance(error, _loaded(UNNAMED_ELSEWHERE))):
            raise
        raise CommandError(f"{subject}: {error_line(error)}") from error


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def cmd_generate(args: argparse.Namespace) -> None:
    from instarec_assets.generate import generate_dataset

    started = time.perf_counter()
    summary = generate_dataset(
        Path(args.out),
        users=args.users,
        seed=args.seed,
        batches=args.batches,
        products_file=Path(args.products) if args.products else None,
        start_date=dt.date.fromisoformat(args.start_date),
    )
    for line in summary.lines():
        print(line)
    print(
        f"generated {len(summary.batches)} batch(es) in {time.perf_counter() - started:.1f}s under {args.out}"
    )


def cmd_materialize(args: argparse.Namespace) -> None:
    locations = LakeLocations.from_env(home=args.home)
    source = Path(args.landing)
    # The bar starts before the pipeline's imports (Dagster, torch: seconds on a busy machine), so a
    # terminal shows something at once.
    with StepProgress() as progress:
        progress.stage("loading the pipeline")
        from instarec_assets.pipeline.runner import default_partition

        partition_key = args.partition or default_partition(source, _today())
        _land_and_run(locations, source, partition_key, progress, args.through, args.engine)


def _land_and_run(
    locations: LakeLocations,
    source: Path,
    partition_key: str,
    progress: StepProgress,
    through: str = "consumption",
    engine: str | None = None,
) -> None:
    progress.stage("loading the pipeline")
    from instarec_assets.definitions import build_definitions
    from instarec_assets.pipeline.runner import (
        PipelineError,
        dagster_instance,
        land_folder,
        mark_complete,
        materialize_partition,
        steps_through,
    )

    progress.stage(f"copying {source} into the landing area")
    target = land_folder(source, locations, partition_key)
    progress.line(f"landed {source} as partition {partition_key} at {target}")
    progress.stage("building the definitions")
    defs = build_definitions(locations, engine=engine)
    steps = steps_through(defs, through)
    progress.start_steps(len(steps))
    progress.line(f"running {len(steps)} steps for partition {partition_key} through {through}")
    try:
        materialize_partition(
            defs,
            dagster_instance(locations),
            partition_key,
            through=through,
            on_step=progress.step_done,
            on_note=progress.note,
            on_start=progress.step_started,
            on_warning=lambda line: progress.line(f"warning: {line}"),
        )
    except PipelineError as error:
        raise error.about_source(target, source) from None
    mark_complete(locations, partition_key)  # only now may the landing sensor take the batch as complete


def step_line(report: StepReport, done: int, total: int) -> str:
    """One finished step: its place in the run, seconds, and each of its assets with its rows."""
    assets = ", ".join(
        asset.asset + (f" {asset.rows:,} rows" if asset.rows is not None else "") for asset in report.assets
    )
    return f"  [{done}/{total}] {report.step:<28} {report.seconds:6.1f}s  {assets}"


class StepProgress:
    """Live progress of a run: a line per finished step, under a rich progress bar on a terminal and
    as plain flushed lines otherwise (logs, pipes, CI).

    While a run goes on, Dagster captures the process's stdout for the run's compute log by pointing
    file descriptor 1 at a file (and tailing it to the old stdout). The bar therefore writes to its own
    duplicate of the terminal's descriptor, taken before the run: writing through fd 1, rich would see
    a plain file, stop redrawing and print every step line onto the bar's row.
    """

    # In a pipe, a step's progress notes are printed at most this often (the last is always shown
    # by the step's own line when it finishes).
    NOTE_INTERVAL_SECONDS = 10.0

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.total: int | None = None
        self.done = 0
        self.noted: dict[str, float] = {}
        self.bar: Progress | None = None
        self.terminal: TextIO | None = None
        if self.stream.isatty():
            self.terminal = os.fdopen(
                os.dup(self.stream.fileno()),
                "w",
                encoding=self.stream.encoding or "utf-8",
                errors="replace",
                buffering=1,
            )
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.terminal),
                refresh_per_second=2,  # the elapsed time moves once a second; spare a remote terminal
                redirect_stdout=False,  # the run's own output stays in its compute log
                redirect_stderr=False,
            )
            self.task = self.bar.add_task("starting", total=None)

    def __enter__(self) -> StepProgress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.terminal is not None:
            self.terminal.close()

    def line(self, text: str) -> None:
        """A line of the run's story: above the bar on a terminal, a plain flushed line otherwise."""
        if self.bar is None:
            print(text, file=self.stream, flush=True)
        else:
            self.bar.console.print(text, highlight=False, markup=False)

    def stage(self, description: str) -> None:
        """What the command is doing before the steps start (the bar's label; nothing in a pipe)."""
        if self.bar is not None:
            self.bar.update(self.task, description=description)

    def start_steps(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.update(self.task, total=total, completed=0, description="starting the run")

    def step_started(self, step: str) -> None:
        """The step now running names the bar (nothing in a pipe: its line says when it is done)."""
        if self.bar is not None:
            self.bar.update(self.task, description=step)

    def note(self, step: str, message: str) -> None:
        """Progress inside a running step: the bar's description on a terminal, an indented line
        (throttled) otherwise."""
        if self.bar is not None:
            self.bar.update(self.task, description=f"{step}: {message}")
            return
        now = time.monotonic()
        if now - self.noted.get(step, -self.NOTE_INTERVAL_SECONDS) >= self.NOTE_INTERVAL_SECONDS:
            self.noted[step] = now
            print(f"      {step}: {message}", file=self.stream, flush=True)

    def step_done(self, report: StepReport) -> None:
        self.done += 1
        self.line(step_line(report, self.done, self.total or self.done))
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, description=f"{report.step} done")


def cmd_status(args: argparse.Namespace) -> None:
    from instarec_assets.pipeline.status import lake_report

    locations = LakeLocations.from_env(home=args.home)
    report = lake_report(locations, _active_serving_version(args.home))
    print(report.to_json() if args.json else "\n".join(report.lines()))


def _active_serving_version(home: str | None) -> dict | None:
    """The serving store's active version, or None when there is no store or no version yet."""
    try:
        store, subject = _serving_store(home, read_only=True)
        with about(subject):
            active = next((record for record in store.versions() if record.active), None)
    except Exception as error:  # status reports a missing or unreachable store; it does not fail on it
        if error_line(error) is None:
            raise
        return None
    if active is None:
        return None
    return {
        "store": subject,
        "version": active.version,
        "batch": active.batch,
        "model_version": active.model_version,
        "users": active.users,
        "kind": active.kind,
        "base_version": active.base_version,
    }


def _serving_store(home: str | None, read_only: bool):
    """The configured serving store (SQLite under INSTAREC_HOME, DynamoDB in aws mode) and the
    subject that names it in errors. A SQLite store opened to write must exist already."""
    from instarec_assets.backends.serving_store import open_store, store_settings_from_env

    locations = LakeLocations.from_env(home=home)
    settings = store_settings_from_env(locations.home)
    if settings["kind"] == "dynamodb":
        subject = f"DynamoDB table {settings['dynamodb_table']!r} ({settings['region']})"
    else:
        subject = f"serving store {settings['sqlite_path']}"
        if not read_only and not Path(settings["sqlite_path"]).exists():
            raise CommandError(f"{subject} does not exist; load recommendations first")
    with about(subject):
        return open_store(**settings, read_only=read_only), subject


def _describe_version(record) -> str:
    batch = f"batch {record.batch}" if record.batch else "a batch not recorded"
    return f"serving version {record.version} (built from {batch}, model {record.model_version})"


# What `instarec recommend` appends to an item that is not a scored reorder candidate, by its source.
TIER_NOTES = {
    "explore": "  [explore: new to this shopper]",
    "popular": "  [popular: cold start, no history to score yet]",
}


def cmd_recommend(args: argparse.Namespace) -> None:
    store, subject = _serving_store(args.home, read_only=True)
    with about(subject):
        result = store.top_k(args.user_id, args.k)
        if result is None:
            raise CommandError(f"user {args.user_id} has no recommendations in the serving store")
        record = next((r for r in store.versions() if r.version == result.version), None)
    if record is None:  # removed since the read (a load finished meanwhile)
        print(f"serving version {result.version} (model {result.model_version})")
    else:
        print(_describe_version(record))
    print(f"Top {len(result.items)} for user {result.user_id} (model {result.model_version}):")
    for item in result.items:
        print(
            f"  {item.rank:>2}. {item.product_name}, purchase probability {item.probability:.1%}"
            f" (product {item.product_id}; {item.aisle}, {item.department})" + TIER_NOTES.get(item.source, "")
        )


def cmd_similar(args: argparse.Namespace) -> None:
    """`instarec similar PRODUCT_ID`: the product's "customers also buy" list from the active version."""
    if args.k < 1 or args.k > 20:
        raise CommandError(f"--k must be from 1 to 20, not {args.k}")
    store, subject = _serving_store(args.home, read_only=True)
    with about(subject):
        result = store.similar(args.product_id, args.k)
        if result is None:
            raise CommandError(f"product {args.product_id} has no similar items in the serving store")
    print(f"serving version {result.version}")
    print(f"Customers who buy product {result.product_id} also buy:")
    for item in result.items:
        print(
            f"  {item.rank:>2}. {item.product_name}, score {item.score:.3f}"
            f" (product {item.product_id}; {item.aisle}, {item.department})"
        )


def cmd_serving_versions(args: argparse.Namespace) -> None:
    store, subject = _serving_store(args.home, read_only=True)
    with about(subject):
        records = store.versions()
    if not records:
        print(f"the {subject} holds no version yet: load recommendations first")
        return
    rows = [("", "version", "kind", "base", "batch", "model", "loaded at", "users", "items")]
    for record in records:
        rows.append(
            (
                "*" if record.active else "",
                record.version,
                record.kind,
                record.base_version or "-",
                record.batch or "-",
                record.model_version,
                record.loaded_at,
                f"{record.users:,}",
                f"{record.items:,}",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if column >= 7 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print("* active: what readers see now; a delta holds only its users, the rest read through its base")


def cmd_serving_activate(args: argparse.Namespace) -> None:
    store, subject = _serving_store(args.home, read_only=False)
    with about(subject):
        before = store.current_version()
        record = store.activate(args.version)
    switched = f"was {before}" if before != record.version else "already active"
    print(f"activated {_describe_version(record)}; {switched}")


def cmd_submission(args: argparse.Namespace) -> None:
    import duckdb

    from instarec_assets.consumption.submission import write_submission
    from instarec_assets.lake.duck import attach_filesystem

    locations = LakeLocations.from_env(home=args.home)
    with about(f"consumption zone {locations.zone_uri('consumption')}"):
        partitions = locations.partitions("consumption", "next_basket")
    if not partitions:
        raise CommandError("no next_basket partition yet: materialize a landing batch first")
    partition_key, uri = next(reversed(partitions.items()))
    conn = duckdb.connect()
    attach_filesystem(conn, locations.filesystem)
    rows = write_submission(conn, uri, Path(args.out))
    print(f"wrote {rows:,} test orders from partition {partition_key} to {args.out}")


def shopper_id(text: str) -> int:
    """A user id given on the command line: a whole number from 1, else one error line."""
    value = text.strip()
    if not value.isascii() or not value.isdigit() or int(value) < 1:
        raise CommandError(f"USER_ID must be a whole number from 1, not {text!r}")
    return int(value)


def cmd_forget(args: argparse.Namespace) -> None:
    """`instarec forget USER_ID`: run the forget_shopper job, then say what it removed and where the
    audit record is; `--withdraw` lifts an earlier request."""
    from instarec_assets.pipeline.forget import run_forget
    from instarec_assets.privacy.forget import os_user

    user_id = shopper_id(args.user_id)
    locations = LakeLocations.from_env(home=args.home)
    uri, record = run_forget(
        locations,
        user_id,
        reason=args.reason,
        requested_by=args.requested_by or os_user(),
        withdraw=args.withdraw,
    )
    if args.withdraw:
        print(f"withdrew the forget request for user {user_id}: later landings of the user are cleaned again")
        print(f"audit record: {uri}")
        return
    rewritten = record["rewritten"]
    print(f"forgot user {user_id} (request {record['request_id']}, by {record['requested_by']})")
    for item in rewritten:
        versions = item["noncurrent_versions_deleted"]
        print(
            f"  {item['kind']:<16} {item['target']}: {item['rows_removed']:,} rows removed"
            + (f", {versions} noncurrent versions deleted" if versions else "")
        )
    print(
        f"removed {sum(item['rows_removed'] for item in rewritten):,} rows from {len(rewritten)} files and stores"
    )
    models = record["models_trained_with_user"]
    print(
        "models trained with this user's data (not retrained for one user; the next retrain leaves them out): "
        + (", ".join(model["version"] for model in models) if models else "none")
    )
    print(f"audit record: {uri}")


def cmd_demo(args: argparse.Namespace) -> None:
    """Generate a small dataset, land and materialise each batch in order, then report the lake."""
    from instarec_assets.generate import generate_dataset

    locations = LakeLocations.from_env(home=args.home)
    data_dir = locations.home_path / "demo-data"
    summary = generate_dataset(data_dir, users=args.users, seed=args.seed, batches=args.batches)
    for batch in summary.batches:
        print(batch.describe(), flush=True)
        with StepProgress() as progress:
            _land_and_run(locations, batch.folder, batch.partition, progress)
    # Through the parser, so the commands get every option's default as they would on the command line.
    home = ["--home", args.home] if args.home else []
    print()
    cmd_status(build_parser().parse_args(["status", *home]))
    print()
    cmd_recommend(build_parser().parse_args(["recommend", str(args.sample_user), "-k", "3", *home]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instarec", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"instarec {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write synthetic Instacart-format landing folders")
    generate.add_argument("--out", required=True, help="folder to write dated batch folders into")
    generate.add_argument(
        "--users", type=int, default=1000, help="users in the first snapshot (100 to 206209+)"
    )
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--batches", type=int, default=1, help="dated folders: a snapshot, then increments")
    generate.add_argument("--products", help="a products.csv to use instead of the real Instacart catalog")
    generate.add_argument("--start-date", default="2025-01-06", help="date of the first batch (YYYY-MM-DD)")
    generate.set_defaults(handler=cmd_generate)

    materialize = commands.add_parser("materialize", help="land a folder and materialise that partition")
    materialize.add_argument("--landing", required=True, help="folder holding the six Instacart CSV files")
    materialize.add_argument(
        "--partition", help="YYYY-MM-DD; default: the folder's name if a date, else today"
    )
    materialize.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    materialize.add_argument(
        "--through",
        default="consumption",
        choices=("raw", "clean", "curated", "models", "consumption"),
        help="stop after this zone (default: everything, down to the serving store)",
    )
    materialize.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        help="engine of the clean steps and the feature build (default: INSTAREC_ENGINE, else duckdb; "
        "spark: locally the spark extra and Java 17, in aws mode EMR Serverless job runs; the features "
        "are updated per batch and written whole)",
    )
    materialize.set_defaults(handler=cmd_materialize)

    status = commands.add_parser(
        "status", help="each batch's state, the zone tables, models, warehouse and serving version"
    )
    status.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    status.add_argument("--json", action="store_true", help="print the status as JSON, for scripts")
    status.set_defaults(handler=cmd_status)

    recommend = commands.add_parser("recommend", help="a user's top products from the serving store")
    recommend.add_argument("user_id", type=int)
    recommend.add_argument("-k", type=int, default=3, help="how many products (default 3)")
    recommend.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    recommend.set_defaults(handler=cmd_recommend)

    similar = commands.add_parser("similar", help="products bought with a product (customers also buy)")
    similar.add_argument("product_id", type=int)
    similar.add_argument("-k", "--k", type=int, default=5, help="how many products, 1 to 20 (default 5)")
    similar.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    similar.set_defaults(handler=cmd_similar)

    serving = commands.add_parser("serving", help="the serving store's retained versions; roll back")
    serving_commands = serving.add_subparsers(dest="serving_command", required=True)
    versions = serving_commands.add_parser("versions", help="list the retained versions (* active)")
    versions.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    versions.set_defaults(handler=cmd_serving_versions)
    activate = serving_commands.add_parser(
        "activate", help="switch readers to a retained version (a rollback) in one step"
    )
    activate.add_argument("version", help="a version id from `instarec serving versions`")
    activate.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    activate.set_defaults(handler=cmd_serving_activate)

    submission = commands.add_parser("submission", help="Kaggle submission CSV from the latest next_basket")
    submission.add_argument("--out", required=True, help="CSV file to write (order_id,products)")
    submission.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    submission.set_defaults(handler=cmd_submission)

    forget = commands.add_parser(
        "forget", help="remove a shopper from the lake, landing copies, warehouse and serving store"
    )
    forget.add_argument("user_id", metavar="USER_ID", help="the shopper's user_id")
    forget.add_argument("--reason", default="", help="why (kept in the audit record)")
    forget.add_argument("--requested-by", help="who asked (default: the OS user running the command)")
    forget.add_argument(
        "--withdraw",
        action="store_true",
        help="lift an earlier request: later landings of the user are cleaned again",
    )
    forget.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    forget.set_defaults(handler=cmd_forget)

    demo = commands.add_parser("demo", help="generate a small dataset and run everything on it")
    demo.add_argument("--home", help="INSTAREC_HOME (default ./.instarec)")
    demo.add_argument("--users", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batches", type=int, default=2)
    demo.add_argument("--sample-user", type=int, default=1, help="whose top 3 to print at the end")
    demo.set_defaults(handler=cmd_demo)
    serve = commands.add_parser("serve", help="the recommendations API and web page under uvicorn")
    add_serve_arguments(serve)
    serve.set_defaults(handler=cmd_serve)
    add_token_command(commands)

    add_sql_command(commands)
    return parser


def installed_version() -> str:
    try:
        return metadata.version("instarec")
    except metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*is currently in preview.*")
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
    except BrokenPipeError:
        # The reader went away (`instarec status | head`): stop quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        line = error_line(error)
        if line is None:
            raise
        print(f"instarec: error: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
