#!/usr/bin/env python3
"""Targets of issue 11 (PASS/MISS), fleetsnap ÷ Ansible ratios and projections.

  summary.py RUN.json [OTHER.json ...]

RUN.json is probe.py report's output. With OTHER runs (other N, same operator) the
projections fit a + b·N through all points; with one run they use the per-host cost of that
run alone (stated in the output). Projections are labelled as such: nothing at 1,000 or
10,000 hosts was run.
"""
import json
import sys


def load(p):
    with open(p) as f:
        return json.load(f)


def phase(run, name):
    for p in run["phases"]:
        if p["phase"] == name:
            return p
    return None


def n_of(run):
    r = phase(run, "rollout") or phase(run, "steady")
    return (r or {}).get("hosts") or run["meta"].get("hosts_up")


def fit(points):
    """least squares a + b·n through (n, y); one point: a = 0, b = y/n."""
    pts = [(n, y) for n, y in points if n and y is not None]
    if not pts:
        return None
    if len({n for n, _ in pts}) < 2:
        n, y = pts[0]
        return (0.0, y / n, "y/N of one run")
    k = len(pts)
    mn = sum(n for n, _ in pts) / k
    my = sum(y for _, y in pts) / k
    b = sum((n - mn) * (y - my) for n, y in pts) / sum((n - mn) ** 2 for n, _ in pts)
    return (my - b * mn, b, f"a+b·N fit over N={sorted({n for n, _ in pts})}")


def fmt(x, nd=1, unit=""):
    if x is None:
        return "—"
    return f"{x:.{nd}f}{unit}"


def main():
    runs = [load(p) for p in sys.argv[1:]]
    run = runs[0]
    n = n_of(run)
    ro, st, fa = phase(run, "rollout"), phase(run, "steady"), phase(run, "faults")
    a0, a1 = phase(run, "ansible-a0"), phase(run, "ansible-a1")

    def get(p, *ks):
        for k in ks:
            if p is None:
                return None
            p = p.get(k) if isinstance(p, dict) else None
        return p

    rollout_s = get(ro, "installed_all_healthy_s")
    success_s = get(ro, "success_all_healthy_s")
    st_p99 = get(st, "fresh_p99_s")
    fa_p99 = get(fa, "fresh_p99_s")
    mem = max([x for x in (get(p, "operator", "rss_peak_mib") for p in run["phases"]) if x is not None] or [None]) \
        if any(get(p, "operator", "rss_peak_mib") for p in run["phases"]) else None
    pss = max([x for x in (get(p, "operator", "pss_peak_mib") for p in run["phases"]) if x is not None] or [0]) or None
    largest = max([p.get("largest_b", 0) for p in run["phases"]] or [0])
    largest_pol = max([p.get("largest_policy_b", 0) for p in run["phases"]] or [0])
    largest_host = max([p.get("largest_host_b", 0) for p in run["phases"]] or [0])

    def scaled_ansible(a):
        if not a or a.get("wall_s") is None:
            return None
        pushed = a.get("hosts_pushed") or n
        return a["wall_s"] * n / pushed, pushed

    rows = []

    def row(what, target, measured, ok, proj1k, proj10k, note=""):
        rows.append((what, target, measured, ok, proj1k, proj10k, note))

    def pm(ok):
        return "—" if ok is None else ("PASS" if ok else "MISS")

    # projections: per-host cost fits over all runs given
    def proj(getter, scale):
        f = fit([(n_of(r), getter(r)) for r in runs])
        if not f:
            return None, None, ""
        a, b, how = f
        return a + b * 1000, a + b * 10000, how

    p_roll = proj(lambda r: get(phase(r, "rollout"), "installed_all_healthy_s"), True)
    row("cold rollout (all hosts installed)", "< 600 s", fmt(rollout_s, 0, " s") + (f" (first success {fmt(success_s, 0, ' s')})" if success_s else ""),
        None if rollout_s is None else rollout_s < 600, fmt(p_roll[0], 0, " s"), fmt(p_roll[1], 0, " s"), p_roll[2])
    p_fr = proj(lambda r: get(phase(r, "steady"), "fresh_p99_s"), True)
    row("steady-state freshness p99", "≤ 300 s", fmt(st_p99, 0, " s") + f" (p50 {fmt(get(st, 'fresh_p50_s'), 0, ' s')}, n={get(st, 'fresh_n')})",
        None if st_p99 is None else st_p99 <= 300, fmt(p_fr[0], 0, " s"), fmt(p_fr[1], 0, " s"), p_fr[2] + "; pass time ∝ N assumed")
    st_age, fa_age = get(st, "age_p99_s"), get(fa, "age_p99_s")
    if st_p99 and fa is not None:
        parts, oks = [], []
        if fa_p99 is not None:
            ch = (fa_p99 - st_p99) / st_p99
            parts.append(f"latency p99 {fmt(fa_p99, 0)} s vs {fmt(st_p99, 0)} s ({ch * 100:+.0f} %, n={get(fa, 'fresh_n')})")
            oks.append(abs(ch) < 0.10)
        else:
            parts.append("no healthy host's status was updated during the faults")
            oks.append(False)
        if st_age and fa_age:
            cha = (fa_age - st_age) / st_age
            parts.append(f"visible age p99 {fmt(fa_age, 0)} s vs {fmt(st_age, 0)} s ({cha * 100:+.0f} %)")
            oks.append(abs(cha) < 0.10)
        row("healthy hosts' freshness with 10 % faulty", "change < 10 %", "; ".join(parts),
            all(oks), "—", "—", "not projected; both the run-to-status latency and the visible age must hold")
    else:
        row("healthy hosts' freshness with 10 % faulty", "change < 10 %", "not measured", None, "—", "—", "")
    # memory: with several runs a + b·N through their peaks; with one run the operator
    # process itself (peak RSS minus its ssh children) as the fixed part and the ssh
    # children's PSS per host as the part that grows
    if len({n_of(r) for r in runs}) >= 2:
        p_mem = proj(lambda r: max([x for x in (get(p, "operator", "rss_peak_mib") for p in r["phases"]) if x] or [0]) or None, True)
    else:
        opk = [get(p, "operator") for p in run["phases"] if get(p, "operator")]
        if opk:
            top = max(opk, key=lambda o: o.get("rss_peak_mib") or 0)
            fixed = (top.get("rss_peak_mib") or 0) - (top.get("ssh_rss_peak_mib") or 0)
            per = max((o.get("ssh_pss_peak_mib") or 0) for o in opk) / n
            p_mem = (fixed + per * 1000, fixed + per * 10000,
                     f"process {fixed:.0f} MiB fixed + ssh PSS {per:.2f} MiB/host (one run)")
        else:
            p_mem = (None, None, "")
    row("operator memory incl. ssh (RSS peak)", "< 256 MiB", fmt(mem, 0, " MiB") + (f" (PSS {fmt(pss, 0)})" if pss else ""),
        None if mem is None else mem < 256, fmt(p_mem[0], 0, " MiB"), fmt(p_mem[1], 0, " MiB"), p_mem[2])
    p_obj = proj(lambda r: max([p.get("largest_policy_b", 0) for p in r["phases"]] or [0]) / 1024 or None, True)
    big1k = None if p_obj[0] is None else max(p_obj[0], largest_host / 1024)
    big10k = None if p_obj[1] is None else max(p_obj[1], largest_host / 1024)
    row("largest object written", "< 256 KiB", f"{largest / 1024:.1f} KiB (Host {largest_host / 1024:.1f}, policy {largest_pol / 1024:.1f})",
        largest / 1024 < 256, fmt(big1k, 0, " KiB"), fmt(big10k, 0, " KiB"), p_obj[2] + " (policy); Host objects do not grow with N")
    ratios = {}
    for name, a, target in (("a0", a0, 5.0), ("a1", a1, 1.5)):
        sa = scaled_ansible(a)
        if sa and rollout_s:
            wall, pushed = sa
            ratio = wall / rollout_s
            ratios[name] = ratio
            note = "same hosts, same run" + ("" if pushed == n else f"; Ansible pushed {pushed} hosts, its time scaled ×{n}/{pushed}")
            if a.get("rc"):
                note += f"; ansible-playbook rc={a['rc']}"
            row(f"vs Ansible {'defaults (forks 5)' if name == 'a0' else 'tuned (forks 50, pipelining, ControlPersist, no facts, free)'}",
                f"≥ {target}× faster", f"Ansible {fmt(a['wall_s'], 0)} s / fleetsnap {fmt(rollout_s, 0)} s = {ratio:.2f}×",
                ratio >= target, f"{ratio:.2f}× (both ∝ N)", f"{ratio:.2f}× (both ∝ N)", note)
        else:
            row(f"vs Ansible {name}", f"≥ {target}×", "not run", None, "—", "—", "")
    print()
    print(f"### Targets (issue 11) at N = {n} measured, and projected")
    print()
    print("| target | goal | measured at N=%d | at N | projected 1,000 | projected 10,000 | how |" % n)
    print("|---|---|---|---|---|---|---|")
    for what, target, measured, ok, p1, p10, note in rows:
        print(f"| {what} | {target} | {measured} | {pm(ok)} | {p1} | {p10} | {note} |")
    # cost per host, the inputs of the projections
    op = get(st, "operator") or {}
    print()
    print("Per-host costs in steady state (inputs to the projections): "
          f"operator {fmt((op.get('cores') or 0) / n * 1000, 2)} millicores/host, "
          f"{fmt((op.get('ssh_rss_peak_mib') or 0) / n, 2)} MiB of ssh RSS/host ({fmt((op.get('ssh_pss_peak_mib') or 0) / n, 2)} PSS), "
          f"{fmt((get(st, 'api_rps') or 0) / n, 3)} API req/s/host, "
          f"hosts {fmt((get(st, 'hosts_cg', 'cores') or 0) / n * 1000, 2)} millicores/host.")
    passed = sum(1 for r in rows if r[3] is True)
    missed = sum(1 for r in rows if r[3] is False)
    print()
    print(f"RESULT N={n}: {passed} PASS {missed} MISS at N; rollout {fmt(rollout_s, 0)} s; freshness p99 {fmt(st_p99, 0)} s; "
          f"operator {fmt(mem, 0)} MiB; largest {largest / 1024:.0f} KiB; "
          + " ".join(f"x{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
