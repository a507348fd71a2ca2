#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft, combined broker+controller) on loopback, from Maven Central.
#   scripts/kafka/broker.sh up       fetch the jars once, format a fresh log dir, start, wait until it answers
#   scripts/kafka/broker.sh down     stop it and delete its log dir
#   scripts/kafka/broker.sh stop     stop it, keeping its data (topics, offsets) for `start`
#   scripts/kafka/broker.sh start    start the stopped broker on its kept data (or `up` when there is none)
#   scripts/kafka/broker.sh status
#   scripts/kafka/broker.sh consume TOPIC [console consumer flags]   Kafka's console consumer on this broker,
#       e.g. consume anomalies --from-beginning --isolation-level read_committed --formatter-property print.key=true
# Settings: AE_KAFKA_PORT (9092; the controller listens on the next port), AE_KAFKA_HOME (.kafka in
# the project: config, data, log, pid), AE_KAFKA_LIBS (jar cache shared between checkouts).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
project="$(cd "$here/../.." && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
port="${AE_KAFKA_PORT:-9092}"
controller_port="$((port + 1))"
home="${AE_KAFKA_HOME:-$project/.kafka}"
libs="${AE_KAFKA_LIBS:-$HOME/.cache/ae-worker/kafka-$version/libs}"
pidfile="$home/broker.pid"

fetch() {
  # the marker names the pom's digest: a changed dependency list fetches again
  local marker="$libs/.complete-$(sha256sum "$here/pom.xml" | cut -c1-16)"
  if [ -f "$marker" ]; then return; fi
  echo "fetching Apache Kafka $version and its dependencies from Maven Central into $libs" >&2
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  touch "$marker"
}

consume() {
  [ $# -ge 1 ] || { echo "usage: $0 consume TOPIC [console consumer flags]" >&2; exit 2; }
  fetch
  local topic="$1"; shift
  java -cp "$libs/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "127.0.0.1:$port" --topic "$topic" "$@"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

up() {
  if running; then echo "broker already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  if answers; then echo "something else already listens on 127.0.0.1:$port" >&2; exit 1; fi
  command -v java >/dev/null || { echo "java not found: install a JDK 17+" >&2; exit 1; }
  fetch
  rm -rf "$home/data"
  mkdir -p "$home/data"
  cat > "$home/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=24
PROPS
  local cp="$libs/*"
  local cluster_id
  cluster_id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
  java -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$home/server.properties" \
    > "$home/format.log" 2>&1 || { cat "$home/format.log" >&2; exit 1; }
  launch
}

launch() {
  local cp="$libs/*"
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$cp" kafka.Kafka "$home/server.properties" > "$home/broker.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if answers; then echo "Kafka $version up on 127.0.0.1:$port (pid $(cat "$pidfile"), logs $home/broker.log)"; return; fi
    if ! running; then echo "broker exited during start-up:" >&2; tail -n 40 "$home/broker.log" >&2; exit 1; fi
    sleep 0.5
  done
  echo "broker did not answer on 127.0.0.1:$port within 60 s" >&2
  tail -n 40 "$home/broker.log" >&2
  stop
  exit 1
}

start() {
  if running; then echo "broker already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  if [ ! -f "$home/server.properties" ] || [ ! -f "$home/data/meta.properties" ]; then up; return; fi
  if answers; then echo "something else already listens on 127.0.0.1:$port" >&2; exit 1; fi
  fetch
  launch
}

stop() {
  if running; then
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "broker stopped"
  fi
  rm -f "$pidfile"
}

down() {
  stop
  rm -rf "$home/data"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  fetch) fetch ;;
  consume) shift; consume "$@" ;;
  *) echo "usage: $0 up|down|start|stop|status|fetch|consume TOPIC [flags]" >&2; exit 2 ;;
esac
