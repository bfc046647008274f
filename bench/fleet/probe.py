#!/usr/bin/env python3
"""The fleet benchmark's measuring side (stdlib only).

  probe.py watch  --out D --env TESTENV_ENV --ns NS --policy P --cgroot R
      runs until killed: watches Hosts and BackupPolicies (every write arrives as a watch
      event: its size is the size of the object written, its arrival time is when the status
      became visible), samples the component cgroups every 5 s and the API server's
      apiserver_request_total every 10 s. Appends JSON lines to D/*.jsonl.
  probe.py report --out D [--json F]
      reads D/*.jsonl and D/phases.jsonl (written by run.sh), prints the table.

What the status reader relies on, and what it tolerates: per-host detail is read from
Host.status.policies[kind=BackupPolicy,name=P] (lastSuccess, error, nextRun). If a Host has
no such entry the reader falls back to BackupPolicy.status.hosts[name] (the current CRD). The
BackupPolicy's own counts are read from whichever of hostsSucceeded/hostsTotal (current) or
counts.{succeeded,total} / worstHosts (a bounded status) exist; none of them is required.
"""
import argparse
import http.client
import json
import os
import re
import ssl
import sys
import threading
import time
from datetime import datetime, timezone

GROUP = "/apis/fleetsnap.io/v1alpha1"


def parse_env(path):
    env = {}
    for line in open(path):
        m = re.match(r"^([A-Za-z_0-9]+)='(.*)'$", line.rstrip("\n"))
        if m:
            env[m.group(1)] = m.group(2)
    return env


def ts(s):
    if not s:
        return None
    return datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z").timestamp()


class Api:
    def __init__(self, env):
        d = env["TESTENV_DIR"]
        m = re.match(r"https://([^:]+):(\d+)", env["KUBE_APISERVER"])
        self.host, self.port = m.group(1), int(m.group(2))
        self.ctx = ssl.create_default_context(cafile=env["KUBE_CA_FILE"])
        self.ctx.load_cert_chain(f"{d}/pki/admin.crt", f"{d}/pki/admin.key")

    def conn(self, timeout=60):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def get(self, path):
        c = self.conn()
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
            return body
        finally:
            c.close()


class Out:
    def __init__(self, d):
        self.d = d
        self.lock = threading.Lock()
        self.files = {}

    def write(self, name, obj):
        with self.lock:
            f = self.files.get(name)
            if f is None:
                f = self.files[name] = open(os.path.join(self.d, name + ".jsonl"), "a", buffering=1)
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")


def policy_counts(st):
    """Counts from either status shape; None when absent."""
    c = st.get("counts") if isinstance(st.get("counts"), dict) else {}
    def pick(*names):
        for n in names:
            if n in st and isinstance(st[n], int):
                return st[n]
            if n in c and isinstance(c[n], int):
                return c[n]
        return None
    return {
        "total": pick("hostsTotal", "total"),
        "succeeded": pick("hostsSucceeded", "succeeded"),
        "failing": pick("hostsFailing", "failing"),
        "stale": pick("hostsStale", "stale"),
        "pending": pick("hostsPending", "pending"),
    }


def watch_loop(api, out, ns, plural, handle):
    rv = None
    while True:
        try:
            if rv is None:
                body = api.get(f"{GROUP}/namespaces/{ns}/{plural}")
                lst = json.loads(body)
                rv = lst["metadata"]["resourceVersion"]
                now = time.time()
                for it in lst.get("items", []):
                    handle(now, "LIST", it, len(json.dumps(it, separators=(",", ":"))))
            c = api.conn(timeout=None)
            c.request("GET", f"{GROUP}/namespaces/{ns}/{plural}?watch=1&resourceVersion={rv}&timeoutSeconds=600")
            r = c.getresponse()
            if r.status != 200:
                rv = None
                time.sleep(1)
                continue
            while True:
                line = r.readline()
                if not line:
                    break
                now = time.time()
                ev = json.loads(line)
                if ev.get("type") == "ERROR":
                    rv = None  # 410 Gone: list again
                    break
                obj = ev.get("object", {})
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                # the object as it was written: the size of the event's object
                size = len(json.dumps(obj, separators=(",", ":")))
                handle(now, ev.get("type"), obj, size)
            c.close()
        except Exception as e:  # the API server may be restarted; keep watching
            out.write("errors", {"t": time.time(), "where": plural, "error": str(e)[:300]})
            time.sleep(1)


def watch(args):
    env = parse_env(args.env)
    api = Api(env)
    out = Out(args.out)
    last_host = {}

    def on_host(now, typ, obj, size):
        name = obj["metadata"]["name"]
        st = obj.get("status") or {}
        e = None
        for p in st.get("policies") or []:
            if p.get("kind") == "BackupPolicy" and p.get("name") == args.policy:
                e = p
        key = None if e is None else (e.get("lastSuccess"), e.get("error"), e.get("nextRun"), e.get("lastRun"))
        rec = {"t": now, "type": typ, "host": name, "size": size, "rv": obj["metadata"].get("resourceVersion")}
        if typ == "DELETED":
            rec["deleted"] = True
        if e is not None:
            rec.update({"entry": True, "ls": e.get("lastSuccess"), "lr": e.get("lastRun"),
                        "err": (e.get("error") or "")[:160] or None, "nr": e.get("nextRun")})
        rec["changed"] = last_host.get(name) != key
        last_host[name] = key
        rec["reachable"] = st.get("reachable")
        out.write("hosts", rec)

    last_pol = {}

    def on_policy(now, typ, obj, size):
        if obj["metadata"]["name"] != args.policy:
            return
        st = obj.get("status") or {}
        rec = {"t": now, "type": typ, "size": size, "rv": obj["metadata"].get("resourceVersion"),
               "counts": policy_counts(st)}
        hosts = {}
        for h in st.get("hosts") or []:
            hosts[h.get("name")] = [h.get("state"), h.get("lastSuccess"), (h.get("message") or "")[:100] or None]
        worst = st.get("worstHosts")
        if isinstance(worst, list):
            rec["worst"] = len(worst)
        # only the per-host entries that changed since the last event (keeps the file small)
        prev = last_pol.get("hosts", {})
        rec["hosts"] = {k: v for k, v in hosts.items() if prev.get(k) != v}
        rec["nhosts"] = len(hosts)
        last_pol["hosts"] = hosts
        out.write("policy", rec)

    for plural, h in (("hosts", on_host), ("backuppolicies", on_policy)):
        threading.Thread(target=watch_loop, args=(api, out, args.ns, plural, h), daemon=True).start()
    threading.Thread(target=metrics_loop, args=(api, out), daemon=True).start()
    sample_loop(args, out)


def metrics_loop(api, out):
    pat = re.compile(r'^apiserver_request_total\{(.*)\} ([0-9.e+]+)$')
    while True:
        try:
            body = api.get("/metrics").decode()
            by = {}
            for line in body.splitlines():
                m = pat.match(line)
                if not m:
                    continue
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                k = f'{labels.get("verb")} {labels.get("resource")}'
                by[k] = by.get(k, 0) + float(m.group(2))
            out.write("metrics", {"t": time.time(), "req": by})
        except Exception as e:
            out.write("errors", {"t": time.time(), "where": "metrics", "error": str(e)[:300]})
        time.sleep(10)


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def proc_mem(pid):
    """(comm, rss KiB, pss KiB) of a process, or None when it is gone."""
    comm = read(f"/proc/{pid}/comm")
    if comm is None:
        return None
    rss = pss = 0
    s = read(f"/proc/{pid}/smaps_rollup", "")
    for line in s.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return comm.strip(), rss, pss


def sample_loop(args, out):
    comps = ["operator", "hosts", "kube-apiserver", "etcd", "minio", "ansible"]
    while True:
        now = time.time()
        rec = {"t": now}
        for c in comps:
            cpu = read(f"/sys/fs/cgroup/cpuacct/{args.cgroot}/{c}/cpuacct.usage")
            if cpu is None:
                continue
            d = {"cpu": int(cpu) / 1e9}
            mem = read(f"/sys/fs/cgroup/memory/{args.cgroot}/{c}/memory.stat", "")
            for line in mem.splitlines():
                k, _, v = line.partition(" ")
                if k in ("total_rss", "total_cache", "total_mapped_file"):
                    d[k] = int(v) // 1024
            if c in ("operator", "kube-apiserver", "etcd", "minio", "ansible"):
                procs = (read(f"/sys/fs/cgroup/memory/{args.cgroot}/{c}/cgroup.procs", "") or "").split()
                rss = pss = nssh = ssh_rss = ssh_pss = 0
                for p in procs:
                    m = proc_mem(p)
                    if not m:
                        continue
                    rss += m[1]
                    pss += m[2]
                    if m[0] == "ssh":
                        nssh += 1
                        ssh_rss += m[1]
                        ssh_pss += m[2]
                d.update({"nproc": len(procs), "rss": rss, "pss": pss, "nssh": nssh,
                          "ssh_rss": ssh_rss, "ssh_pss": ssh_pss})
            rec[c] = d
        la = read("/proc/loadavg", "0 0 0").split()[:3]
        rec["load"] = float(la[0])
        mi = read("/proc/meminfo", "")
        m = re.search(r"MemAvailable:\s+(\d+)", mi)
        rec["mem_avail_mib"] = int(m.group(1)) // 1024 if m else None
        out.write("samples", rec)
        time.sleep(max(0.5, 5 - (time.time() - now)))


# ------------------------------------------------------------------------------ report
def jl(d, name):
    p = os.path.join(d, name + ".jsonl")
    if not os.path.exists(p):
        return []
    out = []
    for line in open(p):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


def phases_of(d):
    ph = {}
    order = []
    for r in jl(d, "phases"):
        p = ph.setdefault(r["phase"], {"name": r["phase"]})
        if r["phase"] not in order:
            order.append(r["phase"])
        if r["event"] == "start":
            p["t0"] = r["t"]
            p.update({k: v for k, v in r.items() if k not in ("t", "phase", "event")})
        elif r["event"] == "end":
            p["t1"] = r["t"]
            p.update({k: v for k, v in r.items() if k not in ("t", "phase", "event")})
        else:
            p.setdefault("marks", {})[r["event"]] = r["t"]
    return [ph[o] for o in order]


def in_window(rows, t0, t1):
    return [r for r in rows if t0 <= r["t"] <= t1]


def component_stats(samples, t0, t1, comp):
    s = [x for x in in_window(samples, t0, t1) if comp in x]
    if len(s) < 2:
        return None
    a, b = s[0][comp], s[-1][comp]
    dt = s[-1]["t"] - s[0]["t"]
    r = {"cpu_s": b["cpu"] - a["cpu"], "cores": (b["cpu"] - a["cpu"]) / dt if dt > 0 else 0}
    if "rss" in b:
        r["rss_peak_mib"] = max(x[comp]["rss"] for x in s) / 1024
        r["pss_peak_mib"] = max(x[comp]["pss"] for x in s) / 1024
        r["ssh_peak"] = max(x[comp]["nssh"] for x in s)
        r["ssh_rss_peak_mib"] = max(x[comp]["ssh_rss"] for x in s) / 1024
        r["ssh_pss_peak_mib"] = max(x[comp]["ssh_pss"] for x in s) / 1024
        r["rss_end_mib"] = b["rss"] / 1024
        r["nssh_end"] = b["nssh"]
    if "total_rss" in b:
        r["cg_rss_peak_mib"] = max(x[comp].get("total_rss", 0) for x in s) / 1024
    return r


def api_rate(metrics, t0, t1):
    m = in_window(metrics, t0 - 11, t1 + 11)
    if len(m) < 2:
        return None, {}
    # the scrapes closest to the window's edges
    a = min(m, key=lambda r: abs(r["t"] - t0))
    b = min(m, key=lambda r: abs(r["t"] - t1))
    dt = b["t"] - a["t"]
    if dt <= 0:
        return None, {}
    by = {k: (v - a["req"].get(k, 0)) / dt for k, v in b["req"].items()}
    return sum(by.values()), dict(sorted(by.items(), key=lambda kv: -kv[1])[:6])


def host_state_at(hosts, t):
    """Latest entry per host at time t from the Host watch stream."""
    st = {}
    for r in hosts:
        if r["t"] > t:
            break
        if r.get("deleted"):
            st.pop(r["host"], None)
        else:
            st[r["host"]] = r
    return st


def report(args):
    d = args.out
    meta = json.loads(read(os.path.join(d, "meta.json"), "{}"))
    hosts = jl(d, "hosts")
    pol = jl(d, "policy")
    samples = jl(d, "samples")
    metrics = jl(d, "metrics")
    phases = phases_of(d)
    res = {"meta": meta, "phases": []}
    for p in phases:
        if "t0" not in p or "t1" not in p:
            continue
        t0, t1 = p["t0"], p["t1"]
        expected = set(p.get("expect") or [])
        faulty = set(p.get("faulty") or [])
        healthy = expected - faulty
        r = {"phase": p["name"], "seconds": t1 - t0, "hosts": len(expected), "faulty": len(faulty)}
        # convergence: per host, the first time its entry is installed (no error, nextRun or
        # lastSuccess) and the first time it has a success that is newer than the phase start
        # minus its own schedule (any success for a cold rollout)
        inst, succ = {}, {}
        first_write = None
        for h in hosts:
            if h["t"] < t0 or h["t"] > t1 or h["host"] not in expected or not h.get("entry"):
                continue
            first_write = first_write or h["t"]
            if not h.get("err") and (h.get("nr") or h.get("ls")):
                inst.setdefault(h["host"], h["t"])
            if h.get("ls") and not h.get("err"):
                succ.setdefault(h["host"], h["t"])
        # fallback: BackupPolicy.status.hosts (current CRD) for hosts without a Host entry
        for e in pol:
            if e["t"] < t0 or e["t"] > t1:
                continue
            for name, (state, ls, msg) in (e.get("hosts") or {}).items():
                if name in expected and state == "Succeeded":
                    succ.setdefault(name, e["t"])
        if expected:
            r["first_status_s"] = (first_write - t0) if first_write else None
            r["installed"] = len(set(inst) & expected)
            r["succeeded"] = len(set(succ) & expected)
            hi = [inst[h] - t0 for h in healthy if h in inst]
            hs = [succ[h] - t0 for h in healthy if h in succ]
            r["installed_all_healthy_s"] = max(hi) if len(hi) == len(healthy) and hi else None
            r["installed_p50_s"] = pct(hi, 50)
            r["success_all_healthy_s"] = max(hs) if len(hs) == len(healthy) and hs else None
        # freshness: run-to-status latency of every new lastSuccess that became visible in the
        # window (arrival of the watch event - the run's finish time), healthy hosts only
        lat = []
        seen = {}
        for h in hosts:
            if h.get("ls"):
                prev = seen.get(h["host"])
                seen[h["host"]] = h["ls"]
                if prev != h["ls"] and t0 <= h["t"] <= t1 and h["host"] in healthy:
                    lat.append(h["t"] - ts(h["ls"]))
        # the policy-status view of the same (BackupPolicy.status.hosts[].lastSuccess)
        plat = []
        pseen = {}
        for e in pol:
            for name, (state, ls, msg) in (e.get("hosts") or {}).items():
                if ls and pseen.get(name) != ls:
                    pseen[name] = ls
                    if t0 <= e["t"] <= t1 and name in healthy:
                        plat.append(e["t"] - ts(ls))
        # visible status age: every 10 s, for every healthy host, now - the lastSuccess its
        # status shows (a status that stops being written shows up here as a growing age;
        # with a schedule of period P the age of a healthy, promptly updated host stays
        # below P + randomized delay + latency)
        ages = []
        cur = {}
        it = iter(hosts)
        nxt = next(it, None)
        t = t0
        while t <= t1:
            while nxt is not None and nxt["t"] <= t:
                if nxt.get("ls"):
                    cur[nxt["host"]] = ts(nxt["ls"])
                nxt = next(it, None)
            for h in healthy:
                if h in cur:
                    ages.append(t - cur[h])
            t += 10
        r["age_p50_s"] = pct(ages, 50)
        r["age_p99_s"] = pct(ages, 99)
        r["age_max_s"] = max(ages) if ages else None
        r["fresh_n"] = len(lat)
        r["fresh_p50_s"] = pct(lat, 50)
        r["fresh_p99_s"] = pct(lat, 99)
        r["fresh_max_s"] = max(lat) if lat else None
        r["policy_fresh_n"] = len(plat)
        r["policy_fresh_p50_s"] = pct(plat, 50)
        r["policy_fresh_p99_s"] = pct(plat, 99)
        # faulty hosts: when their entries first showed an error
        if faulty:
            fe = {}
            for h in hosts:
                if t0 <= h["t"] <= t1 and h["host"] in faulty and h.get("err"):
                    fe.setdefault(h["host"], h["t"] - t0)
            r["faulty_reported"] = len(fe)
            r["faulty_reported_p50_s"] = pct(list(fe.values()), 50)
            r["faulty_reported_max_s"] = max(fe.values()) if fe else None
        # writes and the largest objects written
        hw = [h for h in hosts if t0 <= h["t"] <= t1 and h["type"] == "MODIFIED"]
        pw = [e for e in pol if t0 <= e["t"] <= t1 and e["type"] == "MODIFIED"]
        r["host_writes_per_s"] = len(hw) / (t1 - t0)
        r["policy_writes_per_s"] = len(pw) / (t1 - t0)
        r["largest_host_b"] = max([h["size"] for h in hosts if t0 <= h["t"] <= t1] or [0])
        r["largest_policy_b"] = max([e["size"] for e in pol if t0 <= e["t"] <= t1] or [0])
        r["largest_b"] = max(r["largest_host_b"], r["largest_policy_b"])
        for c in ("operator", "hosts", "kube-apiserver", "etcd", "minio", "ansible"):
            s = component_stats(samples, t0, t1, c)
            if s:
                r["hosts_cg" if c == "hosts" else c] = s
        r["api_rps"], r["api_top"] = api_rate(metrics, t0, t1)
        for k in ("wall_s", "tool", "forks", "rc", "note", "hosts_pushed"):
            if k in p:
                r[k] = p[k]
        res["phases"].append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print_table(res)


def f(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def print_table(res):
    m = res["meta"]
    print(f"fleet benchmark: {m.get('hosts')} hosts requested, {m.get('hosts_up')} up; seed {m.get('seed')}; "
          f"operator {m.get('operator_git')}; executor {m.get('executor_mib')} MiB; schedule {m.get('schedule')}")
    print(f"command: {m.get('command')}")
    print()
    print("| phase | s | hosts | converged (installed / first success) s | freshness p50 / p99 s (n) | "
          "operator RSS+ssh MiB (PSS) | ssh procs | operator cores | API req/s | largest object KiB (Host / policy) | hosts cores | apiserver+etcd cores |")
    print("|---|---:|---:|---|---|---|---:|---:|---:|---|---:|---:|")
    for r in res["phases"]:
        op = r.get("operator") or {}
        ho = r.get("hosts_cg") or {}
        hs = (r.get("kube-apiserver") or {}).get("cores", 0) + (r.get("etcd") or {}).get("cores", 0)
        conv = "—"
        if r["phase"] not in ("rollout", "churn", "recovery", "restart"):
            pass
        elif r.get("installed_all_healthy_s") is not None or r.get("success_all_healthy_s") is not None:
            conv = f"{f(r.get('installed_all_healthy_s'))} / {f(r.get('success_all_healthy_s'))}"
        elif r.get("installed") is not None:
            conv = f"{r.get('installed')}/{r.get('hosts') - r.get('faulty', 0)} installed, {r.get('succeeded')} ok"
        print(f"| {r['phase']} | {f(r['seconds'], 0)} | {r.get('hosts')}{'' if not r.get('faulty') else ' (' + str(r['faulty']) + ' faulty)'} | {conv} | "
              f"{f(r.get('fresh_p50_s'))} / {f(r.get('fresh_p99_s'))} ({r.get('fresh_n')}) | "
              f"{f(op.get('rss_peak_mib'), 0)} ({f(op.get('pss_peak_mib'), 0)}) | {f(op.get('ssh_peak'))} | {f(op.get('cores'), 2)} | "
              f"{f(r.get('api_rps'))} | {f(r['largest_host_b'] / 1024)} / {f(r['largest_policy_b'] / 1024)} | {f(ho.get('cores'), 2)} | {f(hs, 2)} |")
    for r in res["phases"]:
        extra = []
        if r.get("faulty"):
            extra.append(f"faulty hosts reported failing: {r.get('faulty_reported')}/{r['faulty']} (p50 {f(r.get('faulty_reported_p50_s'))} s, max {f(r.get('faulty_reported_max_s'))} s)")
        if r.get("wall_s") is not None:
            extra.append(f"{r.get('tool')} wall {f(r['wall_s'])} s rc={r.get('rc')}")
        if r.get("api_top"):
            extra.append("top API: " + ", ".join(f"{k} {v:.1f}/s" for k, v in list(r["api_top"].items())[:4]))
        if r.get("age_p99_s") is not None:
            extra.append(f"visible status age p50/p99/max {f(r.get('age_p50_s'), 0)}/{f(r.get('age_p99_s'), 0)}/{f(r.get('age_max_s'), 0)} s")
        if r.get("policy_fresh_n"):
            extra.append(f"policy-status freshness p50/p99 {f(r.get('policy_fresh_p50_s'))}/{f(r.get('policy_fresh_p99_s'))} s (n={r['policy_fresh_n']})")
        extra.append(f"writes/s Host {r['host_writes_per_s']:.2f} policy {r['policy_writes_per_s']:.2f}")
        print(f"- {r['phase']}: " + "; ".join(extra))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch")
    w.add_argument("--out", required=True)
    w.add_argument("--env", required=True)
    w.add_argument("--ns", required=True)
    w.add_argument("--policy", required=True)
    w.add_argument("--cgroot", required=True)
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    r.add_argument("--json")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.cmd == "watch":
        watch(a)
    else:
        report(a)


if __name__ == "__main__":
    main()
