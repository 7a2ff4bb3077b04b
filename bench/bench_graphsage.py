"""GraphSAGE benchmark at the full dataset's size: seconds per epoch and peak memory, CPU or GPU.

Each measurement runs in a fresh child process (this script with --child), so one's memory never
pollutes another's; peak RSS is the larger of the kernel's high-water mark for the child (wait4's
ru_maxrss) and the highest sampled RSS (psutil, every 50 ms). On CUDA the peak GPU memory is
torch.cuda.max_memory_allocated.

Children:
- `graphsage`: the instarec model exactly as the `graphsage_model` asset trains it (same code and
  default parameters unless overridden): build the graph, train, then full-graph inference of every
  node and the explore items of every user. Sampled mini-batches on the CPU; full-batch on CUDA.
- `coverage` (--coverage-epoch): one sampled epoch that covers every training edge once.
- `baseline` (--baseline): the issue's yardstick, a bare two-layer SAGEConv (64 dimensions) doing
  full-batch link prediction on a random bipartite graph of the same size (homogeneous, undirected,
  random 64-d features, one uniform negative per edge).

    .venv/bin/python bench/bench_graphsage.py --baseline --coverage-epoch --append-results
    .venv/bin/python bench/bench_graphsage.py --device cuda --baseline --append-results   # on a GPU
    .venv/bin/python bench/bench_graphsage.py --users 20000 --products 10000 --edges 1000000   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO_ROOT / "bench" / "RESULTS.md"
LAST_RUN_FILE = REPO_ROOT / "bench" / "data" / "graphsage_last_run.json"
GIB = 1024**3
SAMPLE_SECONDS = 0.05
RESULT_PREFIX = "RESULT "

FULL_USERS, FULL_PRODUCTS, FULL_EDGES = 206_209, 49_688, 13_000_000
# Targets from the issue.
PIPELINE_MEMORY_BYTES = 8 * 10**9
PIPELINE_SECONDS = 15 * 60
GPU_BARE_SECONDS_PER_EPOCH = 0.10  # the bare model on one H100


# ---------------------------------------------------------------------------------------------------
# Children (run in a fresh process each)


def _lake_snapshot(args: argparse.Namespace):
    from instarec_assets.features.snapshot import CleanSnapshot
    from instarec_assets.lake.locations import LakeLocations

    locations = LakeLocations(env="local", home=str(Path(args.lake).resolve()))
    key = args.partition

    def upto(table: str) -> list[str]:
        return [uri for part, uri in locations.partitions("clean", table).items() if part <= key]

    return CleanSnapshot(
        orders=upto("clean_orders"),
        order_products=upto("clean_order_products"),
        products=locations.partition_uri("clean", "clean_products", key),
        aisles=locations.partition_uri("clean", "clean_aisles", key),
        departments=locations.partition_uri("clean", "clean_departments", key),
    )


def _graph(args: argparse.Namespace, framing: str = "target"):
    """The synthetic full-size graph, or a framing of a lake's clean zone (--lake) built with DuckDB
    as the assets build it (4 GB memory limit, spilling to the scratch folder)."""
    started = time.perf_counter()
    if args.lake:
        import duckdb

        from instarec_assets.ml.graphsage import build_graph

        scratch = Path(args.lake).resolve() / "tmp" / "duckdb"
        conn = duckdb.connect(config={"memory_limit": "4GB", "temp_directory": str(scratch)})
        graph = build_graph(conn, _lake_snapshot(args), framing)
        conn.close()
    else:
        from instarec_assets.ml.graphsage.synthetic import random_graph

        graph = random_graph(args.users, args.products, args.edges, seed=args.seed)
    return graph, time.perf_counter() - started


def _params(args: argparse.Namespace, coverage: bool = False):
    from instarec_assets.ml.graphsage import GraphSageParams

    defaults = GraphSageParams()
    return GraphSageParams(
        epochs=1 if coverage else (args.epochs or defaults.epochs),
        edges_per_epoch=None if coverage else (args.edges_per_epoch or defaults.edges_per_epoch),
        batch_size=args.batch_size or defaults.batch_size,
        fanouts=tuple(args.fanouts) if args.fanouts else defaults.fanouts,
        full_epochs=args.full_epochs or defaults.full_epochs,
        mode="sampled" if coverage else "auto",
        seed=args.seed,
    )


def _cuda_peak(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None


def child_graphsage(args: argparse.Namespace, coverage: bool = False) -> dict:
    import torch

    from instarec_assets.ml.graphsage import EmbeddingTable, embed_graph, explore_items, train_graphsage

    graph, graph_seconds = _graph(args)
    print(f"graph {graph.describe()} in {graph_seconds:.1f} s", flush=True)
    params = _params(args, coverage)
    trained = train_graphsage(graph, params, device=args.device, log=lambda line: print(line, flush=True))
    out = {
        "graph": graph.describe(),
        "graph_seconds": graph_seconds,
        "params": params.as_dict(),
        "training": trained.training,
        "metrics": trained.metrics,
        "epoch_seconds": trained.history["epoch_seconds"],
        "epoch_edges": trained.history["epoch_edges"],
        "epoch_loss": trained.history["epoch_loss"],
        "epoch_auc": trained.history["epoch_auc"],
        "threads": torch.get_num_threads(),
    }
    if coverage:
        return out
    if args.lake:  # the embeddings step embeds the serving graph too (the explore items use it)
        del graph
        graph, out["serving_graph_seconds"] = _graph(args, "serving")
        print(f"serving graph {graph.describe()} in {out['serving_graph_seconds']:.1f} s", flush=True)
    started = time.perf_counter()
    embedded = embed_graph(trained.model, graph, trained.encoding, device=args.device)
    out["inference_seconds"] = time.perf_counter() - started
    print(f"inference of every node: {out['inference_seconds']:.1f} s", flush=True)
    if not args.skip_explore:
        started = time.perf_counter()
        items = explore_items(
            EmbeddingTable.from_vectors(embedded.user_ids, embedded.users),
            EmbeddingTable.from_vectors(embedded.product_ids, embedded.products),
            graph.user_ids[graph.edge_user],
            graph.product_ids[graph.edge_product],
        )
        out["explore_seconds"] = time.perf_counter() - started
        out["explore_rows"] = items.num_rows
        print(f"explore items for every user: {out['explore_seconds']:.1f} s", flush=True)
    del embedded
    out["cuda_peak_bytes"] = _cuda_peak(args.device)
    out["total_seconds"] = (
        graph_seconds
        + trained.metrics["total_seconds"]
        + out.get("serving_graph_seconds", 0)
        + out["inference_seconds"]
        + out.get("explore_seconds", 0)
    )
    return out


def child_baseline(args: argparse.Namespace) -> dict:
    """A bare two-layer SAGEConv (64) doing full-batch link prediction on a random bipartite graph."""
    import torch
    from torch_geometric.nn import SAGEConv

    from instarec_assets.compute import thread_count

    torch.set_num_threads(thread_count(0))  # the CPUs this process may use, as the pipeline does
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    generator = torch.Generator().manual_seed(args.seed)
    n_nodes = args.users + args.products
    users = torch.randint(0, args.users, (args.edges,), generator=generator)
    products = torch.randint(0, args.products, (args.edges,), generator=generator) + args.users
    edge_index = torch.cat([torch.stack([users, products]), torch.stack([products, users])], dim=1).to(device)
    positive = torch.stack([users, products]).to(device)
    del users, products
    x = torch.randn(n_nodes, 64, generator=generator).to(device)

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = SAGEConv(64, 64), SAGEConv(64, 64)

        def forward(self, x, edge_index):
            return self.conv2(self.conv1(x, edge_index).relu(), edge_index)

    torch.manual_seed(args.seed)
    model = Bare().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def epoch() -> float:
        started = time.perf_counter()
        z = model(x, edge_index)
        negative = torch.randint(0, n_nodes, positive.shape, device=device)
        logits = torch.cat(
            [(z[positive[0]] * z[positive[1]]).sum(-1), (z[negative[0]] * z[negative[1]]).sum(-1)]
        )
        labels = torch.cat([torch.ones(positive.shape[1]), torch.zeros(positive.shape[1])]).to(device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        float(loss)  # synchronises on CUDA
        return time.perf_counter() - started

    warmup = epoch()
    times = [epoch() for _ in range(args.baseline_epochs)]
    print(f"baseline: warm-up {warmup:.2f} s, epochs {', '.join(f'{t:.2f}' for t in times)} s", flush=True)
    return {
        "nodes": n_nodes,
        "edges": args.edges,
        "warmup_seconds": warmup,
        "epoch_seconds": times,
        "threads": torch.get_num_threads(),
        "cuda_peak_bytes": _cuda_peak(str(device)),
    }


# ---------------------------------------------------------------------------------------------------
# The parent: one child per measurement, memory sampled from outside


def run_child(kind: str, argv: list[str]) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, *argv]
    load_before = os.getloadavg()[0]
    cpu_before = psutil.cpu_times()
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, bufsize=1)
    done = threading.Event()
    peak_tree = 0
    result: dict = {}

    def read_stdout() -> None:
        nonlocal result
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
            else:
                print(f"    [{kind} {time.perf_counter() - started:6.1f}s] {line.rstrip()}", flush=True)

    def sample_memory() -> None:
        nonlocal peak_tree
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(child.pid)
            while not done.is_set():
                total = 0
                for process in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += process.memory_info().rss
                peak_tree = max(peak_tree, total)
                done.wait(SAMPLE_SECONDS)

    threads = [
        threading.Thread(target=read_stdout, daemon=True),
        threading.Thread(target=sample_memory, daemon=True),
    ]
    for thread in threads:
        thread.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    for thread in threads:
        thread.join()
    busy = sum(
        getattr(psutil.cpu_times(), n, 0.0) - getattr(cpu_before, n, 0.0) for n in ("user", "nice", "system")
    )
    code = os.waitstatus_to_exitcode(status)
    return {
        "kind": kind,
        "returncode": code,
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_bytes": max(usage.ru_maxrss * 1024, peak_tree),
        "load_before": load_before,
        "other_cpu_seconds": max(0.0, busy - usage.ru_utime - usage.ru_stime),
        "result": result,
    }


def machine_description(device: str) -> dict[str, str]:
    import torch
    import torch_geometric

    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    description = {
        "cpu": f"{os.cpu_count()} cores, {cpu_model}",
        "memory": f"{psutil.virtual_memory().total / GIB:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name(0)
    return description


def _commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def wait_until_idle(max_load: float | None, max_wait_seconds: float = 900) -> None:
    if max_load is None:
        return
    deadline = time.monotonic() + max_wait_seconds
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        print(f"bench: load average {os.getloadavg()[0]:.2f} > {max_load}; waiting", flush=True)
        time.sleep(15)


def gib(nbytes: float | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / GIB:.2f} GiB"


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def _disturbance(run: dict) -> str:
    return (
        f"load average {run['load_before']:.2f} at start; other processes used "
        f"{run['other_cpu_seconds']:.0f} CPU-s during the {run['wall_seconds']:.0f} s run"
    )


def render_markdown(args: argparse.Namespace, machine: dict, runs: dict[str, dict]) -> str:
    gpu = args.device.startswith("cuda")
    lines = [
        f"## GraphSAGE ({'GPU' if gpu else 'CPU'}), {machine['date']}",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'bench/bench_graphsage.py', *sys.argv[1:]])}`",
        "",
        "Machine: " + "; ".join(f"{key} {value}" for key, value in machine.items() if key != "date"),
        "",
    ]
    model = runs.get("graphsage")
    if model:
        r = model["result"]
        g, t, m, p = r["graph"], r["training"], r["metrics"], r["params"]
        per_epoch = r["epoch_seconds"]
        steady = per_epoch[1:] if len(per_epoch) > 1 else per_epoch
        seconds_per_epoch = sum(steady) / len(steady)
        edges_per_second = sum(r["epoch_edges"]) / sum(per_epoch)
        source = (
            f"the clean zone of `{args.lake}` (partition {args.partition}), target framing, built with DuckDB"
            if args.lake
            else "synthetic, `random_graph`"
        )
        lines += [
            f"Graph ({source}): {g['users']:,} users, {g['products']:,} products, "
            f"{g['edges']:,} distinct user-product edges; built in {r['graph_seconds']:.1f} s"
            + (
                f" (the serving framing's graph for the embeddings: {r['serving_graph_seconds']:.1f} s)."
                if "serving_graph_seconds" in r
                else "."
            ),
            "",
            "| measure | value |",
            "| --- | --- |",
            f"| mode, device, threads | {t['mode']}, {t['device']}, {r['threads']} |",
            f"| parameters | batch {p['batch_size']}, fanouts {p['fanouts']}, hidden/embedding "
            f"{p['hidden_dim']}/{p['embedding_dim']}, "
            + (
                f"{p['epochs']} epochs x {p['edges_per_epoch']:,} edges"
                if t["mode"] == "sampled"
                else f"{p['full_epochs']} full-graph epochs"
            )
            + " |",
            f"| training edges / held out | {t['train_edges']:,} / {t['held_out_edges']:,} |",
            f"| seconds per epoch (mean{' after the first' if len(per_epoch) > 1 else ''}) | "
            f"{seconds_per_epoch:.2f} s |",
            f"| training throughput | {edges_per_second:,.0f} positive edges/s |",
            f"| training: split, adjacency, epochs with per-epoch held-out AUC | {m['train_seconds']:.1f} s |",
            f"| train_graphsage in all (+ full-graph embeddings and held-out metrics) | {m['total_seconds']:.1f} s |",
            f"| full-graph inference of every node (SpMM) | {r['inference_seconds']:.1f} s |",
        ]
        if "explore_seconds" in r:
            lines.append(
                f"| explore items (2 per user, all users x all products, chunked) | {r['explore_seconds']:.1f} s |"
            )
        lines += [
            f"| whole child (graph + training + inference + explore) | {model['wall_seconds']:.1f} s wall, "
            f"{model['cpu_seconds']:.0f} CPU-s |",
            f"| peak RSS | {gib(model['peak_rss_bytes'])} |",
        ]
        if gpu:
            lines.append(f"| peak GPU memory | {gib(r.get('cuda_peak_bytes'))} |")
        lines += [
            f"| held-out AUC (uniform / degree-weighted negatives) | {m['auc']:.4f} / {m['auc_degree_negatives']:.4f} |",
            f"| cosine positive / negative pairs | {m['cosine_positive_mean']:.4f} / {m['cosine_negative_mean']:.4f} |",
            f"| R² purchase frequency | {m['r2_frequency']:.4f} |",
            f"| other work on the machine | {_disturbance(model)} |",
            "",
        ]
    coverage = runs.get("coverage")
    if coverage:
        r = coverage["result"]
        lines += [
            f"Full-coverage epoch (every one of {r['training']['train_edges']:,} training edges once, "
            f"batch {r['params']['batch_size']}): **{r['epoch_seconds'][0]:.1f} s**, peak RSS "
            f"{gib(coverage['peak_rss_bytes'])} ({_disturbance(coverage)}).",
            "",
        ]
    baseline = runs.get("baseline")
    if baseline:
        if baseline["returncode"] == 0 and baseline["result"]:
            r = baseline["result"]
            mean = sum(r["epoch_seconds"]) / len(r["epoch_seconds"])
            lines += [
                f"Bare baseline (2 x SAGEConv(64), full batch, {r['nodes']:,} nodes, {r['edges']:,} random "
                f"edges both ways): **{mean:.2f} s per epoch** (mean of {len(r['epoch_seconds'])} after a "
                f"{r['warmup_seconds']:.1f} s warm-up), peak RSS {gib(baseline['peak_rss_bytes'])}"
                + (f", peak GPU memory {gib(r['cuda_peak_bytes'])}" if gpu else "")
                + f" ({_disturbance(baseline)}).",
                "",
            ]
        else:
            lines += [
                f"Bare baseline: did not finish (exit status {baseline['returncode']}, peak RSS "
                f"{gib(baseline['peak_rss_bytes'])}).",
                "",
            ]
    lines += ["Targets:", ""]
    if model:
        r = model["result"]
        if gpu:
            per_epoch = r["epoch_seconds"][1:] or r["epoch_seconds"]
            ours = sum(per_epoch) / len(per_epoch)
            reference = GPU_BARE_SECONDS_PER_EPOCH
            if baseline and baseline["result"]:
                bare = baseline["result"]["epoch_seconds"]
                reference = sum(bare) / len(bare)
            lines.append(
                f"- GPU seconds per epoch within 2x of the bare model ({reference:.3f} s): "
                f"{ours:.3f} s, {ours / reference:.2f}x: {verdict(ours <= 2 * reference)}"
            )
        else:
            lines.append(
                f"- full-size training inside the pipeline's 8 GB: peak RSS {gib(model['peak_rss_bytes'])} "
                f"for graph + training + inference + explore: {verdict(model['peak_rss_bytes'] <= PIPELINE_MEMORY_BYTES)}"
            )
            lines.append(
                f"- inside the pipeline's 15 minutes (together with the lake, features and XGBoost): "
                f"GraphSAGE's share is {model['wall_seconds'] / 60:.1f} min wall "
                f"({model['wall_seconds'] / PIPELINE_SECONDS:.0%} of the budget)"
            )
    lines.append("")
    return "\n".join(lines)


def append_results(section: str) -> None:
    if not RESULTS_FILE.exists():
        RESULTS_FILE.write_text(
            "# Benchmark results\n\nNewest last. How to run and read them: [README.md](README.md).\n"
        )
    with RESULTS_FILE.open("a") as handle:
        handle.write("\n" + section)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--users", type=int, default=FULL_USERS)
    parser.add_argument("--products", type=int, default=FULL_PRODUCTS)
    parser.add_argument("--edges", type=int, default=FULL_EDGES, help="distinct user-product edges (about)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lake",
        default=None,
        metavar="HOME",
        help="build the graph from this INSTAREC_HOME's clean zone instead of the synthetic one",
    )
    parser.add_argument("--partition", default="2025-01-06", help="the lake partition (with --lake)")
    parser.add_argument("--epochs", type=int, default=0, help="sampled epochs (0: the model's default)")
    parser.add_argument("--edges-per-epoch", type=int, default=0, help="0: the model's default")
    parser.add_argument("--full-epochs", type=int, default=0, help="full-batch epochs on CUDA (0: default)")
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--fanouts", type=int, nargs="+", default=None)
    parser.add_argument("--skip-explore", action="store_true")
    parser.add_argument("--coverage-epoch", action="store_true", help="also time one epoch over every edge")
    parser.add_argument("--baseline", action="store_true", help="also time the bare full-batch SAGEConv")
    parser.add_argument("--baseline-epochs", type=int, default=3)
    parser.add_argument("--append-results", action="store_true", help="append a section to bench/RESULTS.md")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        metavar="LOAD",
        help="before each child, wait for the 1-minute load average to fall below LOAD",
    )
    parser.add_argument("--max-wait", type=float, default=900, help="seconds to wait for idle at most")
    parser.add_argument("--child", choices=("graphsage", "coverage", "baseline"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        "--device", args.device, "--users", str(args.users), "--products", str(args.products),
        "--edges", str(args.edges), "--seed", str(args.seed), "--epochs", str(args.epochs),
        "--edges-per-epoch", str(args.edges_per_epoch), "--full-epochs", str(args.full_epochs),
        "--batch-size", str(args.batch_size), "--baseline-epochs", str(args.baseline_epochs),
    ]  # fmt: skip
    if args.fanouts:
        argv += ["--fanouts", *map(str, args.fanouts)]
    if args.lake:
        argv += ["--lake", args.lake, "--partition", args.partition]
    if args.skip_explore:
        argv.append("--skip-explore")
    return argv


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        sys.path.insert(0, str(REPO_ROOT))
        handler = {
            "graphsage": child_graphsage,
            "coverage": lambda a: child_graphsage(a, coverage=True),
            "baseline": child_baseline,
        }[args.child]
        print(RESULT_PREFIX + json.dumps(handler(args)), flush=True)
        return 0
    machine = machine_description(args.device)
    runs: dict[str, dict] = {}
    kinds = (
        ["graphsage"]
        + (["coverage"] if args.coverage_epoch else [])
        + (["baseline"] if args.baseline else [])
    )
    for kind in kinds:
        wait_until_idle(args.wait_idle, args.max_wait)
        print(f"bench: {kind}", flush=True)
        runs[kind] = run_child(kind, child_argv(args))
        if runs[kind]["returncode"] != 0 and kind != "baseline":
            raise SystemExit(f"bench: {kind} failed with exit status {runs[kind]['returncode']}")
    section = render_markdown(args, machine, runs)
    print(section)
    LAST_RUN_FILE.parent.mkdir(parents=True, exist_ok=True)
    LAST_RUN_FILE.write_text(json.dumps({"machine": machine, "runs": runs}, indent=2) + "\n")
    if args.append_results:
        append_results(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
