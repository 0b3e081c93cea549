#!/usr/bin/env bash
# `make demo-kafka`: the reference pipeline on Kafka, on a broker of its own.
# Starts tansu (TANSU) on a free loopback port with its data in a fresh folder, loads the orders
# (ORDERS, default the sample) into topic `orders`, runs pipelines/orders-kafka.toml bounded
# (STOP_AT=end) with FLUMEN, prints how many records each output topic got, stops the broker.
# Extra arguments go to `flumen run`.
set -euo pipefail
cd "$(dirname "$0")/.."
TANSU=${TANSU:?the tansu binary}
FLUMEN=${FLUMEN:-target/release/flumen}
ORDERS=${ORDERS:-pipelines/sample/orders.jsonl}
work=$(mktemp -d "${TMPDIR:-/tmp}/flumen-demo-kafka.XXXXXX")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="tcp://127.0.0.1:$port"
(cd "$work" && exec "$TANSU" broker --listener-url "$url" --advertised-listener-url "$url" \
	--storage-engine sqlite://tansu.db) >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null || true; wait "$broker" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
	grep -q "ready in" "$work/broker.log" && break
	kill -0 "$broker" 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
	sleep 0.1
done
export KAFKA_BROKERS="127.0.0.1:$port"
echo "broker tansu at $KAFKA_BROKERS (data and checkpoints in $work)"
"$FLUMEN" kafka produce --topic orders "$ORDERS"
STOP_AT=end OUT_DIR="$work/out" "$FLUMEN" run pipelines/orders-kafka.toml "$@"
echo "records per topic:"
"$FLUMEN" kafka count orders rejected dead_letter out_of_stock alerts scores sales_per_sku \
	trending sessions late
