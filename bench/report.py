"""
Turns bench/results/results.json into results.md (tables, targets) and
results.png (plot).  `python bench/report.py` redoes both from the JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any, Dict, List, Optional, Tuple

COLORS = {"chunkd-exp": "#17becf", "chunkd": "#1f77b4", "chunkd-durable": "#9ecae1", "tus-node": "#d62728", "nginx": "#2ca02c",
          "express-multer": "#ff7f0e"}

# metric key -> (column title, format, better)
METRICS = {
    "mbps": ("MB/s", "{:.0f}", "higher"),
    "rate": ("req/s", "{:.0f}", "higher"),
    "server_cpu": ("server CPU s", "{:.2f}", "lower"),
    "peak_rss_mb": ("peak RSS MB", "{:.0f}", "lower"),
    "lat_p50_ms": ("p50 ms", "{:.1f}", "lower"),
    "lat_p99_ms": ("p99 ms", "{:.1f}", "lower"),
    "client_cpu": ("client CPU s", "{:.2f}", "lower"),
    "other_cpu": ("others' CPU s", "{:.2f}", "lower"),
}
EXTRA_COLUMNS = {
    "w1": ["server_cpu", "peak_rss_mb", "client_cpu", "other_cpu"],
    "w2": ["server_cpu", "peak_rss_mb", "lat_p50_ms", "lat_p99_ms", "other_cpu"],
    "w3": ["server_cpu", "peak_rss_mb", "lat_p50_ms", "lat_p99_ms", "other_cpu"],
    "w4": ["server_cpu", "peak_rss_mb", "lat_p50_ms", "lat_p99_ms", "other_cpu"],
    "w5": ["server_cpu", "peak_rss_mb", "lat_p50_ms", "lat_p99_ms", "client_cpu", "other_cpu"],
}


def values(runs: List[Dict[str, Any]], key: str) -> List[float]:
    return [r[key] for r in runs if r.get(key) is not None]


def med(runs: List[Dict[str, Any]], key: str) -> Optional[float]:
    v = values(runs, key)
    return statistics.median(v) if v else None


def fmt(key: str, v: Optional[float]) -> str:
    return "–" if v is None else METRICS[key][1].format(v)


def workloadTable(key: str, w: Dict[str, Any]) -> List[str]:
    head, unit = w["headline"]
    runs = w["runs"]
    base = med(runs.get("chunkd", []), head)
    extra = EXTRA_COLUMNS.get(key, [])
    cols = [f"{unit} median", "min", "max", "ratio to chunkd"] + [METRICS[k][0] + " (median)" for k in extra]
    cols += ["runs", "sha256"]
    lines = ["| server | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in w["servers"]:
        rs = runs.get(name, [])
        v = values(rs, head)
        m = med(rs, head)
        ratio = "–" if (m is None or not base) else f"{m / base:.2f}"
        fails = w["failures"].get(name, [])
        ok = all(r.get("sha256_ok") for r in rs) and not fails
        cells = [fmt(head, m), fmt(head, min(v) if v else None), fmt(head, max(v) if v else None), ratio]
        cells += [fmt(k, med(rs, k)) for k in extra]
        cells += [str(len(rs)), "ok" if ok else f"FAILED ({len(fails)}): {fails[0][:80] if fails else ''}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def ratio(w: Optional[Dict[str, Any]], a: str, b: str, key: str) -> Optional[float]:
    if not w:
        return None
    ma, mb = med(w["runs"].get(a, []), key), med(w["runs"].get(b, []), key)
    if ma is None or not mb:
        return None
    return ma / mb


def clean(w: Optional[Dict[str, Any]], name: str) -> bool:
    if not w:
        return False
    rs = w["runs"].get(name, [])
    return bool(rs) and all(r.get("sha256_ok") for r in rs) and not w["failures"].get(name)


def targets(res: Dict[str, Any], who: str = "chunkd") -> List[Tuple[str, str, str, bool]]:
    """(target, measured, verdict, ok) rows for server C{who} (chunkd, or chunkd-exp)."""
    W = res["workloads"]
    out: List[Tuple[str, str, str, bool]] = []

    def row(name: str, value: Optional[float], op: str, goal: float, wl: str, servers: List[str],
            unit: str = "×") -> None:
        if value is None:
            out.append((name, "not measured", "not measured", False))
            return
        ok = value >= goal if op == ">=" else value <= goal
        ok = ok and all(clean(W.get(wl), s) for s in servers)
        shown = f"{value:.2f}{unit}" if unit == "×" else f"{value:.0f} {unit}"
        out.append((name, shown, "met" if ok else "NOT MET", ok))

    w1, w3 = W.get("w1"), W.get("w3")
    row("W1 throughput ≥ 2× @tus/server", ratio(w1, who, "tus-node", "mbps"), ">=", 2, "w1",
        [who, "tus-node"])
    row("W1 throughput ≥ 0.7× nginx sink", ratio(w1, who, "nginx", "mbps"), ">=", 0.7, "w1",
        [who, "nginx"])
    row("W1 peak RSS ≤ 60 MB", med(w1["runs"].get(who, []), "peak_rss_mb") if w1 else None,
        "<=", 60, "w1", [who], "MB")
    row("W3 aggregate throughput ≥ 2× @tus/server", ratio(w3, who, "tus-node", "mbps"), ">=", 2,
        "w3", [who, "tus-node"])
    # 64 writers, each pausing its socket at high water (4 MiB) plus one more read
    bound = 60 + 64 * (4 + 1 / 4)
    row(f"W3 memory bounded by the write queues (peak RSS ≤ 60 MB + 64 × (4 MiB high water + one read) "
        f"≈ {bound:.0f} MB, for {res['config']['n3'] * res['config']['size3'] >> 20} MiB of data)",
        med(w3["runs"].get(who, []), "peak_rss_mb") if w3 else None, "<=", bound, "w3", [who], "MB")
    row("W4 end to end ≥ 2× Express+multer", ratio(W.get("w4"), who, "express-multer", "mbps"),
        ">=", 2, "w4", [who, "express-multer"])
    row("W5 HEAD rate ≥ 1× @tus/server", ratio(W.get("w5"), who, "tus-node", "rate"), ">=", 1,
        "w5", [who, "tus-node"])
    return out


def markdown(res: Dict[str, Any]) -> str:
    m = res["machine"]
    c = res["config"]
    L = [
        "# chunkd benchmark results",
        "",
        f"Date: {res['date']}. chunkd commit {m['chunkd_commit']}. {c['runs']} runs per server and workload, "
        "servers alternated run by run, `sync; sleep 1` and a memory touch before every timed run."
        + (" **Quick (smoke) sizes.**" if c["quick"] else ""),
        "",
        f"Machine: {m['nproc']} vCPU ({m['cpu']}), {m['memory']} RAM, disk {m['disk']}; Linux {m['kernel']}; "
        f"Python {m['python']}, Twisted {m['twisted']}; Node {m['node']} with @tus/server {m['tus_server']}; "
        f"nginx {m['nginx']}; {m['curl']}.",
        "",
        "MB/s is 10^6 bytes per second. Ratio to chunkd = this server's median ÷ chunkd's median "
        "(below 1 means chunkd is ahead on a higher-is-better metric). `chunkd` runs with "
        "`storage.durable: false`, like every peer (none of them fsyncs); `chunkd-durable` is the shipped "
        "default (`fdatasync` before an offset is recorded), shown for information.",
        "",
        "Others' CPU s: CPU time the rest of the machine used during the run (not the server, not the "
        "client): this machine is shared with other sessions' tests, and a run with a large figure there "
        "was disturbed. Before each run the harness waits (up to "
        f"{c.get('quiet_wait', 30):.0f} s) for the machine to be calm (under {c.get('quiet_limit', 0.3)} busy CPUs).",
        "",
    ]
    if res.get("experiment"):
        e = res["experiment"]
        L += [f"`chunkd-exp` (workloads 1–4) is an experimental chunkd tree run beside the committed one, "
              f"same config: {e.get('note') or e['tree']} (environment {e['env']}). It is not what the "
              "targets below are judged on.", ""]
    for key in ("w1", "w2", "w3", "w4", "w5"):
        if key in res["skipped"]:
            L += [f"## {key.upper()}", "", f"Skipped: {res['skipped'][key]}", ""]
            continue
        w = res["workloads"].get(key)
        if not w:
            continue
        commit = res.get("commits", {}).get(key)
        note = f" (chunkd {commit})" if commit and commit != m["chunkd_commit"] else ""
        L += [f"## {key.upper()}: {w['title']}{note}", ""] + workloadTable(key, w) + [""]
    L += ["## Targets (issue 6)", ""]
    mine = targets(res)
    if res.get("experiment"):
        exp = targets(res, "chunkd-exp")
        L += ["Judged on `chunkd` (the commit under test); the `chunkd-exp` column shows what the "
              "experimental tree measured in the same run, for information.", "",
              "| target | chunkd | verdict | chunkd-exp | would be |", "|---|---|---|---|---|"]
        for (name, shown, verdict, _), (_, eshown, everdict, _) in zip(mine, exp):
            L.append(f"| {name} | {shown} | {verdict} | {eshown} | {everdict} |")
    else:
        L += ["| target | measured | verdict |", "|---|---|---|"]
        for name, shown, verdict, _ in mine:
            L.append(f"| {name} | {shown} | {verdict} |")
    L += ["", "![results](results.png)", ""]
    if res.get("elapsed_s"):
        L.append(f"Harness run time: {res['elapsed_s'] / 60:.1f} min.")
    return "\n".join(L) + "\n"


def plot(res: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for key in ("w1", "w2", "w3", "w4", "w5"):
        w = res["workloads"].get(key)
        if w:
            panels.append((key, w, w["headline"][0], w["headline"][1]))
    for key in ("w1", "w3", "w4"):
        w = res["workloads"].get(key)
        if w:
            panels.append((key, w, "peak_rss_mb", "peak RSS MB"))
    if not panels:
        return
    cols = 4 if len(panels) > 4 else len(panels)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, w, metric, unit) in zip(axes.flat, panels):
        names = [n for n in w["servers"] if w["runs"].get(n)]
        meds, lo, hi = [], [], []
        for n in names:
            v = values(w["runs"][n], metric)
            mm = statistics.median(v)
            meds.append(mm)
            lo.append(mm - min(v))
            hi.append(max(v) - mm)
        x = range(len(names))
        ax.bar(x, meds, yerr=[lo, hi], capsize=4, color=[COLORS.get(n, "#777") for n in names])
        for i, mm in enumerate(meds):
            ax.text(i, mm, f"{mm:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=20, fontsize=8)
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(f"{key.upper()}: {w['title']}", 48)), fontsize=8.5)
        ax.set_ylabel(unit + (" (higher is better)" if metric in ("mbps", "rate") else " (lower is better)"),
                      fontsize=8)
    fig.suptitle(f"chunkd vs peers, {res['date']}, median of {res['config']['runs']} runs (whiskers: min–max)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(res: Dict[str, Any], outdir: str) -> None:
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(markdown(res))
    plot(res, os.path.join(outdir, "results.png"))


if __name__ == "__main__":
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    with open(os.path.join(d, "results.json")) as f:
        write(json.load(f), d)
