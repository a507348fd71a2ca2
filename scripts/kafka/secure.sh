#!/usr/bin/env bash
# A secured single-node Apache Kafka (KRaft) on loopback, as production clusters are: TLS, SASL and ACLs.
#   scripts/kafka/secure.sh up      make a CA and the broker's certificate, format a fresh log dir with the
#                                   SCRAM users admin and ae-worker, start, create the worker's topics and
#                                   grant ae-worker exactly the ACLs it needs; writes worker.env and admin.env
#   scripts/kafka/secure.sh down    stop it and delete its data, certificates and env files
#   scripts/kafka/secure.sh status
#   scripts/kafka/secure.sh acls    the ACLs as granted (kafka-acls --list, as admin)
#   scripts/kafka/secure.sh admin CLASS [ARGS]   run a Kafka tool class as admin, e.g.
#       admin org.apache.kafka.tools.TopicCommand --list
#
# Clients reach one SASL_SSL listener (SCRAM-SHA-512) at 127.0.0.1:AE_KAFKA_SECURE_PORT (9192); there
# is no plaintext listener for clients. The controller listens on the next port, on loopback, for the
# node itself. The StandardAuthorizer denies whatever no ACL allows; admin is the only super user.
# ae-worker gets (see grant_worker below, and README "Securing"):
#   topic   input topics     READ, DESCRIBE           consumes them
#   group   group id         READ, DESCRIBE           joins the group, commits offsets
#   topic   anomalies, dlq   WRITE, DESCRIBE          publishes
#   topic   changelog        READ, WRITE, DESCRIBE    saves and restores snapshots
#   transactional-id prefix  WRITE, DESCRIBE          exactly-once transactions
# It gets no CREATE: the topics exist (made here as admin); with --create-topics it would need CREATE.
# Topic and group names follow AE_KAFKA__INPUT_TOPICS, __OUTPUT_TOPIC, __DLQ_TOPIC, __CHANGELOG_TOPIC and __GROUP_ID
# when set (their defaults otherwise); AE_KAFKA_SECURE_PARTITIONS (4) partitions.
#
# worker.env and admin.env hold AE_KAFKA__ lines (bootstrap, protocol, mechanism, user, password, CA)
# for `set -a; . <home>/worker.env; set +a` before an ae-worker command. Passwords are random, made
# at `up`, and kept only in the home folder (mode 700).
# Settings: AE_KAFKA_SECURE_PORT, AE_KAFKA_SECURE_HOME (.kafka-secure in the project), AE_KAFKA_LIBS.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
project="$(cd "$here/../.." && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
port="${AE_KAFKA_SECURE_PORT:-9192}"
controller_port="$((port + 1))"
home="${AE_KAFKA_SECURE_HOME:-$project/.kafka-secure}"
libs="${AE_KAFKA_LIBS:-$HOME/.cache/ae-worker/kafka-$version/libs}"
pidfile="$home/broker.pid"
partitions="${AE_KAFKA_SECURE_PARTITIONS:-4}"

group="${AE_KAFKA__GROUP_ID:-ae-worker}"
inputs="${AE_KAFKA__INPUT_TOPICS:-sensor-readings}"
output="${AE_KAFKA__OUTPUT_TOPIC:-anomalies}"
dlq="${AE_KAFKA__DLQ_TOPIC:-sensor-readings-dlq}"
changelog="${AE_KAFKA__CHANGELOG_TOPIC:-$group-state}"
transactional="$group-"  # the worker's transactional ids are <group_id>-<instance_id or a random id>

fetch() { "$here/broker.sh" fetch; }
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
secret() { head -c 18 /dev/urandom | base64 | tr -d '/+=' ; }
tool() { java -cp "$libs/*" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn "$@"; }
admin_tool() { local class="$1"; shift; tool "$class" --bootstrap-server "127.0.0.1:$port" --command-config "$home/admin.properties" "$@"; }

certificates() {
  # A CA, and the broker's key and certificate signed by it for 127.0.0.1 and localhost; ca.pem is what
  # clients trust. other-ca.pem, a CA that signed nothing here, is for testing an untrusted broker.
  local pass="$1" tls="$home/tls" san="SAN=ip:127.0.0.1,dns:localhost"
  mkdir -p "$tls"
  keytool -genkeypair -alias ca -keyalg RSA -keysize 2048 -validity 30 -dname "CN=ae-worker test CA" \
    -ext bc:c -keystore "$tls/ca.p12" -storetype PKCS12 -storepass "$pass" -noprompt 2>/dev/null
  keytool -exportcert -rfc -alias ca -keystore "$tls/ca.p12" -storepass "$pass" -file "$tls/ca.pem" 2>/dev/null
  keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 30 -dname "CN=localhost" -ext "$san" \
    -keystore "$tls/broker.p12" -storetype PKCS12 -storepass "$pass" -noprompt 2>/dev/null
  keytool -certreq -alias broker -keystore "$tls/broker.p12" -storepass "$pass" -file "$tls/broker.csr" 2>/dev/null
  keytool -gencert -rfc -alias ca -keystore "$tls/ca.p12" -storepass "$pass" -infile "$tls/broker.csr" \
    -outfile "$tls/broker.pem" -validity 30 -ext "$san" 2>/dev/null
  keytool -importcert -alias ca -file "$tls/ca.pem" -keystore "$tls/broker.p12" -storepass "$pass" -noprompt 2>/dev/null
  keytool -importcert -alias broker -file "$tls/broker.pem" -keystore "$tls/broker.p12" -storepass "$pass" \
    -noprompt 2>/dev/null
  keytool -genkeypair -alias other -keyalg RSA -keysize 2048 -validity 30 -dname "CN=some other CA" -ext bc:c \
    -keystore "$tls/other-ca.p12" -storetype PKCS12 -storepass "$pass" -noprompt 2>/dev/null
  keytool -exportcert -rfc -alias other -keystore "$tls/other-ca.p12" -storepass "$pass" \
    -file "$tls/other-ca.pem" 2>/dev/null
  rm -f "$tls/broker.csr"
}

client_properties() {  # USER PASSWORD: a Java client's config for the SASL_SSL listener
  cat <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$1" password="$2";
ssl.truststore.type=PEM
ssl.truststore.location=$home/tls/ca.pem
PROPS
}

env_file() {  # USER PASSWORD: the AE_KAFKA__ lines an ae-worker command reads
  cat <<ENV
AE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$port
AE_KAFKA__SECURITY_PROTOCOL=SASL_SSL
AE_KAFKA__SASL_MECHANISM=SCRAM-SHA-512
AE_KAFKA__SASL_USERNAME=$1
AE_KAFKA__SASL_PASSWORD=$2
AE_KAFKA__SSL_CAFILE=$home/tls/ca.pem
ENV
}

up() {
  if running; then echo "secured broker already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  if answers; then echo "something else already listens on 127.0.0.1:$port" >&2; exit 1; fi
  command -v java >/dev/null && command -v keytool >/dev/null || { echo "java and keytool not found: install a JDK 17+" >&2; exit 1; }
  fetch
  rm -rf "$home"
  mkdir -p "$home/data"
  chmod 700 "$home"
  local store_pass admin_pass worker_pass
  store_pass="$(secret)"; admin_pass="$(secret)"; worker_pass="$(secret)"
  certificates "$store_pass"
  cat > "$home/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=SASL_SSL://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pass";
ssl.keystore.type=PKCS12
ssl.keystore.location=$home/tls/broker.p12
ssl.keystore.password=$store_pass
ssl.key.password=$store_pass
ssl.truststore.type=PEM
ssl.truststore.location=$home/tls/ca.pem
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
# admin; and the node itself on its loopback controller listener (PLAINTEXT: principal ANONYMOUS)
super.users=User:admin;User:ANONYMOUS
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
  chmod 600 "$home/server.properties"
  client_properties admin "$admin_pass" > "$home/admin.properties"
  env_file admin "$admin_pass" > "$home/admin.env"
  env_file ae-worker "$worker_pass" > "$home/worker.env"
  chmod 600 "$home/admin.properties" "$home/admin.env" "$home/worker.env"
  local cluster_id
  cluster_id="$(tool kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
  tool kafka.tools.StorageTool format -t "$cluster_id" -c "$home/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin_pass]" \
    --add-scram "SCRAM-SHA-512=[name=ae-worker,password=$worker_pass]" > "$home/format.log" 2>&1 \
    || { cat "$home/format.log" >&2; exit 1; }
  launch
  topics
  grant_worker
  echo "secured Kafka $version up on 127.0.0.1:$port (SASL_SSL, SCRAM-SHA-512, ACLs; logs $home/broker.log)"
  echo "worker settings: set -a; . $home/worker.env; set +a     (admin: $home/admin.env)"
}

launch() {
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$libs/*" kafka.Kafka "$home/server.properties" > "$home/broker.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if answers && admin_tool org.apache.kafka.tools.TopicCommand --list >/dev/null 2>&1; then return; fi
    if ! running; then echo "broker exited during start-up:" >&2; tail -n 40 "$home/broker.log" >&2; exit 1; fi
    sleep 0.5
  done
  echo "the secured broker did not answer on 127.0.0.1:$port within 60 s" >&2
  tail -n 40 "$home/broker.log" >&2
  stop
  exit 1
}

topics() {
  local topic
  for topic in ${inputs//,/ } "$output" "$dlq"; do
    admin_tool org.apache.kafka.tools.TopicCommand --create --if-not-exists --topic "$topic" \
      --partitions "$partitions" --replication-factor 1 >/dev/null
  done
  admin_tool org.apache.kafka.tools.TopicCommand --create --if-not-exists --topic "$changelog" \
    --partitions "$partitions" --replication-factor 1 --config cleanup.policy=compact >/dev/null
}

grant() { admin_tool org.apache.kafka.tools.AclCommand --add --allow-principal User:ae-worker "$@" >/dev/null; }

grant_worker() {
  local topic
  for topic in ${inputs//,/ }; do grant --operation Read --operation Describe --topic "$topic"; done
  grant --operation Read --operation Describe --group "$group"
  grant --operation Write --operation Describe --topic "$output"
  grant --operation Write --operation Describe --topic "$dlq"
  grant --operation Read --operation Write --operation Describe --topic "$changelog"
  grant --operation Write --operation Describe --transactional-id "$transactional" --resource-pattern-type prefixed
}

stop() {
  if running; then
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "secured broker stopped"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  up) up ;;
  down) stop; rm -rf "$home" ;;
  status) if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  acls) admin_tool org.apache.kafka.tools.AclCommand --list ;;
  admin) shift; [ $# -ge 1 ] || { echo "usage: $0 admin CLASS [ARGS]" >&2; exit 2; }; admin_tool "$@" ;;
  *) echo "usage: $0 up|down|status|acls|admin CLASS [ARGS]" >&2; exit 2 ;;
esac
