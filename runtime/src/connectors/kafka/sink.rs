//! A Kafka sink: JSON values to one topic, each partition written only by this sink, through
//! librdkafka's idempotent producer (a session never duplicates or reorders a record).
//!
//! Exactly once: every checkpoint records, per partition, the offset the sink's next record
//! takes (counting every record handed over before it; the checkpoint becomes durable only once
//! the producer has delivered them all). Resumed from it, the sink reads each partition's end
//! offset: the records past the checkpoint's were written by the interrupted run, and the replay
//! regenerates exactly those first (see [`super::journal`]), so the sink skips that many per
//! partition and writes the rest.

use super::{Context, KafkaOutput, client_config, failed, partition_for, partitions_of};
use crate::connectors::{Committed, Sink, SinkPosition};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// What the producer reports back: the first record it could not deliver.
struct Delivery {
    context: Context,
    failure: Mutex<Option<String>>,
}

impl rdkafka::ClientContext for Delivery {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, line: &str) {
        self.context.log(level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.context.error(error, reason);
    }
}

/// What one sink's producer has acknowledged, per partition of its topic: every record sent
/// carries it, and the delivery report counts it (the idempotent producer acknowledges a
/// partition's records in order).
struct Tally {
    answered: Vec<AtomicU64>,
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Arc<Tally>;

    fn delivery(&self, result: &DeliveryResult<'_>, tally: Arc<Tally>) {
        let message = match result {
            Ok(message) | Err((_, message)) => message,
        };
        let partition = rdkafka::Message::partition(message) as usize;
        if let Some(answered) = tally.answered.get(partition) {
            answered.fetch_add(1, Ordering::Release);
        }
        if let Err((e, message)) = result
            && let Ok(mut failure) = self.failure.lock()
            && failure.is_none()
        {
            *failure = Some(format!(
                "{e} (topic `{}`)",
                rdkafka::Message::topic(message)
            ));
        }
    }
}

/// A record waiting for its journal to be synced before it is handed to the producer.
struct Held {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

/// A Kafka sink (see the module).
pub struct KafkaSink {
    output: KafkaOutput,
    producer: Arc<ThreadedProducer<Delivery>>,
    partitions: i32,
    /// Per partition, the offset the next record takes.
    ends: Vec<i64>,
    written: u64,
    /// Per partition, records the interrupted run wrote already: skipped as the replay
    /// regenerates them.
    skip: Vec<u64>,
    held: Vec<Held>,
    /// Per partition, records handed to the producer by this run, and how many it answered.
    sent: Vec<u64>,
    tally: Arc<Tally>,
}

impl KafkaSink {
    /// Connects, creating the topic if it is missing; resumed from a checkpoint's `committed`
    /// position, works out what the interrupted run wrote after it.
    pub fn open(output: &KafkaOutput, committed: Option<SinkPosition>) -> anyhow::Result<Self> {
        let brokers = &output.brokers;
        let topic = &output.topic;
        let timeout = output.timeout;
        let producer = shared_producer(brokers)?;
        let partitions = match partitions_of(producer.client(), brokers, topic, timeout)? {
            Some(found) => found,
            None => create_topic(output)?,
        };
        let partitions = partitions.len() as i32;
        let mut now = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            // A topic just created may be listed before its partitions are known: ask again
            // until the timeout.
            let deadline = Instant::now() + timeout;
            let high = loop {
                match producer.client().fetch_watermarks(topic, p, timeout) {
                    Ok((_, high)) => break high,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        return Err(failed(brokers, &format!("read the end of {topic}/{p}"), e));
                    }
                }
            };
            now.push(high);
        }
        let (ends, written, skip) = match committed {
            Some(SinkPosition::Offsets { ends, written }) if output.exactly_once => {
                anyhow::ensure!(
                    ends.len() == now.len(),
                    "topic `{topic}` has {} partitions, and had {} at the checkpoint: its \
                     records cannot be matched to the checkpoint's",
                    now.len(),
                    ends.len()
                );
                let mut skip = Vec::with_capacity(ends.len());
                for (p, (&then, &now)) in ends.iter().zip(&now).enumerate() {
                    anyhow::ensure!(
                        now >= then,
                        "topic `{topic}` partition {p} ends at offset {now}, before the \
                         checkpoint's {then}: records were deleted from it outside flumen"
                    );
                    skip.push((now - then) as u64);
                }
                let already: u64 = skip.iter().sum();
                if already > 0 {
                    tracing::info!(
                        "kafka sink: topic `{topic}` holds {already} records the interrupted run \
                         wrote after the checkpoint; the replay does not write them again"
                    );
                }
                (ends, written, skip)
            }
            _ => (now, 0, vec![0; partitions as usize]),
        };
        Ok(KafkaSink {
            output: output.clone(),
            producer,
            partitions,
            ends,
            written,
            skip,
            held: Vec::new(),
            sent: vec![0; partitions as usize],
            tally: Arc::new(Tally {
                answered: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            }),
        })
    }

    /// The first delivery failure, as an error.
    fn check(producer: &ThreadedProducer<Delivery>, output: &KafkaOutput) -> std::io::Result<()> {
        let failure = producer
            .context()
            .failure
            .lock()
            .ok()
            .and_then(|f| f.clone());
        match failure {
            Some(e) => Err(std::io::Error::other(format!(
                "kafka brokers {}: a record could not be delivered: {e}",
                output.brokers
            ))),
            None => Ok(()),
        }
    }

    /// The record key of `value`: its `key` field (a string as it is, anything else as JSON).
    fn key_of(&self, value: &[u8]) -> Option<Vec<u8>> {
        let field = self.output.key.as_ref()?;
        match crate::connectors::batch::field(value, field)? {
            serde_json::Value::String(s) => Some(s.into_bytes()),
            serde_json::Value::Null => None,
            other => Some(other.to_string().into_bytes()),
        }
    }

    /// Waits until the producer has answered for the first `sent` records of each partition
    /// (not for what was sent after: the producer is shared and never idle while the pipeline
    /// runs), then says whether all were delivered.
    fn delivered(
        producer: &ThreadedProducer<Delivery>,
        output: &KafkaOutput,
        tally: &Tally,
        sent: &[u64],
    ) -> std::io::Result<()> {
        let deadline = Instant::now() + output.timeout;
        let behind = || {
            let answered = tally.answered.iter().map(|a| a.load(Ordering::Acquire));
            answered.zip(sent).any(|(answered, &sent)| answered < sent)
        };
        while behind() {
            if Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "kafka brokers {}: records for topic `{}` were not delivered within {} ms",
                    output.brokers,
                    output.topic,
                    output.timeout.as_millis()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Self::check(producer, output)
    }
}

/// The producer of every Kafka sink to `brokers` in this process: one client, so the records of
/// every sink go to a broker in the same requests (each sink is still its topic's only writer).
fn shared_producer(brokers: &str) -> anyhow::Result<Arc<ThreadedProducer<Delivery>>> {
    type Producers = Mutex<HashMap<String, Weak<ThreadedProducer<Delivery>>>>;
    static PRODUCERS: OnceLock<Producers> = OnceLock::new();
    let producers = PRODUCERS.get_or_init(Producers::default);
    let mut producers = producers.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(producer) = producers.get(brokers).and_then(Weak::upgrade) {
        return Ok(producer);
    }
    let producer: ThreadedProducer<Delivery> = client_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Delivery is retried until it succeeds: a checkpoint waits for it, bounded by the
        // sinks' `timeout_ms`.
        .set("message.timeout.ms", "0")
        // Fewer, larger requests: a librdkafka broker thread wakes at every linger.
        .set("linger.ms", "50")
        .set("message.max.bytes", "4194304")
        .create_with_context(Delivery {
            context: Context::new(brokers),
            failure: Mutex::new(None),
        })
        .map_err(|e| failed(brokers, "create a producer", e))?;
    let producer = Arc::new(producer);
    producers.insert(brokers.to_string(), Arc::downgrade(&producer));
    Ok(producer)
}

/// Creates the sink's topic (one replica) and waits until the brokers list it.
fn create_topic(output: &KafkaOutput) -> anyhow::Result<Vec<i32>> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let brokers = &output.brokers;
    let topic = &output.topic;
    let admin: AdminClient<Context> = client_config(brokers)
        .create_with_context(Context::new(brokers))
        .map_err(|e| failed(brokers, "create an admin client", e))?;
    let new = NewTopic::new(topic, output.partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(output.timeout));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let created = runtime
        .block_on(async {
            tokio::time::timeout(output.timeout, admin.create_topics([&new], &options)).await
        })
        .map_err(|_| {
            failed(
                brokers,
                &format!("create topic `{topic}`"),
                "no answer in time",
            )
        })?
        .map_err(|e| failed(brokers, &format!("create topic `{topic}`"), e))?;
    for result in created {
        if let Err((_, code)) = result
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(failed(brokers, &format!("create topic `{topic}`"), code));
        }
    }
    tracing::info!(
        "kafka: created topic `{topic}` ({} partition{})",
        output.partitions,
        if output.partitions == 1 { "" } else { "s" }
    );
    let deadline = Instant::now() + output.timeout;
    loop {
        if let Some(found) = partitions_of(admin.inner(), brokers, topic, output.timeout)? {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "kafka brokers {brokers}: topic `{topic}` was created but is not listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, value: &[u8]) -> std::io::Result<()> {
        let key = self.key_of(value);
        let partition = match &key {
            Some(key) => partition_for(key, self.partitions),
            None => (self.written % self.partitions as u64) as i32,
        };
        let p = partition as usize;
        self.written += 1;
        self.ends[p] += 1;
        if self.skip[p] > 0 {
            self.skip[p] -= 1;
            return Ok(());
        }
        self.held.push(Held {
            partition,
            key,
            value: value.to_vec(),
        });
        Ok(())
    }

    /// Hands the held records to the producer: the executor calls it only once the sources'
    /// journals are synced.
    fn flush(&mut self) -> std::io::Result<()> {
        Self::check(&self.producer, &self.output)?;
        let topic = self.output.topic.as_str();
        for held in self.held.drain(..) {
            let mut record = BaseRecord::with_opaque_to(topic, self.tally.clone())
                .partition(held.partition)
                .payload(&held.value);
            if let Some(key) = &held.key {
                record = record.key(key);
            }
            let deadline = Instant::now() + self.output.timeout;
            loop {
                match self.producer.send(record) {
                    Ok(()) => {
                        self.sent[held.partition as usize] += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if Instant::now() < deadline =>
                    {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        return Err(std::io::Error::other(format!(
                            "kafka brokers {}: cannot produce to topic `{topic}`: {e}",
                            self.output.brokers
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<Committed> {
        self.flush()?;
        let producer = self.producer.clone();
        let output = self.output.clone();
        let tally = self.tally.clone();
        let sent = self.sent.clone();
        Ok(Committed {
            at: Some(SinkPosition::Offsets {
                ends: self.ends.clone(),
                written: self.written,
            }),
            durable: Some(Box::new(move || {
                Self::delivered(&producer, &output, &tally, &sent)
            })),
        })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()?;
        Self::delivered(&self.producer, &self.output, &self.tally, &self.sent)
    }
}
