#!/usr/bin/env python3
"""Turn bench/run.sh measurements into the table (stdout) plus <out>.json and <out>.md.

  report.py META.json RESULTS.tsv OUT_PREFIX

RESULTS.tsv columns: op backend tool seconds peak_rss_kib exit_code load1 note
"""

import json
import sys

# The targets of issue 3, as limits on fleetsnap/restic ratios from the same run.
# Time ratio = fleetsnap seconds / restic seconds; a throughput target "≥ k× restic" is a
# time ratio ≤ 1/k because both tools process the same bytes.
TIME_TARGET = {
    "backup-first": (0.5, "≥2× throughput"),
    "backup-nochange": (0.5, "≤0.5× time"),
    "backup-1pct": (0.5, "≤0.5× time"),
    "restore": (1 / 1.5, "≥1.5× throughput"),
    "check": (1 / 1.5, "≥1.5× throughput"),
}
RSS_TARGET = 0.5
# Rows with a throughput: operations that move (about) the whole dataset.
THROUGHPUT_OPS = {"backup-first", "backup-nochange", "backup-1pct", "restore", "check"}
OP_ORDER = ["backup-first", "backup-nochange", "backup-1pct", "restore", "check", "forget-prune"]
TOOL_ORDER = ["fleetsnap", "restic", "rustic"]


def load(meta_path, tsv_path):
    meta = json.load(open(meta_path))
    rows = []
    for line in open(tsv_path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 8:
            f += [""] * (8 - len(f))
        op, be, tool, secs, rss, rc, load1, note = f[:8]
        rows.append({
            "op": op, "backend": be, "tool": tool,
            "seconds": float(secs) if secs else None,
            "peak_rss_mib": round(int(rss) / 1024, 1) if rss else None,
            "exit_code": int(rc), "load1": float(load1) if load1 else None, "note": note,
        })
    return meta, rows


def enrich(meta, rows):
    by = {(r["op"], r["backend"], r["tool"]): r for r in rows}
    mb = meta["dataset_bytes"] / 1e6
    for r in rows:
        ok = r["exit_code"] == 0
        r["mb_per_s"] = round(mb / r["seconds"], 1) if ok and r["op"] in THROUGHPUT_OPS and r["seconds"] else None
        base = by.get((r["op"], r["backend"], "restic"))
        r["time_vs_restic"] = r["rss_vs_restic"] = None
        if ok and base and base["exit_code"] == 0 and base["seconds"]:
            r["time_vs_restic"] = round(r["seconds"] / base["seconds"], 2)
            r["rss_vs_restic"] = round(r["peak_rss_mib"] / base["peak_rss_mib"], 2)
        r["verdict"] = verdict(r, base)
    return [r for r in sorted(rows, key=lambda r: (OP_ORDER.index(r["op"]) if r["op"] in OP_ORDER else -1,
                                                     r["backend"], TOOL_ORDER.index(r["tool"])))
            if r["op"] != "init"]


def verdict(r, base):
    """PASS/MISS per target, for fleetsnap rows only (the targets are fleetsnap's)."""
    if r["tool"] != "fleetsnap":
        return ""
    if r["exit_code"] != 0:
        return "MISS (failed)"
    if not base or base["exit_code"] != 0:
        return "n/a (no restic baseline)"
    parts = []
    if r["op"] in TIME_TARGET:
        lim, label = TIME_TARGET[r["op"]]
        parts.append(f"{label}: {'PASS' if r['time_vs_restic'] <= lim else 'MISS'}")
    parts.append(f"RSS ≤0.5×: {'PASS' if r['rss_vs_restic'] <= RSS_TARGET else 'MISS'}")
    return "; ".join(parts)


COLS = [("op", "operation"), ("backend", "backend"), ("tool", "tool"), ("seconds", "s"),
        ("mb_per_s", "MB/s"), ("peak_rss_mib", "RSS MiB"), ("time_vs_restic", "time ×restic"),
        ("rss_vs_restic", "RSS ×restic"), ("verdict", "target")]


def cell(r, k):
    v = r[k]
    if k == "seconds" and r["exit_code"] != 0:
        return f"failed ({v}s)"
    return "—" if v is None or v == "" else str(v)


def header_lines(meta):
    v = meta["versions"]
    return [
        f"dataset: {meta['dataset_files']} files, {meta['dataset_bytes'] / 2**30:.2f} GiB "
        f"(--size-gib {meta['size_gib']}); MB = 10^6 bytes of the dataset per second",
        f"machine: {meta['cpus']} CPUs; load average start {meta['load_start']}, end {meta['load_end']}; "
        f"page cache dropped before each step: {meta['drop_caches']}",
        f"versions: {v['fleetsnap']} (git {meta['git_commit']}); {v['restic']}; {v['rustic'] or 'rustic: not run'}",
        f"started {meta['started_utc']}",
    ]


def notes(rows):
    return [f"{r['op']} {r['backend']} {r['tool']}: {r['note']}" for r in rows if r["note"]]


def text_table(meta, rows):
    table = [[h for _, h in COLS]] + [[cell(r, k) for k, _ in COLS] for r in rows]
    w = [max(len(row[i]) for row in table) for i in range(len(COLS))]
    out = header_lines(meta) + [""]
    for i, row in enumerate(table):
        out.append("  ".join(c.ljust(w[j]) if j < 3 or j == len(COLS) - 1 else c.rjust(w[j])
                             for j, c in enumerate(row)).rstrip())
        if i == 0:
            out.append("  ".join("-" * x for x in w))
    n = notes(rows)
    if n:
        out += ["", "notes:"] + ["  " + x for x in n]
    return "\n".join(out)


def md_table(meta, rows):
    out = ["- " + h for h in header_lines(meta)] + [""]
    out.append("| " + " | ".join(h for _, h in COLS) + " |")
    out.append("|" + "|".join("---" if i < 3 or i == len(COLS) - 1 else "---:" for i in range(len(COLS))) + "|")
    for r in rows:
        out.append("| " + " | ".join(cell(r, k).replace("|", "\\|") for k, _ in COLS) + " |")
    n = notes(rows)
    if n:
        out += ["", "Notes:", ""] + ["- " + x.replace("|", "\\|") for x in n]
    return "\n".join(out) + "\n"


def main():
    meta_path, tsv_path, prefix = sys.argv[1:4]
    meta, rows = load(meta_path, tsv_path)
    rows = enrich(meta, rows)
    print(text_table(meta, rows))
    with open(prefix + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2, ensure_ascii=False)
    with open(prefix + ".md", "w") as f:
        f.write(md_table(meta, rows))
    print(f"\nwritten: {prefix}.json {prefix}.md")


if __name__ == "__main__":
    main()
