#!/usr/bin/env bash
# A replicated Apache Kafka cluster on loopback: three KRaft nodes (ids 1, 2, 3), each a combined
# broker and controller, from the same Maven Central jars as broker.sh.
#   scripts/kafka/cluster.sh up              fetch the jars once, format fresh log dirs, start all three,
#                                            wait until the quorum and every broker answer; prints the bootstrap list
#   scripts/kafka/cluster.sh down            stop every node and delete the data
#   scripts/kafka/cluster.sh status          which nodes run
#   scripts/kafka/cluster.sh kill N          kill -9 node N (its data is kept)
#   scripts/kafka/cluster.sh stop N          stop node N cleanly (a rolling restart's first half)
#   scripts/kafka/cluster.sh start N         start node N on its data and wait until it answers
#   scripts/kafka/cluster.sh leader TOPIC P  the id of the node leading partition P of TOPIC
#   scripts/kafka/cluster.sh bootstrap       the bootstrap list
# Node N's client port is AE_KAFKA_CLUSTER_PORT (19092) + 2 (N - 1), its controller port the next one.
# Internal topics and new topics get replication factor 3 and min.insync.replicas 2: a write
# acknowledged by all in-sync replicas survives the loss of any one node.
# Settings: AE_KAFKA_CLUSTER_PORT, AE_KAFKA_CLUSTER_HOME (.kafka-cluster in the project), AE_KAFKA_LIBS.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
project="$(cd "$here/../.." && pwd)"
base="${AE_KAFKA_CLUSTER_PORT:-19092}"
home="${AE_KAFKA_CLUSTER_HOME:-$project/.kafka-cluster}"
NODES=(1 2 3)

port_of() { echo $((base + 2 * ($1 - 1))); }
controller_of() { echo $(($(port_of "$1") + 1)); }
pidfile() { echo "$home/node$1/broker.pid"; }
running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$(port_of "$1")") 2>/dev/null; }
bootstrap() { local n list=""; for n in "${NODES[@]}"; do list="$list${list:+,}127.0.0.1:$(port_of "$n")"; done; echo "$list"; }
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
libs="${AE_KAFKA_LIBS:-$HOME/.cache/ae-worker/kafka-$version/libs}"
fetch() { "$here/broker.sh" fetch; }  # the same jars and cache as the single broker
check_node() { case "${1:-}" in 1|2|3) ;; *) echo "node must be 1, 2 or 3, got '${1:-}'" >&2; exit 2 ;; esac; }

properties() {
  local n="$1" voters="" m
  for m in "${NODES[@]}"; do voters="$voters${voters:+,}$m@127.0.0.1:$(controller_of "$m")"; done
  cat <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(port_of "$n"),CONTROLLER://127.0.0.1:$(controller_of "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(port_of "$n")
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/node$n/data
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
unclean.leader.election.enable=false
log.retention.hours=24
PROPS
}

launch() {
  local n="$1" dir="$home/node$1"
  nohup java -Xms128m -Xmx512m -XX:+UseG1GC -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$libs/*" kafka.Kafka "$dir/server.properties" > "$dir/broker.log" 2>&1 &
  echo $! > "$(pidfile "$n")"
}

wait_for() {
  local n="$1"
  for _ in $(seq 1 180); do
    if answers "$n"; then return 0; fi
    if ! running "$n"; then echo "node $n exited during start-up:" >&2; tail -n 40 "$home/node$n/broker.log" >&2; return 1; fi
    sleep 0.5
  done
  echo "node $n did not answer on 127.0.0.1:$(port_of "$n") within 90 s" >&2
  tail -n 40 "$home/node$n/broker.log" >&2
  return 1
}

# The brokers answer before the quorum has registered all three: wait until metadata lists them.
wait_for_brokers() {
  local want="${1:-3}"
  for _ in $(seq 1 120); do
    if [ "$(java -cp "$libs/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=error \
          org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$(bootstrap)" 2>/dev/null \
          | grep -c '^127.0.0.1:.*(id: [0-9]')" -ge "$want" ]; then return 0; fi
    sleep 1
  done
  echo "the cluster did not list $want brokers within 120 s" >&2
  return 1
}

up() {
  local n cluster_id cp
  command -v java >/dev/null || { echo "java not found: install a JDK 17+" >&2; exit 1; }
  for n in "${NODES[@]}"; do
    if running "$n"; then echo "node $n already running: scripts/kafka/cluster.sh down first" >&2; exit 1; fi
    if answers "$n"; then echo "something else already listens on 127.0.0.1:$(port_of "$n")" >&2; exit 1; fi
  done
  cp="$libs/*"
  cluster_id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
  for n in "${NODES[@]}"; do
    rm -rf "$home/node$n/data"
    mkdir -p "$home/node$n/data"
    properties "$n" > "$home/node$n/server.properties"
    java -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$home/node$n/server.properties" \
      > "$home/node$n/format.log" 2>&1 || { cat "$home/node$n/format.log" >&2; exit 1; }
  done
  for n in "${NODES[@]}"; do launch "$n"; done
  for n in "${NODES[@]}"; do wait_for "$n" || { down; exit 1; }; done
  wait_for_brokers 3 || { down; exit 1; }
  echo "Kafka $version cluster up: nodes 1, 2, 3; bootstrap $(bootstrap) (logs $home/node*/broker.log)"
}

start() {
  local n="$1"
  check_node "$n"
  if running "$n"; then echo "node $n already running"; return; fi
  [ -f "$home/node$n/server.properties" ] || { echo "no cluster here: scripts/kafka/cluster.sh up first" >&2; exit 1; }
  fetch
  launch "$n"
  wait_for "$n"
  echo "node $n up on 127.0.0.1:$(port_of "$n")"
}

stop() {
  local n="$1" pid
  check_node "$n"
  if running "$n"; then
    pid="$(cat "$(pidfile "$n")")"
    kill "$pid"
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "node $n stopped"
  fi
  rm -f "$(pidfile "$n")"
}

kill9() {
  local n="$1"
  check_node "$n"
  if running "$n"; then
    kill -9 "$(cat "$(pidfile "$n")")"
    while running "$n"; do sleep 0.1; done
    echo "node $n killed"
  fi
  rm -f "$(pidfile "$n")"
}

down() {
  local n
  for n in "${NODES[@]}"; do kill9 "$n" >/dev/null; done
  rm -rf "$home"/node*/data
  echo "cluster down"
}

leader() {
  [ $# -eq 2 ] || { echo "usage: $0 leader TOPIC PARTITION" >&2; exit 2; }
  fetch
  java -cp "$libs/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=error org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$(bootstrap)" --describe --topic "$1" 2>/dev/null \
    | awk -v p="$2" '{ for (i = 1; i < NF; i++) { if ($i == "Partition:") part = $(i + 1); if ($i == "Leader:") lead = $(i + 1) }
                       if (part == p && lead != "") { print lead; found = 1; exit } part = ""; lead = "" }
                     END { if (!found) exit 1 }' \
    || { echo "no leader found for $1-$2" >&2; exit 1; }
}

status() {
  local n up=0
  for n in "${NODES[@]}"; do
    if running "$n"; then echo "node $n running (pid $(cat "$(pidfile "$n")")) on 127.0.0.1:$(port_of "$n")"; up=$((up + 1))
    else echo "node $n not running"; fi
  done
  [ "$up" -gt 0 ]
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  kill) kill9 "${2:-}" ;;
  stop) stop "${2:-}" ;;
  start) start "${2:-}" ;;
  leader) shift; leader "$@" ;;
  bootstrap) bootstrap ;;
  *) echo "usage: $0 up|down|status|kill N|stop N|start N|leader TOPIC PARTITION|bootstrap" >&2; exit 2 ;;
esac
