"""The table of scripts/bench from its results file.

Usage: bench-table.py RESULTS [--quick]

Rows numbered 7 come from scripts/bench --cluster (the *-cluster and\n*-replicated results).

With --quick (a short run at a fraction of the full sizes: fewer
channels, streams and attachments, one-second windows), the targets,
which are set for the full-size run, do not apply: the "met" column says
"not comparable" instead of judging the row.
"""
import sys

quick = "--quick" in sys.argv[2:]
base, res, cpu, cmds = {}, {}, {}, {}
for line in open(sys.argv[1]):
    p = line.split()
    if p[0] == "CMDS" and len(p) == 4:
        cmds[p[1]] = (int(p[2]), int(p[3]))
    if p[0] == "CPU" and len(p) == 5:
        total, idle, steal = (int(x) for x in p[2:])
        if total > 0:
            cpu[{"idle-streams": "idle-rss"}.get(p[1], p[1])] = f"{100 * (total - idle) // total}/{100 * steal // total}"
    elif p[0] == "BASE" and len(p) == 3 and p[2]:
        base[p[1]] = float(p[2])
    elif p[0] == "RESULT":
        kv = dict(x.split("=", 1) for x in p[1:])
        res[kv["scenario"]] = kv
def f(v):
    return f"{float(v):,.0f}"
rows = []
def row(name, value, baseline, target, ok, key=None, bkey=None):
    host = cpu.get(key, "-")
    if bkey:
        host += f" (base {cpu.get(bkey, '-')})"
    met = "not comparable (quick)" if quick and target != "reported" else ("yes" if ok else "NO")
    rows.append((name, value, baseline, target, met, host))
def ratio_row(name, key, bkey, target, unit):
    r, b = res.get(key), base.get(bkey)
    if not r or not b:
        return
    v = float(r["rate"])
    row(name, f"{f(v)} {unit}, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms", f"{f(b)} ({bkey})", f"{v / b:.2f} x (target {target})", v / b >= target, key, bkey)
def pair_row(name, key, bkey, target, unit):
    """A scenario against another service scenario of the same run."""
    r, b = res.get(key), res.get(bkey)
    if not r or not b:
        return
    v, bv = float(r["rate"]), float(b["rate"])
    lat = f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms" if "p50_ms" in r else f"mean {r['mean_ms']} ms"
    goal = f"target {target}" if target else "reported"
    row(name, f"{f(v)} {unit}, {lat}", f"{f(bv)} ({bkey})", f"{v / bv:.2f} x ({goal})", v / bv >= target, key, bkey)
ratio_row("1. Apply, batches of 100", "apply", "evalsha_p16", 0.6, "ops/s")
ratio_row("2. unary Attach/Detach, 64 in flight", "unary", "evalsha", 0.4, "ops/s")
pair_row("2. unary Attach/Detach with a key (auth on / off)", "unary-auth", "unary", 0.95, "ops/s")
ratio_row("3. GetOccupancy, 64 in flight", "get", "hgetall", 0.5, "req/s")
pair_row("3. GetOccupancy with a key (auth on / off)", "get-auth", "get", 0.95, "req/s")
if "rest-get" in res:
    c = res["rest-get"].get("connections", "?")
    pair_row(f"3. REST GET /channels/{{id}}, {c} HTTP/1.1 conns (h2load) / gRPC get", "rest-get", "get", 0.7, "req/s")
if "batch-get" in res:
    r = res["batch-get"]
    row("3. BatchGetOccupancy of 100", f"{f(r['rate'])} channels/s, p99 {r['p99_ms']} ms", "-", "reported", True, "batch-get")
if "size-get" in res:
    r = res["size-get"]
    row(f"4. Get p50, {r['connections']} conns vs 1", f"{r['big_p50_ms']} vs {r['small_p50_ms']} ms", "-", f"{float(r['ratio']):.2f} x (target 1.2)", float(r["ratio"]) <= 1.2, "size-get")
if "size-list" in res:
    r = res["size-list"]
    row(f"4. List page, {r['channels']} vs {r['small_channels']} channels", f"{r['big_p50_ms']} vs {r['small_p50_ms']} ms", "-", f"{float(r['ratio']):.2f} x (target 1.5)", float(r["ratio"]) <= 1.5, "size-list")
if "fanout" in res:
    r = res["fanout"]
    row(f"5. fan-out, {r['streams']} streams", f"{f(r['rate'])} events/s ({f(r['changes_per_s'])} changes/s)", "-", "target 500,000/s", float(r["rate"]) >= 500000, "fanout")
def from_reply(r):
    """The figure measured from the write's reply, where the run has it."""
    if "reply_p50_ms" not in r:
        return ""
    return f"; from the reply: p50 {r['reply_p50_ms']} ms, p99 {r['reply_p99_ms']} ms, {r['early']} early"
if "latency" in res:
    r = res["latency"]
    row(f"5. latency A->B from send, {r['subscribers']} subscribers on {r['channels']} channels", f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms at {f(r['achieved_rate'])} changes/s (missing {r['missing']}){from_reply(r)}", "-", "p99 <= 10 ms", float(r["p99_ms"]) <= 10, "latency")
if "sse" in res:
    r = res["sse"]
    row(f"5. SSE A->B from send, {r['subscribers']} HTTP clients on {r['channels']} channels", f"{f(r['deliveries_per_s'])} deliveries/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms (missing {r['missing']})", "-", "reported", True, "sse")
if "idle-rss" in res:
    r = res["idle-rss"]
    row(f"5. replica RSS, {r['streams']} idle streams", f"{r['after_mb']} MB (before {r['before_mb']} MB)", "-", "<= 300 MB", float(r["after_mb"]) <= 300, "idle-rss")
def replicas(r, sfx):
    """CPU per operation of every watched replica (A, and B and C when
    given: any of them may deliver a rule's events), summed."""
    return f"{sum(float(v) for k, v in r.items() if k.startswith('cpu_us_replica') and k.endswith('_' + sfx)):.1f}"
if "webhooks" in res:
    r = res["webhooks"]
    n = r["rules"]
    w0, w1 = float(r["apply_without"]), float(r[f"apply_with_{n}_rules"])
    # no target: the added cost of the rules, reported
    rows.append((f"Apply with {n} webhook rules / without", f"{f(w1)} ops/s, p50 {r['p50_ms_with']} ms, p99 {r['p99_ms_with']} ms", f"{f(w0)} ops/s, p50 {r['p50_ms_without']} ms (no rules)", f"{w1 / w0:.2f} x (reported)", "-", cpu.get("webhooks", "-")))
    counts = f"{f(r['received'])} received"
    if "enqueued" in r:
        counts += f" of {f(r['enqueued'])} enqueued (missing {r['missing']}, dead letters {r['dead_letters']}, source gaps {r['source_gaps']}, coalesced {f(r['source_coalesced'])})"
    if "stale_channels" in r:
        counts += f"; last event of {f(r['compared_channels'])} (rule, channel) pairs = store: {'yes' if r['stale_channels'] == '0' else 'NO, ' + r['stale_channels'] + ' differ'}"
    if "cpu_us_replica_drain" in r:
        counts += f"; CPU per event in the drain: replicas {replicas(r, 'drain')} us, Redis {r.get('cpu_us_redis_drain', '-')} us"
    basis = "after the load" if r["delivered_basis"] == "drain" else "during the load (no backlog)"
    row(f"webhook events delivered/s (batched, {r['max_events']}/request)", f"{f(r['delivered_per_s'])}/s {basis} (during the load {f(r['during_load_per_s'])}/s; drain {r['drain_s']} s, drained {r['drained']}); {counts}", "-", "no source gaps, last events = store", r.get("source_gaps", "0") == "0" and r.get("stale_channels", "0") == "0", "webhooks")
if "footprint" in res:
    r = res["footprint"]
    row("6. Redis bytes per attachment", r["bytes_per_attachment"], "-", "<= 200", float(r["bytes_per_attachment"]) <= 200, "footprint")
    row("6. Redis bytes per presence member", r["bytes_per_member"], "-", "<= 250", float(r["bytes_per_member"]) <= 250, "footprint")
# Redis Cluster (scripts/bench --cluster): the state in 16 partitions over
# three primaries (their CPU summed), then in one partition on one
# primary; on 2 cores the cluster cannot show more total throughput
for name, key in (("Apply, batches of 100", "apply"), ("unary Attach/Detach", "unary"), ("GetOccupancy", "get")):
    pair_row(f"7. cluster / one Redis: {name}", f"{key}-cluster", key, 0, "ops/s" if key != "get" else "req/s")
pair_row("7. one primary's Apply, other primaries loaded / idle", "apply-primary-loaded", "apply-primary", 0, "ops/s")
# Redis CPU per operation on the cluster (every primary feeding a replica
# and waiting for its acknowledgement) against one Redis with a replica
# acknowledging each write the same way (the target: what the cluster and
# its partitions cost), and against one Redis without (reported: what
# replication adds on top)
for key in ("apply", "unary", "get"):
    c = res.get(f"{key}-cluster")
    for base, judged in ((f"{key}-replicated", True), (key, False)):
        o = res.get(base)
        if c and o and "cpu_us_redis" in c and "cpu_us_redis" in o and float(o["cpu_us_redis"]) > 0:
            r = float(c["cpu_us_redis"]) / float(o["cpu_us_redis"])
            which = "replicated Redis" if judged else "one Redis"
            target = "(target 1.2)" if judged else "(reported)"
            row(f"7. Redis CPU per op, cluster / {which}: {key}", f"{c['cpu_us_redis']} vs {o['cpu_us_redis']} us", "-", f"{r:.2f} x {target}", r <= 1.2 or not judged, f"{key}-cluster", base)
# the same under four times the load (reported: the target is judged at
# the scenario's usual load above)
for key in ("unary", "get"):
    c, o = res.get(f"{key}-cluster-256"), res.get(f"{key}-replicated-256")
    if c and o and "cpu_us_redis" in c and "cpu_us_redis" in o and float(o["cpu_us_redis"]) > 0:
        r = float(c["cpu_us_redis"]) / float(o["cpu_us_redis"])
        row(f"7. Redis CPU per op, cluster / replicated Redis: {key}, 256 in flight", f"{c['cpu_us_redis']} vs {o['cpu_us_redis']} us", "-", f"{r:.2f} x (reported)", True, f"{key}-cluster-256", f"{key}-replicated-256")
for key in ("apply", "unary"):
    c, o = res.get(f"{key}-cluster-3"), res.get(f"{key}-replicated")
    if c and o and "cpu_us_redis" in c and "cpu_us_redis" in o:
        r = float(c["cpu_us_redis"]) / float(o["cpu_us_redis"])
        row(f"7. Redis CPU per op, cluster with 3 partitions / replicated Redis: {key}", f"{c['cpu_us_redis']} vs {o['cpu_us_redis']} us", "-", f"{r:.2f} x (reported)", True, f"{key}-cluster-3", f"{key}-replicated")
pair_row("7. one replicated Redis / one Redis: Apply", "apply-replicated", "apply", 0, "ops/s")
head = ("scenario", "result", "baseline", "ratio / target", "met", "host busy/steal %")
w = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
def line(cells):
    print("| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(cells)) + " |")
line(head)
line(tuple("-" * x for x in w))
for r in rows:
    line(r)
if quick:
    print()
    print("quick run: sizes and windows are a fraction of the full run's, so the targets (set for the full run) are not judged; run scripts/bench for them")
cpu_rows = [(k, res[k]) for k in ("apply", "unary", "unary-auth", "get", "get-auth", "rest-get", "batch-get", "apply-cluster", "unary-cluster", "get-cluster", "apply-primary", "apply-primary-loaded", "apply-replicated", "unary-replicated", "get-replicated", "unary-replicated-256", "get-replicated-256", "unary-cluster-256", "get-cluster-256", "apply-cluster-3", "unary-cluster-3") if k in res and "cpu_us_replica" in res[k]]
if "webhooks" in res and "cpu_us_replica_with" in res["webhooks"]:
    r = res["webhooks"]
    for label, sfx in (("wh-none", "without"), (f"wh-{r['rules']}", "with")):
        cpu_rows.append((label, {"cpu_us_redis": r.get(f"cpu_us_redis_{sfx}", "-"), "cpu_us_replica": replicas(r, sfx), "cpu_us_gen": r.get(f"cpu_us_gen_{sfx}", "-")}))
if cpu_rows:
    print()
    print("CPU per operation over the measured window (us; batch-get: per channel; the -auth rows on replica C; rest-get's load generator is h2load, not measured; wh-none and wh-N: the webhooks scenario's apply load without rules and with N, its replica column A, B and C together):")
    print("| scenario             | Redis | replica | load generator |")
    print("| -------------------- | ----- | ------- | -------------- |")
    for k, r in cpu_rows:
        print(f"| {k:<20} | {r.get('cpu_us_redis', '-'):>5} | {r.get('cpu_us_replica', '-'):>7} | {r.get('cpu_us_gen', '-'):>14} |")
counted = [(k, res[k], cmds[k]) for k in cmds if k in res and "ops" in res[k] and int(res[k]["ops"]) > 0]
if counted:
    print()
    print("Redis commands per operation (INFO commandstats of the nodes serving the state over the scenario, a function's own commands included; the cluster's primaries summed):")
    print("| scenario             | commands per op | operations per function call | Redis CPU per op (us) |")
    print("| -------------------- | --------------- | ---------------------------- | --------------------- |")
    for k, r, (total, fcalls) in counted:
        ops = int(r["ops"])
        # reads call no function (a replica's background calls would show)
        per_call = f"{ops / fcalls:.1f}" if fcalls and not k.startswith("get") else "-"
        print(f"| {k:<20} | {total / ops:>15.2f} | {per_call:>28} | {r.get('cpu_us_redis', '-'):>21} |")
