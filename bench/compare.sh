#!/usr/bin/env bash
# bench/compare.sh - ioplex's servers beside the peers', all under one client:
# `ioplex bench`.  Servers pinned to CPU $SERVER_CPU (0), the client to
# $CLIENT_CPU (1); every figure the median of REPEAT runs with their range.
#
#   bench/compare.sh [echo] [http] [client]      (no word: echo http)
#
#   echo    `ioplex echo` on every backend x model (iterative at C=1 only), and
#           the peers' echo servers (../shared/peers/bin/echo-*), under
#           `ioplex bench echo --server-pid`: msgs/s, latency, errors and the
#           server's CPU per round trip
#   http    `ioplex http` on every backend x model (when this build has it:
#           `ioplex http --help` exits 0), nginx and h2o (the peers' configs),
#           under `ioplex bench http --server-pid`
#   client  the client itself: `ioplex bench echo` against the peers'
#           bin/echoload on the raw epoll peer at C=100 S=64, and `ioplex bench
#           http` against `wrk -t1 -c100` on h2o /hello (bench/compare-client.sh)
#
# Knobs (environment):
#   REPEAT=3  DUR=5 (s)  WARMUP=0.5 (s)  QUIET_MAX=5 (s to wait for an idle machine)
#   CONFIGS="1:64:0 100:64:0 1000:64:0"          echo: conns:size:idle
#   BACKENDS="select poll epoll epoll-edge uring uring-edge"
#   MODELS="event coro thread fork iterative"    HTTP_MODELS="event coro thread fork"
#   PEER_ECHO="raw libuv libevent libev"         PEER_HTTP="nginx h2o"
#   URLS="/hello /4k.bin"  HTTP_CONNS=100  CLIENT_CONNS=100
#   PLOT_CONFIG=100:64:0  PLOT_URL=/hello        the configuration each PNG shows
#   BENCH_FLAGS=""  more options for every `ioplex bench` run (e.g. --no-spin)
#   BUILD=build (the ioplex build directory)  PEERS=../shared/peers
#   SERVER_CPU=0  CLIENT_CPU=1
# Writes bench/results/compare-{echo,http,client}-STAMP.csv, .md (the tables,
# also printed) and .png (msgs/s or req/s and p99 per server; needs gnuplot).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/install-deps" --bench || true   # gnuplot for the plot (apt-get as root)
PEERS=${PEERS:-$here/../shared/peers}
# The peers' helpers: start_server / stop_server by PID (pinned with taskset),
# next_port, wait_port, wait_quiet; whatever is still running is stopped on exit.
source "$PEERS/lib/common.sh"
RUN=$here/bench/out/run # servers' logs and configs: bench/out is not committed

REPEAT=${REPEAT:-3}
DUR=${DUR:-5}
WARMUP=${WARMUP:-0.5}
QUIET_MAX=${QUIET_MAX:-5}
CONFIGS=${CONFIGS:-"1:64:0 100:64:0 1000:64:0"}
BACKENDS=${BACKENDS:-"select poll epoll epoll-edge uring uring-edge"}
MODELS=${MODELS:-"event coro thread fork iterative"}
HTTP_MODELS=${HTTP_MODELS:-"event coro thread fork"}
PEER_ECHO=${PEER_ECHO:-"raw libuv libevent libev"}
PEER_HTTP=${PEER_HTTP:-"nginx h2o"}
URLS=${URLS:-"/hello /4k.bin"}
HTTP_CONNS=${HTTP_CONNS:-100}
CLIENT_CONNS=${CLIENT_CONNS:-100}
PLOT_CONFIG=${PLOT_CONFIG:-100:64:0}
PLOT_URL=${PLOT_URL:-/hello}
BENCH_FLAGS=${BENCH_FLAGS:-}
BUILD=${BUILD:-$here/build}
OUT=$here/bench/results
WWW=$here/bench/out/www
IOPLEX=$BUILD/ioplex
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT" "$RUN"

modes=${*:-echo http}

build_all() {
    build # the peers' programs (bin/)
    cmake -S "$here" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null &&
        cmake --build "$BUILD" -j"$(nproc)" --target ioplex >/dev/null ||
        { log "cannot build $IOPLEX"; exit 1; }
}

# ioplex_flags BACKEND: the server/client options for a backend name
ioplex_flags() {
    case $1 in
    *-edge) echo "--backend ${1%-edge} --edge" ;;
    *) echo "--backend $1" ;;
    esac
}

# JSON of `ioplex bench` -> the CSV fields after the run's own columns
json_fields() {
    python3 -c '
import json, sys
try:
    o = json.loads(sys.stdin.read())
except ValueError:
    print(",,,,,,,,,,"); sys.exit(0)
l = o["latency_us"]
def f(v): return "" if v is None else "%.3f" % v
print(",".join([f(o["rate"]), f(o["mb_per_s"]), f(l["p50"]), f(l["p90"]), f(l["p99"]),
                f(l["p999"]), f(l["max"]), str(o["errors"]), str(o.get("reopened", "")),
                f(o.get("server_cpu_us_per_req")), f(o.get("server_cpu_pct"))]))'
}

# measure KIND CSV PREFIX URL-or-ADDR ARGS...: one pinned `ioplex bench` run
# against SERVER_PID; appends PREFIX,fields,rc to CSV.
measure() {
    local kind=$1 csv=$2 prefix=$3 target=$4 out rc
    shift 4
    wait_quiet >/dev/null
    out=$(timeout $((${DUR%.*} + 90)) taskset -c "$CLIENT_CPU" "$IOPLEX" bench "$kind" "$target" \
        "$@" -d "$DUR" --warmup "$WARMUP" --json --server-pid "$SERVER_PID" $BENCH_FLAGS \
        2>"$RUN/bench.err")
    rc=$?
    kill -0 "$SERVER_PID" 2>/dev/null || { log "  the server died"; rc=99; }
    [ $rc -ne 0 ] && log "  rc=$rc: $(tr '\n' ' ' <"$RUN/bench.err" | head -c 300)"
    echo "$prefix,$(json_fields <<<"$out"),$rc" >>"$csv"
}

# ---- echo ------------------------------------------------------------------------

start_echo() { # start_echo SERVER BACKEND MODEL PORT (SERVER: ioplex or a peer)
    if [ "$1" = ioplex ]; then
        start_server "ioplex-echo" "$IOPLEX" echo -l "127.0.0.1:$4" --quiet \
            $(ioplex_flags "$2") --model "$3"
    else
        start_server "echo-$1" "$BIN/echo-$1" "$4"
    fi
}

echo_servers() { # "server:backend:model" for every combination that applies to C
    local c=$1 b m p
    for b in $BACKENDS; do
        for m in $MODELS; do
            [ "$m" = iterative ] && [ "$c" != 1 ] && continue
            echo "ioplex:$b:$m"
        done
    done
    for p in $PEER_ECHO; do echo "$p:-:-"; done
}

run_echo() {
    local csv=$OUT/compare-echo-$stamp.csv rep cfg c s k srv b m port
    echo "server,backend,model,rep,conns,size,idle,rate,mb_per_s,p50_us,p90_us,p99_us,p999_us,max_us,errors,reopened,srv_cpu_us,srv_cpu_pct,rc" >"$csv"
    for rep in $(seq "$REPEAT"); do
        for cfg in $CONFIGS; do
            IFS=: read -r c s k <<<"$cfg"
            for srv in $(echo_servers "$c"); do
                IFS=: read -r name b m <<<"$srv"
                if [ "$b" = select ] && [ $((c + k)) -gt 1000 ]; then
                    echo "$name,$b,$m,$rep,$c,$s,$k,,,,,,,,,,,,skip-fd-setsize" >>"$csv"
                    continue
                fi
                port=$(next_port)
                start_echo "$name" "$b" "$m" "$port"
                if ! wait_port "$port" 10; then
                    log "$srv: did not start (see $RUN)"
                    stop_server
                    echo "$name,$b,$m,$rep,$c,$s,$k,,,,,,,,,,,,nostart" >>"$csv"
                    continue
                fi
                log "rep $rep  echo $name $b $m  C=$c S=$s idle=$k"
                measure echo "$csv" "$name,$b,$m,$rep,$c,$s,$k" "127.0.0.1:$port" \
                    -c "$c" -s "$s" --idle "$k"
                stop_server
            done
        done
    done
    report echo "$csv"
}

# ---- http ------------------------------------------------------------------------

make_www() {
    mkdir -p "$WWW"
    printf 'Hello, World!' >"$WWW/hello"
    head -c 4096 /dev/zero | tr '\0' 'x' >"$WWW/4k.bin"
}

start_http() { # start_http SERVER BACKEND MODEL PORT
    local pre=$RUN/compare-$1
    case $1 in
    ioplex)
        start_server ioplex-http "$IOPLEX" http "$WWW" -l "127.0.0.1:$4" --quiet \
            $(ioplex_flags "$2") --model "$3" ;;
    nginx)
        mkdir -p "$pre/tmp"
        sed -e "s|@PORT@|$4|g" -e "s|@RUN@|$pre|g" -e "s|@WWW@|$WWW|g" -e "s|@WC@|10240|g" \
            "$PEERS/conf/nginx.conf.in" >"$pre/nginx.conf"
        start_server nginx nginx -p "$pre" -c "$pre/nginx.conf" -e "$pre/error.log" -g 'daemon off;' ;;
    h2o)
        mkdir -p "$pre"
        sed -e "s|@PORT@|$4|g" -e "s|@RUN@|$pre|g" -e "s|@WWW@|$WWW|g" \
            "$PEERS/conf/h2o.conf.in" >"$pre/h2o.conf"
        start_server h2o h2o -c "$pre/h2o.conf" ;;
    *) log "unknown server $1"; return 1 ;;
    esac
}

http_servers() {
    local b m p
    if "$IOPLEX" http --help >/dev/null 2>&1; then
        for b in $BACKENDS; do
            for m in $HTTP_MODELS; do echo "ioplex:$b:$m"; done
        done
    else
        log "this build has no 'ioplex http': only the peers are measured"
    fi
    for p in $PEER_HTTP; do echo "$p:-:-"; done
}

run_http() {
    local csv=$OUT/compare-http-$stamp.csv rep srv name b m port u
    make_www
    echo "server,backend,model,rep,url,conns,rate,mb_per_s,p50_us,p90_us,p99_us,p999_us,max_us,errors,reopened,srv_cpu_us,srv_cpu_pct,rc" >"$csv"
    for rep in $(seq "$REPEAT"); do
        for srv in $(http_servers); do
            IFS=: read -r name b m <<<"$srv"
            port=$(next_port)
            if ! { start_http "$name" "$b" "$m" "$port" && wait_port "$port" 10; }; then
                log "$srv: did not start (see $RUN)"
                stop_server
                for u in $URLS; do echo "$name,$b,$m,$rep,$u,$HTTP_CONNS,,,,,,,,,,,,nostart" >>"$csv"; done
                continue
            fi
            for u in $URLS; do
                log "rep $rep  http $name $b $m  $u"
                measure http "$csv" "$name,$b,$m,$rep,$u,$HTTP_CONNS" "http://127.0.0.1:$port$u" \
                    -c "$HTTP_CONNS"
            done
            stop_server
        done
    done
    report http "$csv"
}

# ---- client ------------------------------------------------------------------------

rate_echoload() { awk -F, '/^[0-9]/ {print $6}'; }
rate_wrk() { awk '/Requests\/sec:/ {print $2}'; }
rate_ioplex() { json_fields | cut -d, -f1; }

# client_run CSV NAME TARGET SECS[+WARMUP] PARSER CMD...: one pinned client run against
# SERVER_PID; appends name,target,rep,rate,client and server CPU us per request.
client_run() {
    local csv=$1 name=$2 target=$3 secs=$4 parse=$5 out v c0 c1 s0 s1
    shift 5
    wait_quiet >/dev/null
    c0=$(child_ticks)
    s0=$(tree_ticks "$SERVER_PID")
    out=$(taskset -c "$CLIENT_CPU" "$@" 2>>"$RUN/client.err")
    s1=$(tree_ticks "$SERVER_PID")
    c1=$(child_ticks)
    v=$($parse <<<"$out")
    python3 - "$name" "$target" "$rep" "${v:-0}" "$((c1 - c0))" "$((s1 - s0))" "$HZ" "$secs" \
        >>"$csv" <<'PY'
import sys
name, target, rep, rate, cli, srv, hz, secs = sys.argv[1:]
n = float(rate) * sum(float(x) for x in secs.split("+"))  # the warm-up's requests too
us = lambda ticks: f"{int(ticks) / int(hz) * 1e6 / n:.2f}" if n else ""
print(f"{name},{target},{rep},{rate},{us(cli)},{us(srv)}")
PY
    log "rep $rep  $name: $v per second"
}

# Both clients on the same server, alternating which goes first.  The CPU
# columns count the whole run (setup and warm-up too): a guide, not exact.
run_client() {
    local csv=$OUT/compare-client-$stamp.csv rep port secs=${DUR%.*} who
    [ "$secs" -ge 1 ] 2>/dev/null || secs=1 # wrk counts whole seconds
    echo "client,target,rep,rate,client_cpu_us,server_cpu_us" >"$csv"
    port=$(next_port)
    start_server echo-raw "$BIN/echo-raw" "$port"
    wait_port "$port" 10 || { log "echo-raw did not start"; exit 1; }
    for rep in $(seq "$REPEAT"); do
        for who in $( ((rep % 2)) && echo "ours peer" || echo "peer ours"); do
            if [ "$who" = peer ]; then
                client_run "$csv" echoload echo-raw "$secs+$WARMUP" rate_echoload "$BIN/echoload" \
                    -p "$port" -c "$CLIENT_CONNS" -s 64 -d "$secs" --warmup "$WARMUP" --csv
            else
                client_run "$csv" "ioplex bench echo" echo-raw "$secs+$WARMUP" rate_ioplex "$IOPLEX" bench \
                    echo "127.0.0.1:$port" -c "$CLIENT_CONNS" -s 64 -d "$secs" --warmup "$WARMUP" \
                    --json $BENCH_FLAGS
            fi
        done
    done
    stop_server
    make_www
    port=$(next_port)
    start_http h2o - - "$port"
    wait_port "$port" 10 || { log "h2o did not start"; exit 1; }
    for rep in $(seq "$REPEAT"); do
        for who in $( ((rep % 2)) && echo "ours peer" || echo "peer ours"); do
            if [ "$who" = peer ]; then
                client_run "$csv" "wrk -t1" h2o "$secs" rate_wrk wrk -t1 -c"$CLIENT_CONNS" \
                    -d"${secs}s" "http://127.0.0.1:$port/hello"
            else
                client_run "$csv" "ioplex bench http" h2o "$secs" rate_ioplex "$IOPLEX" bench http \
                    "http://127.0.0.1:$port/hello" -c "$CLIENT_CONNS" -d "$secs" --json $BENCH_FLAGS
            fi
        done
    done
    stop_server
    report client "$csv"
}

# ---- tables and plots ----------------------------------------------------------------

# report KIND CSV: Markdown tables on stdout and in CSV's .md; a PNG when
# gnuplot is there.
report() {
    local kind=$1 csv=$2 md=${2%.csv}.md dat=${2%.csv}.dat
    {
        echo "### compare $kind ($(date -u +%Y-%m-%dT%H:%MZ); server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU; median of $REPEAT [range])"
        echo
        python3 - "$kind" "$csv" "$dat" "$PLOT_CONFIG" "$PLOT_URL" <<'PY'
import csv, statistics, sys
from collections import OrderedDict, defaultdict
kind, path, dat, plot_cfg, plot_url = sys.argv[1:]
rows = list(csv.DictReader(open(path, newline="")))

def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None

def cell(vals, nd):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    f = lambda v: f"{v:,.{nd}f}"
    m = statistics.median(vals)
    return f(m) if len(vals) == 1 else f"{f(m)} [{f(min(vals))}–{f(max(vals))}]"

def md(head, body):
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in body:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print()

if kind == "client":
    by = OrderedDict()
    for r in rows:
        by.setdefault((r["client"], r["target"]), []).append(r)
    rate = lambda rs: [num(r["rate"]) for r in rs]
    med = {k: statistics.median([v for v in rate(rs) if v is not None] or [0]) for k, rs in by.items()}
    body = []
    for (client, target), rs in by.items():
        peer = [m for (c, t), m in med.items() if t == target and not c.startswith("ioplex")]
        ours = client.startswith("ioplex") and peer and peer[0]
        ratio = f"**{med[(client, target)] / peer[0]:.2f}×**" if ours else ""
        body.append([client, target, cell(rate(rs), 0), ratio,
                     cell([num(r["client_cpu_us"]) for r in rs], 2),
                     cell([num(r["server_cpu_us"]) for r in rs], 2)])
    print("requests (msgs) per second of each client against the same pinned server, and the\n"
          "CPU each side spent per request (whole run; a polling client's own figure includes\n"
          "its polling):\n")
    md(["client", "server", "per second", "ioplex / peer", "client CPU µs/req",
        "server CPU µs/req"], body)
    sys.exit(0)

col = "size" if kind == "echo" else "url"
def cfgname(r):
    if kind == "echo":
        return f"C={r['conns']} S={r['size']}" + (f" idle={r['idle']}" if r["idle"] != "0" else "")
    return f"{r['url']} C={r['conns']}"
def server(r):
    return f"ioplex {r['backend']}/{r['model']}" if r["server"] == "ioplex" else r["server"]

cfgs = list(OrderedDict.fromkeys(cfgname(r) for r in rows))
servers = list(OrderedDict.fromkeys(server(r) for r in rows))
by = defaultdict(list)
for r in rows:
    by[(server(r), cfgname(r))].append(r)

def table(title, field, nd):
    print(title + "\n")
    body = []
    for s in servers:
        line = [s]
        for c in cfgs:
            rs = by.get((s, c), [])
            ok = [r for r in rs if r["rc"] == "0"]
            v = cell([num(r[field]) for r in ok], nd)
            if v is None:
                v = rs[0]["rc"] if rs and not rs[0]["rc"].isdigit() else ("FAIL" if rs else "-")
            elif len(ok) < len(rs):
                v += f" ({len(rs) - len(ok)} failed)"
            line.append(v)
        body.append(line)
    md(["server"] + cfgs, body)

unit = "msgs/s" if kind == "echo" else "req/s"
table(f"{unit} (all connections together):", "rate", 0)
table("p50 latency, µs:", "p50_us", 1)
table("p99 latency, µs:", "p99_us", 1)
table("errors per run:", "errors", 0)
table(f"server CPU per {'round trip' if kind == 'echo' else 'request'}, µs (lower is better; "
      "the figure that tells servers apart when the client's core is the bottleneck):",
      "srv_cpu_us", 2)
if kind == "http":
    table("connections reopened per run:", "reopened", 0)

# The plot's data: one configuration (PLOT_CONFIG / PLOT_URL, else the
# first one run), "server" rate p99 per line, its name in a comment first.
if kind == "echo":
    c, s, k = (plot_cfg.split(":") + ["", "", ""])[:3]
    pick = f"C={c} S={s}" + (f" idle={k}" if k not in ("", "0") else "")
else:
    pick = f"{plot_url} C={rows[0]['conns']}" if rows else ""
if pick not in cfgs and cfgs:
    pick = cfgs[0]
with open(dat, "w") as f:
    f.write(f"# {pick}\n")
    for s in servers:
        rs = [r for r in by.get((s, pick), []) if r["rc"] == "0"]
        rate = [num(r["rate"]) for r in rs if num(r["rate"]) is not None]
        p99 = [num(r["p99_us"]) for r in rs if num(r["p99_us"]) is not None]
        if rate and p99:
            f.write(f'"{s}" {statistics.median(rate):.1f} {statistics.median(p99):.1f}\n')
PY
    } | tee "$md"
    echo "raw rows: ${csv#$here/}; tables: ${md#$here/}"
    [ "$kind" = client ] && return 0
    if ! command -v gnuplot >/dev/null; then
        echo "gnuplot is not installed: no plot (apt-get install gnuplot-nox); data in ${dat#$here/}"
        return 0
    fi
    local what unit=msgs/s png=${csv%.csv}.png
    [ "$kind" = http ] && unit=req/s
    what=$(sed -n '1s/^# //p' "$dat")
    if [ "$(grep -vc '^#' "$dat")" = 0 ]; then
        echo "nothing to plot for $what (every run failed?)"
        return 0
    fi
    gnuplot -e "datafile='$dat'; outfile='$png'; title='$kind servers under ioplex bench $kind, $what'; unit='$unit'" \
        "$here/bench/plot.gp" && echo "plot: ${png#$here/}"
}

build_all
for mode in $modes; do
    case $mode in
    echo) run_echo ;;
    http) run_http ;;
    client) run_client ;;
    *) log "unknown mode '$mode' (echo, http, client)"; exit 2 ;;
    esac
done
