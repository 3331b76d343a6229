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
          "express-multer": "#ff7f0e", "tuspy": "#9467bd", "tuspy-malloc": "#c5b0d5"}
TABLE_KEYS = ("w1", "w2", "w3", "w4", "w5", "w8")
TUSPY = ("tuspy", "tuspy-malloc")
MiB = 1 << 20

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
    "head_p50_ms": ("HEAD p50 ms", "{:.1f}", "lower"),
    "head_p99_ms": ("HEAD p99 ms", "{:.1f}", "lower"),
    "head_max_ms": ("HEAD max ms", "{:.1f}", "lower"),
    "heads": ("HEADs", "{:.0f}", "higher"),
}
EXTRA_COLUMNS = {
    "w1": ["server_cpu", "peak_rss_mb", "client_cpu", "other_cpu"],
    "w2": ["server_cpu", "peak_rss_mb", "lat_p50_ms", "lat_p99_ms", "other_cpu"],
    "w3": ["server_cpu", "peak_rss_mb", "lat_p50_ms", "lat_p99_ms", "other_cpu"],
    "w4": ["server_cpu", "peak_rss_mb", "lat_p50_ms", "lat_p99_ms", "other_cpu"],
    "w5": ["server_cpu", "peak_rss_mb", "lat_p50_ms", "lat_p99_ms", "client_cpu", "other_cpu"],
    "w8": ["head_p50_ms", "head_max_ms", "heads", "mbps", "server_cpu", "peak_rss_mb", "other_cpu"],
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
    idle, idleRuns = w.get("idle_rss_mb", {}), w.get("idle_rss_before_runs_mb", {})
    cols = [f"{unit} median", "min", "max", "ratio to chunkd"] + [METRICS[k][0] + " (median)" for k in extra]
    if idle:
        cols += ["idle RSS MB (started / before runs)"]
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
        if idle:
            cells += ["–" if name not in idle else f"{idle[name]:.1f} / {idleRuns.get(name, 0):.1f}"]
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


def best(w: Optional[Dict[str, Any]], names: Tuple[str, ...], key: str) -> Tuple[Optional[float], str]:
    """The highest median of C{key} among C{names}, and whose it is."""
    found = [(med(w["runs"].get(n, []), key), n) for n in names] if w else []
    found = [(v, n) for v, n in found if v is not None]
    return max(found) if found else (None, "")


def scriptRuns(res: Dict[str, Any], key: str, variant: str) -> Optional[Dict[str, Any]]:
    w = res["workloads"].get(key)
    if not w or "variants" not in w:
        return None
    v = w["variants"].get(variant)
    return v["figures"] if v else None


Row = Tuple[str, str, str, str, str]


def issue14(res: Dict[str, Any]) -> List[Row]:
    """
    (target, measured on chunkd-durable, verdict, measured on chunkd with
    durable: false, what its verdict would be).  The verdict is the durable
    default's (issue 14: durable: false may be shown beside, never instead);
    W6 and W7 run chunkd alone, on its default.
    """
    W = res["workloads"]
    out: List[Row] = []

    def judge(value: Optional[float], op: str, goal: float, ok: bool) -> str:
        if value is None:
            return "not measured"
        met = (value >= goal if op == ">=" else value <= goal) and ok
        return "met" if met else "NOT MET"

    def ratioRow(name: str, wl: str, peers: Tuple[str, ...], key: str, goal: float, label: str = "") -> None:
        w = W.get(wl)
        peer, who = best(w, peers, key)
        cells: List[str] = []
        for c in ("chunkd-durable", "chunkd"):
            mc = med(w["runs"].get(c, []), key) if w else None
            if mc is None or not peer:
                cells += ["not measured", "not measured"]
                continue
            r = mc / peer
            ok = clean(w, c) and clean(w, who)
            cells += [f"{r:.2f}× ({mc:.0f} vs {who} {peer:.0f})", judge(r, ">=", goal, ok)]
        out.append((name, cells[0], cells[1], cells[2], cells[3]))

    def valueRow(name: str, wl: str, key: str, goal: float, unit: str, fmtv: str = "{:.1f}") -> None:
        w = W.get(wl)
        cells: List[str] = []
        for c in ("chunkd-durable", "chunkd"):
            v = med(w["runs"].get(c, []), key) if w else None
            cells += ["not measured" if v is None else f"{fmtv.format(v)} {unit}", judge(v, "<=", goal, clean(w, c))]
        out.append((name, cells[0], cells[1], cells[2], cells[3]))

    ratioRow("W1 one PATCH ≥ 1.25× tuspyserver at its best (tuspy, tuspy-malloc)", "w1", TUSPY, "mbps", 1.25)
    ratioRow("W1 ≥ 3× @tus/server", "w1", ("tus-node",), "mbps", 3)
    ratioRow("W1 ≥ 0.9× the nginx sink", "w1", ("nginx",), "mbps", 0.9)
    w1 = W.get("w1")
    cells: List[str] = []
    for c in ("chunkd-durable", "chunkd"):
        idle = (w1 or {}).get("idle_rss_before_runs_mb", {}).get(c)
        started = (w1 or {}).get("idle_rss_mb", {}).get(c)
        cells += ["not measured" if idle is None else f"{idle:.1f} MB ({started:.1f} just started)",
                  judge(idle, "<=", 50, True)]
    out.append(("W1 idle RSS ≤ 50 MB (before the first timed run)", cells[0], cells[1], cells[2], cells[3]))
    valueRow("W1 peak RSS ≤ 60 MB", "w1", "peak_rss_mb", 60, "MB", "{:.0f}")
    ratioRow("W3 uploads at once ≥ 3× @tus/server", "w3", ("tus-node",), "mbps", 3)
    ratioRow("W3 ≥ 1.5× tuspyserver at its best", "w3", TUSPY, "mbps", 1.5)
    ratioRow("W4 Resumable.js ≥ 3× Express+multer", "w4", ("express-multer",), "mbps", 3)
    ratioRow("W5 HEADs ≥ 2× @tus/server", "w5", ("tus-node",), "rate", 2)
    ratioRow("W5 HEADs ≥ 2× tuspyserver at its best", "w5", TUSPY, "rate", 2)

    for variant, label in (("default", ""), ("slow-disk", " on a slow disk")):
        name = f"W6 many uploads at once{label}: peak RSS ≤ 320 MiB at disk.max_buffered 256 MiB, all byte-exact"
        f = scriptRuns(res, "w6", variant)
        why = (W.get("w6") or {}).get("skipped", {}).get(variant) or (W.get("w6") or {}).get("failures", {}).get(variant)
        if f is None:
            out.append((name, "not measured" + (f": {why}" if why else ""), "not measured", "–", "–"))
            continue
        runs = f["runs"].get(str(256 * MiB), [])
        peak = statistics.median(r["peak"] for r in runs) if runs else None
        allRuns = [r for rs in f["runs"].values() for r in rs]
        exact = min((r["exact"] for r in allRuns), default=0)
        shown = ("not measured" if peak is None else
                 f"{peak:.0f} MiB ({f['n']:,} × {f['size'] / MiB:g} MiB), worst run {exact:.0f}/{f['n']} byte-exact")
        out.append((name, shown, judge(peak, "<=", 320, exact == f["n"]), "–", "–"))

    w7 = W.get("w7") or {}
    counts = sorted(set(int(k) for k in w7.get("variants", {})) | {100000, 1000000})
    for n in counts:
        name = f"W7 first answer ≤ 1 s after start with {n:,} upload records"
        if n not in (100000, 1000000):
            name += " (quick size, not a target)"
        f = scriptRuns(res, "w7", str(n))
        if f is None:
            why = w7.get("failures", {}).get(str(n))
            out.append((name, "not measured" + (f": {why}" if why else ""), "not measured", "–", "–"))
            continue
        first = [r["firstAnswer"] for rs in f["runs"].values() for r in rs]
        v = statistics.median(first)
        out.append((name, f"{v:.2f} s (median of {len(first)}; max {max(first):.2f} s)",
                    judge(v, "<=", 1, True), "–", "–"))
    valueRow("W8 HEAD p99 ≤ 20 ms while 16 uploads stream", "w8", "head_p99_ms", 20, "ms")
    return out


def scriptSections(res: Dict[str, Any]) -> List[str]:
    """W6 and W7: their scripts' figures, one table each."""
    L: List[str] = []
    w6 = res["workloads"].get("w6")
    if w6:
        L += [f"## W6: {w6['title']}", "", f"`{w6['script']}`, chunkd alone, durable (its default).", "",
              "| variant | disk.max_buffered | peak RSS MiB median | min–max | idle RSS MiB | MB/s median | byte-exact (worst run) | runs |",
              "|---|---|---|---|---|---|---|---|"]
        for variant, v in w6["variants"].items():
            f = v["figures"]
            for budget, runs in f["runs"].items():
                peaks = [r["peak"] for r in runs]
                L.append(f"| {variant} | {'none' if budget == '0' else f'{int(budget) / MiB:.0f} MiB'} | "
                         f"{statistics.median(peaks):.0f} | {min(peaks):.0f}–{max(peaks):.0f} | "
                         f"{statistics.median(r['idle'] for r in runs):.0f} | "
                         f"{statistics.median(r['mbps'] for r in runs):.0f} | "
                         f"{min(r['exact'] for r in runs):.0f}/{f['n']} | {len(runs)} |")
        for variant, why in {**w6.get("skipped", {}), **w6.get("failures", {})}.items():
            L.append(f"| {variant} | – | not measured: {why} | | | | | |")
        L.append("")
    w7 = res["workloads"].get("w7")
    if w7:
        L += [f"## W7: {w7['title']}", "", f"`{w7['script']}`, chunkd alone. Seconds from the process's start.", "",
              "| upload records | listening s | first HEAD answered s (median) | max | all records checked s | runs |",
              "|---|---|---|---|---|---|"]
        for n, v in sorted(w7["variants"].items(), key=lambda kv: int(kv[0])):
            runs = [r for rs in v["figures"]["runs"].values() for r in rs]
            checked = [r["checked"] for r in runs if r.get("checked") is not None]
            L.append(f"| {int(n):,} | {statistics.median(r['listening'] for r in runs):.2f} | "
                     f"{statistics.median(r['firstAnswer'] for r in runs):.2f} | "
                     f"{max(r['firstAnswer'] for r in runs):.2f} | "
                     f"{statistics.median(checked):.2f} | {len(runs)} |" if checked else
                     f"| {int(n):,} | {statistics.median(r['listening'] for r in runs):.2f} | "
                     f"{statistics.median(r['firstAnswer'] for r in runs):.2f} | "
                     f"{max(r['firstAnswer'] for r in runs):.2f} | – | {len(runs)} |")
        for n, why in w7.get("failures", {}).items():
            L.append(f"| {int(n):,} | not measured: {why} | | | | |")
        L.append("")
    return L


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
        f"nginx {m['nginx']}; {m['curl']}"
        + (f"; tuspyserver {m['tuspyserver']} with FastAPI {m.get('fastapi', '?')} under uvicorn {m.get('uvicorn', '?')}"
           if m.get("tuspyserver") else "") + ".",
        "",
        "MB/s is 10^6 bytes per second. Ratio to chunkd = this server's median ÷ chunkd's median "
        "(below 1 means chunkd is ahead on a higher-is-better metric). `chunkd` runs with "
        "`storage.durable: false`, like every peer (none of them fsyncs); `chunkd-durable` is the shipped "
        "default (`fdatasync` before an offset is recorded), on which issue 14's targets are judged. "
        "`tuspy` is tuspyserver under uvicorn as its README sets it up; `tuspy-malloc` the same with the glibc "
        "malloc thresholds chunkd sets for itself (`MALLOC_TRIM_THRESHOLD_` 64 MiB, `MALLOC_MMAP_THRESHOLD_` 4 MiB).",
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
    for key in TABLE_KEYS:
        if key in res["skipped"]:
            L += [f"## {key.upper()}", "", f"Skipped: {res['skipped'][key]}", ""]
            continue
        w = res["workloads"].get(key)
        if not w:
            continue
        commit = res.get("commits", {}).get(key)
        note = f" (chunkd {commit})" if commit and commit != m["chunkd_commit"] else ""
        L += [f"## {key.upper()}: {w['title']}{note}", ""] + workloadTable(key, w) + [""]
    L += scriptSections(res)
    L += ["## Issue 14 targets", "",
          "Judged on `chunkd-durable`, the shipped default (`storage.durable: true`); `chunkd` with "
          "`durable: false` is shown beside, for information, with what its verdict would be. "
          "\"tuspyserver at its best\" is the higher median of `tuspy` and `tuspy-malloc`. "
          "A target whose runs had a wrong sha256 or a failure is not met.", "",
          "| target | chunkd-durable (default) | verdict | chunkd, durable: false | would be |",
          "|---|---|---|---|---|"]
    for row in issue14(res):
        L.append("| " + " | ".join(row) + " |")
    L += ["", "## Targets (issue 6)", ""]
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

    # (title, bar names, values per bar, unit, higher is better)
    panels: List[Tuple[str, List[str], List[List[float]], str, bool]] = []

    def add(key: str, w: Dict[str, Any], metric: str, unit: str) -> None:
        names = [n for n in w["servers"] if values(w["runs"].get(n, []), metric)]
        if names:
            panels.append((f"{key.upper()}: {w['title']}", names, [values(w["runs"][n], metric) for n in names],
                           unit, metric in ("mbps", "rate")))

    for key in TABLE_KEYS:
        w = res["workloads"].get(key)
        if w:
            add(key, w, w["headline"][0], w["headline"][1])
    w8 = res["workloads"].get("w8")
    if w8:
        add("w8", {**w8, "title": "uploads' throughput meanwhile"}, "mbps", "MB/s")
    for key in ("w1", "w3", "w4"):
        w = res["workloads"].get(key)
        if w:
            add(key, w, "peak_rss_mb", "peak RSS MB")
    w6 = res["workloads"].get("w6")
    if w6 and w6.get("variants"):
        names, vals = [], []
        for variant, v in w6["variants"].items():
            for budget, runs in v["figures"]["runs"].items():
                names.append(f"{variant}, {'no budget' if budget == '0' else f'{int(budget) / MiB:.0f} MiB'}")
                vals.append([r["peak"] for r in runs])
        panels.append((f"W6: {w6['title']}", names, vals, "chunkd peak RSS MiB", False))
    w7 = res["workloads"].get("w7")
    if w7 and w7.get("variants"):
        items = sorted(w7["variants"].items(), key=lambda kv: int(kv[0]))
        panels.append((f"W7: {w7['title']}", [f"{int(n):,} records" for n, _ in items],
                       [[r["firstAnswer"] for rs in v["figures"]["runs"].values() for r in rs] for _, v in items],
                       "first answer s", False))
    if not panels:
        return
    cols = 4 if len(panels) > 4 else len(panels)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, names, vals, unit, higher) in zip(axes.flat, panels):
        meds, lo, hi = [], [], []
        for v in vals:
            mm = statistics.median(v)
            meds.append(mm)
            lo.append(mm - min(v))
            hi.append(max(v) - mm)
        x = range(len(names))
        ax.bar(x, meds, yerr=[lo, hi], capsize=4, color=[COLORS.get(n, COLORS["chunkd-durable"]) for n in names])
        for i, mm in enumerate(meds):
            ax.text(i, mm, f"{mm:.0f}" if mm >= 10 else f"{mm:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=20, fontsize=8)
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=8.5)
        ax.set_ylabel(unit + (" (higher is better)" if higher else " (lower is better)"), fontsize=8)
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
