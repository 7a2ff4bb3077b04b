"""Curated features: DuckDB `build_features` beside a plain-pandas version of the same features.

The pandas version is written the way Kaggle notebooks compute Instacart features: groupby / merge
over the orders table and the order lines, one DataFrame per level (user, product, user x product),
then merged into a training set. It computes the same columns with the same definitions as
instarec_assets/features (both framings: `target`, the history before each user's last order, and
`serving`, the history including it), so the outputs can be compared row by row.

Both run on the same inputs: a generated dataset (default 20,000 users) loaded into clean-zone-shaped
parquet by `clean_snapshot_from_landing` (instarec_assets_tests/test_features_generated.py). Each
implementation runs in a fresh child process (bench_lake.run_stage: wall time, CPU, peak RSS from
`os.wait4`, psutil tree sampling); each child also reports its own compute seconds, imports excluded.
Afterwards the two training sets are joined on (user_id, product_id) and every feature compared.

Usage: `.venv/bin/python bench/bench_features_pandas.py [--users 20000] [--append-results]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_lake
from bench_lake import (
    append_results,
    child_env,
    gib,
    instarec_command,
    machine_description,
    run_stage,
)

RECENT_ORDERS = 63


# ---------------------------------------------------------------------------------------------------
# Workers (run in a fresh child each)


def load_snapshot(path: Path):
    from instarec_assets.features import CleanSnapshot

    return CleanSnapshot(**json.loads(path.read_text()))


def duckdb_worker(snapshot_file: Path, out: Path) -> dict:
    import duckdb

    from instarec_assets.features import build_features

    snapshot = load_snapshot(snapshot_file)
    started = time.perf_counter()
    conn = duckdb.connect()
    conn.execute(f"SET memory_limit = '{os.environ.get('INSTAREC_DUCKDB_MEMORY_LIMIT', '4GB')}'")
    tables = build_features(conn, snapshot, out)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "rows": {
            name: getattr(tables, name).row_count
            for name in (
                "user_features",
                "product_features",
                "user_product_features",
                "training_set",
                "inference_set",
            )
        },
    }


def pandas_worker(snapshot_file: Path, out: Path) -> dict:
    import numpy as np
    import pandas as pd

    from instarec_assets.features.columns import FEATURE_COLUMNS

    snapshot = load_snapshot(snapshot_file)
    started = time.perf_counter()
    orders = pd.concat(
        [
            pd.read_parquet(
                path,
                columns=[
                    "order_id",
                    "user_id",
                    "order_number",
                    "order_dow",
                    "order_hour_of_day",
                    "days_since_prior_order",
                ],
            )
            for path in snapshot.orders
        ],
        ignore_index=True,
    )
    lines = pd.concat(
        [
            pd.read_parquet(path, columns=["order_id", "product_id", "add_to_cart_order", "reordered"])
            for path in snapshot.order_products
        ],
        ignore_index=True,
    )
    catalog = pd.read_parquet(
        snapshot.products, columns=["product_id", "aisle_id", "department_id", "is_current"]
    )
    catalog = catalog[catalog["is_current"]].drop_duplicates("product_id").drop(columns="is_current")

    # Orders: sequence per user, running days, basket sizes.
    sizes = lines.groupby("order_id").agg(n_lines=("product_id", "size"), n_reordered=("reordered", "sum"))
    orders = orders.sort_values(["user_id", "order_number"], ignore_index=True)
    orders["seq"] = orders.groupby("user_id").cumcount() + 1
    orders["cum_days"] = orders["days_since_prior_order"].fillna(0).groupby(orders["user_id"]).cumsum()
    orders["last_seq"] = orders.groupby("user_id")["seq"].transform("max")
    orders = orders.merge(sizes, left_on="order_id", right_index=True, how="left")
    orders[["n_lines", "n_reordered"]] = orders[["n_lines", "n_reordered"]].fillna(0)
    last = orders[orders["seq"] == orders["last_seq"]]
    target = last[last["seq"] > 1]
    frames = {
        "target": pd.DataFrame(
            {
                "user_id": target["user_id"].to_numpy(),
                "hist_orders": (target["seq"] - 1).to_numpy(),
                "target_order_id": target["order_id"].to_numpy(),
                "target_set": np.where(target["n_lines"] > 0, "train", "test"),
                "t_dow": target["order_dow"].to_numpy(),
                "t_hour": target["order_hour_of_day"].to_numpy(),
                "t_days_since_prior": target["days_since_prior_order"].to_numpy(),
            }
        )
    }
    serving = last[(last["n_lines"] > 0) | (last["seq"] > 1)]
    frames["serving"] = pd.DataFrame(
        {
            "user_id": serving["user_id"].to_numpy(),
            "hist_orders": np.where(serving["n_lines"] > 0, serving["seq"], serving["seq"] - 1),
            "target_order_id": np.nan,
            "target_set": None,
        }
    )
    mean_gap = np.floor(orders["days_since_prior_order"].mean() + 0.5)

    users_out, products_out, up_out, sets = [], [], [], {}
    for framing, frame in frames.items():
        hist = orders.merge(frame[["user_id", "hist_orders"]], on="user_id")
        hist = hist[hist["seq"] <= hist["hist_orders"]]
        hist["orders_back"] = hist["hist_orders"] - hist["seq"]

        # User level.
        by_user = hist.groupby("user_id")
        after = hist[hist["seq"] > 1].groupby("user_id")
        user = pd.DataFrame(
            {
                "u_orders": by_user.size(),
                "u_items": by_user["n_lines"].sum(),
                "orders_with_lines": (hist["n_lines"] > 0).groupby(hist["user_id"]).sum(),
                "reordered_after_first": after["n_reordered"].sum(),
                "items_after_first": after["n_lines"].sum(),
                "u_days_between_mean": after["days_since_prior_order"].mean(),
                "u_days_between_std": after["days_since_prior_order"].std(ddof=0),
                "u_days_span": by_user["cum_days"].max(),
                "u_usual_hour": by_user["order_hour_of_day"].quantile(0.5, interpolation="lower"),
            }
        )
        dow = (
            hist.groupby(["user_id", "order_dow"])
            .size()
            .reset_index(name="n")
            .sort_values(["user_id", "n", "order_dow"], ascending=[True, False, True])
            .drop_duplicates("user_id")
            .set_index("user_id")["order_dow"]
        )
        user["u_usual_dow"] = dow
        user["u_basket_mean"] = user["u_items"] / user["orders_with_lines"].replace(0, np.nan)
        user["u_reorder_ratio"] = user["reordered_after_first"] / user["items_after_first"].replace(0, np.nan)

        # User x product level: one merge of the lines with the history orders, one groupby.
        hl = lines.merge(
            hist[["order_id", "user_id", "seq", "orders_back", "order_hour_of_day", "cum_days"]],
            on="order_id",
        )
        hl = hl.sort_values(["user_id", "product_id", "orders_back"], ignore_index=True)
        rank = hl.groupby(["user_id", "product_id"]).cumcount()
        hl["streak"] = (hl["orders_back"] == rank) & (hl["orders_back"] < RECENT_ORDERS)
        for k in (1, 3, 5):
            hl[f"last_{k}"] = hl["orders_back"] < k
        up = (
            hl.groupby(["user_id", "product_id"])
            .agg(
                n=("seq", "size"),
                first_seq=("seq", "min"),
                last_seq=("seq", "max"),
                cart_sum=("add_to_cart_order", "sum"),
                reordered_sum=("reordered", "sum"),
                hour_sum=("order_hour_of_day", "sum"),
                first_cum=("cum_days", "min"),
                last_cum=("cum_days", "max"),
                up_streak=("streak", "sum"),
                up_in_last_1=("last_1", "sum"),
                up_in_last_3=("last_3", "sum"),
                up_in_last_5=("last_5", "sum"),
            )
            .reset_index()
        )
        del hl
        up = up.merge(catalog, on="product_id", how="left")
        user["u_distinct_products"] = up.groupby("user_id").size()
        user["u_distinct_products"] = user["u_distinct_products"].fillna(0)
        user["u_distinct_share"] = user["u_distinct_products"] / user["u_items"].replace(0, np.nan)

        # Product level, from the user x product table.
        up["rebuy"] = up["n"] > 1
        up["spanned"] = np.where(up["rebuy"], up["last_seq"] - up["first_seq"], 0)
        up["repeats"] = np.where(up["rebuy"], up["n"] - 1, 0)
        product = up.groupby("product_id").agg(
            p_orders=("n", "sum"),
            p_buyers=("n", "size"),
            rebuyers=("rebuy", "sum"),
            reordered=("reordered_sum", "sum"),
            cart_sum=("cart_sum", "sum"),
            spanned=("spanned", "sum"),
            repeats=("repeats", "sum"),
        )
        product["p_reorder_prob"] = product["rebuyers"] / product["p_buyers"]
        product["p_reorder_ratio"] = product["reordered"] / product["p_orders"]
        product["p_purchases_per_buyer"] = product["p_orders"] / product["p_buyers"]
        product["p_cart_mean"] = product["cart_sum"] / product["p_orders"]
        product["p_orders_between_mean"] = product["spanned"] / product["repeats"].replace(0, np.nan)
        product = product.join(
            catalog.set_index("product_id").rename(
                columns={"aisle_id": "p_aisle_id", "department_id": "p_department_id"}
            )
        )

        # Aisle and department affinity.
        aisle = up.groupby(["user_id", "aisle_id"])["n"].sum().rename("aisle_items").reset_index()
        department = up.groupby(["user_id", "department_id"])["n"].sum().rename("dept_items").reset_index()

        if framing == "serving":
            frame = frame.merge(
                user[["u_usual_dow", "u_usual_hour", "u_days_between_mean"]],
                left_on="user_id",
                right_index=True,
            )
            frame["t_dow"] = frame["u_usual_dow"]
            frame["t_hour"] = frame["u_usual_hour"]
            frame["t_days_since_prior"] = np.floor(frame["u_days_between_mean"] + 0.5).fillna(mean_gap)
            frame = frame.drop(columns=["u_usual_dow", "u_usual_hour", "u_days_between_mean"])

        # User x product features against the target row.
        f = up.merge(frame, on="user_id").merge(
            user[["u_days_span", "u_items"]], left_on="user_id", right_index=True
        )
        f = f.merge(aisle, on=["user_id", "aisle_id"], how="left").merge(
            department, on=["user_id", "department_id"], how="left"
        )
        mean_hour = f["hour_sum"] / f["n"]
        hour_gap = (f["t_hour"] - mean_hour).abs()
        features = pd.DataFrame(
            {
                "framing": framing,
                "user_id": f["user_id"],
                "product_id": f["product_id"],
                "up_orders": f["n"],
                "up_rate": f["n"] / f["hist_orders"],
                "up_rate_since_first": f["n"] / (f["hist_orders"] - f["first_seq"] + 1),
                "up_first_order": f["first_seq"],
                "up_last_order": f["last_seq"],
                "up_orders_since_last": f["hist_orders"] - f["last_seq"],
                "up_days_since_last": f["u_days_span"] - f["last_cum"] + f["t_days_since_prior"],
                "up_days_between_mean": (f["last_cum"] - f["first_cum"]) / (f["n"] - 1).replace(0, np.nan),
                "up_streak": f["up_streak"],
                "up_in_last_1": f["up_in_last_1"],
                "up_in_last_3": f["up_in_last_3"],
                "up_in_last_5": f["up_in_last_5"],
                "up_cart_mean": f["cart_sum"] / f["n"],
                "up_reorder_share": f["reordered_sum"] / f["n"],
                "up_hour_diff": np.minimum(hour_gap, 24 - hour_gap),
                "ua_item_share": f["aisle_items"] / f["u_items"],
                "ud_item_share": f["dept_items"] / f["u_items"],
            }
        )
        # The model's sets: candidates x user x product x target row.
        user_cols = [c for c in FEATURE_COLUMNS if c.startswith("u_")]
        product_cols = [c for c in FEATURE_COLUMNS if c.startswith("p_")]
        full = (
            features.merge(user[user_cols], left_on="user_id", right_index=True)
            .merge(product[product_cols], left_on="product_id", right_index=True)
            .merge(
                frame[["user_id", "target_order_id", "target_set", "t_dow", "t_hour", "t_days_since_prior"]],
                on="user_id",
            )
        )
        if framing == "target":
            train = full[full["target_set"] == "train"]
            target_lines = lines.merge(
                frame.loc[frame["target_set"] == "train", ["target_order_id"]],
                left_on="order_id",
                right_on="target_order_id",
            )[["target_order_id", "product_id"]]
            target_lines["label"] = 1
            train = train.merge(target_lines, on=["target_order_id", "product_id"], how="left")
            train["label"] = train["label"].fillna(0).astype("int8")
            train["eval_set"] = "train"
            sets["training_set"] = train
            test = full[full["target_set"] == "test"].copy()
            test["eval_set"] = "test"
            sets["inference_test"] = test
        else:
            full["eval_set"] = "serving"
            sets["inference_serving"] = full
        user["framing"] = framing
        product["framing"] = framing
        users_out.append(user.reset_index())
        products_out.append(product.reset_index())
        up_out.append(features)

    keep = ["user_id", "product_id", "target_order_id", "eval_set", *FEATURE_COLUMNS]
    training = sets["training_set"][[*keep, "label"]].rename(columns={"target_order_id": "order_id"})
    inference = pd.concat([sets["inference_test"][keep], sets["inference_serving"][keep]], ignore_index=True)
    inference = inference.rename(columns={"target_order_id": "order_id"})
    written = {
        "user_features": pd.concat(users_out, ignore_index=True),
        "product_features": pd.concat(products_out, ignore_index=True),
        "user_product_features": pd.concat(up_out, ignore_index=True),
        "training_set": training,
        "inference_set": inference,
    }
    for name, table in written.items():
        table.to_parquet(out / f"{name}.parquet", index=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": {name: len(table) for name, table in written.items()}}


# ---------------------------------------------------------------------------------------------------
# Driver


def compare_training_sets(duck: Path, pand: Path) -> dict:
    """Join the two training sets on (user_id, product_id); per feature, rows differing beyond 1e-4."""
    import duckdb

    from instarec_assets.features.columns import FEATURE_COLUMNS

    conn = duckdb.connect()
    counts = conn.execute(
        f"SELECT (SELECT count(*) FROM '{duck}'), (SELECT count(*) FROM '{pand}'),"
        f" (SELECT count(*) FROM '{duck}' d JOIN '{pand}' p USING (user_id, product_id))"
    ).fetchone()
    differing = {}
    for column in (*FEATURE_COLUMNS, "label"):
        differing[column] = conn.execute(
            f"SELECT count(*) FILTER (WHERE NOT ((d.{column} IS NULL OR isnan(d.{column}::DOUBLE))"
            f" AND (p.{column} IS NULL OR isnan(p.{column}::DOUBLE)))"
            f" AND (abs(d.{column}::DOUBLE - p.{column}::DOUBLE) > 1e-4 * greatest(1, abs(d.{column}::DOUBLE))"
            f" OR (d.{column} IS NULL) != (p.{column} IS NULL)))"
            f" FROM '{duck}' d JOIN '{pand}' p USING (user_id, product_id)"
        ).fetchone()[0]
    return {
        "duckdb_rows": counts[0],
        "pandas_rows": counts[1],
        "joined_rows": counts[2],
        "differing": differing,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=str(bench_lake.BENCH_DIR / "data" / "features_20k"))
    parser.add_argument("--append-results", action="store_true")
    parser.add_argument("--worker", choices=["duckdb", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv_text = " ".join(a for a in (sys.argv[1:] if argv is None else argv))

    if args.worker:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        worker = duckdb_worker if args.worker == "duckdb" else pandas_worker
        result = worker(Path(args.snapshot), out)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    work_dir = Path(args.work_dir).resolve()
    landing = work_dir / "landing"
    manifest = work_dir / "dataset.json"
    env = child_env(argparse.Namespace(duckdb_memory_limit=None))
    if not (
        manifest.exists() and json.loads(manifest.read_text()) == {"users": args.users, "seed": args.seed}
    ):
        if work_dir.exists():
            shutil.rmtree(work_dir)
        print(f"bench: generating {args.users:,} users under {landing}", flush=True)
        run_stage(
            "generate",
            [
                *instarec_command(),
                "generate",
                "--out",
                str(landing),
                "--users",
                str(args.users),
                "--seed",
                str(args.seed),
            ],
            env,
        )
        from instarec_assets_tests.test_features_generated import clean_snapshot_from_landing

        snapshot = clean_snapshot_from_landing(landing, work_dir / "lake")
        (work_dir / "snapshot.json").write_text(
            json.dumps(
                {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in vars(snapshot).items()}
            )
        )
        manifest.write_text(json.dumps({"users": args.users, "seed": args.seed}))
    snapshot_file = work_dir / "snapshot.json"
    snapshot = json.loads(snapshot_file.read_text())

    stages, results = {}, {}
    for name in ("duckdb", "pandas"):
        out = work_dir / f"out_{name}"
        if out.exists():
            shutil.rmtree(out)
        print(f"bench: {name} features", flush=True)
        stage = run_stage(
            name,
            [sys.executable, __file__, "--worker", name, "--snapshot", str(snapshot_file), "--out", str(out)],
            env,
        )
        stages[name] = stage
        results[name] = json.loads(next(text for _, text in stage.lines if text.startswith("RESULT "))[7:])
    comparison = compare_training_sets(
        work_dir / "out_duckdb" / "training_set.parquet", work_dir / "out_pandas" / "training_set.parquet"
    )

    import duckdb as _duckdb

    con = _duckdb.connect()
    orders_rows = con.execute("SELECT count(*) FROM read_parquet(?)", [snapshot["orders"]]).fetchone()[0]
    lines_rows = con.execute("SELECT count(*) FROM read_parquet(?)", [snapshot["order_products"]]).fetchone()[
        0
    ]
    machine = machine_description()
    d, p = stages["duckdb"], stages["pandas"]
    cores = os.cpu_count() or 1
    differing = {c: n for c, n in comparison["differing"].items() if n}
    lines = [
        f"## {machine['date']} — curated features, DuckDB vs plain pandas, {args.users:,} users, seed {args.seed}",
        "",
        f"Command: `.venv/bin/python bench/bench_features_pandas.py {argv_text}`".replace(
            " `", " `"
        ).rstrip(),
        "",
        f"Machine: {machine['cpu']}, {machine['memory']}, Python {machine['python']}, DuckDB {machine['duckdb']}, "
        f"commit {machine['commit']}.",
        "",
        f"Inputs (both): clean-zone-shaped parquet from `clean_snapshot_from_landing` — {orders_rows:,} orders, "
        f"{lines_rows:,} order lines, 49,688 products. Outputs (both): user, product and user x product "
        "features for the `target` and `serving` framings, training_set and inference_set, written to parquet. "
        "Each implementation ran in a fresh child process.",
        "",
        "| implementation | wall (process) | compute (imports excluded) | CPU user+sys | peak RSS | other load |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (("duckdb", "DuckDB `build_features`"), ("pandas", "plain pandas (groupby/merge)")):
        s = stages[name]
        lines.append(
            f"| {label} | {s.wall_seconds:.1f} s | {results[name]['seconds']:.1f} s "
            f"| {s.user_seconds + s.system_seconds:.1f} s | {gib(s.peak_bytes)} "
            f"| ≈{s.other_cpu_seconds / s.wall_seconds:.2f} of {cores} cores |"
        )
    lines += [
        "",
        f"Ratio pandas / DuckDB: wall {p.wall_seconds / d.wall_seconds:.2f} times, compute "
        f"{results['pandas']['seconds'] / results['duckdb']['seconds']:.2f} times, peak RSS "
        f"{p.peak_bytes / d.peak_bytes:.2f} times.",
        "",
        "Rows: "
        + ", ".join(
            f"{table} {results['duckdb']['rows'][table]:,} / {results['pandas']['rows'][table]:,}"
            for table in results["duckdb"]["rows"]
        )
        + " (DuckDB / pandas).",
        "",
        f"Training sets compared on (user_id, product_id): {comparison['duckdb_rows']:,} DuckDB rows, "
        f"{comparison['pandas_rows']:,} pandas rows, {comparison['joined_rows']:,} joined; "
        + (
            "every feature and the label agree (relative tolerance 1e-4)."
            if not differing
            else "rows differing beyond 1e-4: " + ", ".join(f"{c} {n:,}" for c, n in differing.items()) + "."
        ),
    ]
    lines += bench_lake.load_footer(stages.values())
    section = "\n".join(lines) + "\n"
    (work_dir / "last_run.json").write_text(
        json.dumps(
            {
                "results": results,
                "comparison": comparison,
                "machine": machine,
                "stages": {
                    k: {
                        "wall": v.wall_seconds,
                        "cpu": v.user_seconds + v.system_seconds,
                        "peak": v.peak_bytes,
                        "other_cpu": v.other_cpu_seconds,
                    }
                    for k, v in stages.items()
                },
            },
            indent=2,
        )
    )
    print()
    print(section)
    if args.append_results:
        append_results(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
