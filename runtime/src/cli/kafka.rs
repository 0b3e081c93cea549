//! `flumen kafka`: load JSON Lines into a topic, and count what topics hold — for demos, tests
//! and backfills, with the same client flumen's sources and sinks use.

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
enum Verb {
    /// Produce each non-blank line of a file (or standard input) as one record's value.
    Produce {
        /// The bootstrap brokers, `host:port[,...]`.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// The topic (created if missing).
        #[arg(long)]
        topic: String,
        /// Partitions of the topic if it is created; records go round robin over them.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// The file; standard input without it.
        file: Option<PathBuf>,
    },
    /// Print how many records each topic holds (end offset minus start, over its partitions).
    Count {
        /// The bootstrap brokers.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// The topics.
        #[arg(required = true)]
        topics: Vec<String>,
    },
}

const TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.verb {
        Verb::Produce {
            brokers,
            topic,
            partitions,
            file,
        } => produce(&brokers, &topic, partitions, file),
        Verb::Count { brokers, topics } => count(&brokers, &topics),
    }
}

fn config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

fn create(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = config(brokers).create()?;
    let new = NewTopic::new(topic, partitions.max(1), TopicReplication::Fixed(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = runtime
        .block_on(async {
            tokio::time::timeout(TIMEOUT, admin.create_topics([&new], &options)).await
        })
        .map_err(|_| anyhow::anyhow!("kafka brokers {brokers}: no answer within 30 s"))?
        .with_context(|| format!("kafka brokers {brokers}: cannot create topic `{topic}`"))?;
    for result in results {
        if let Err((_, code)) = result
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            anyhow::bail!("kafka brokers {brokers}: cannot create topic `{topic}`: {code}");
        }
    }
    Ok(())
}

fn produce(
    brokers: &str,
    topic: &str,
    partitions: i32,
    file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    create(brokers, topic, partitions)?;
    let producer: ThreadedProducer<DefaultProducerContext> = config(brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("message.max.bytes", "4194304")
        .create()?;
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("kafka brokers {brokers}: cannot read topic `{topic}`"))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(1, |t| t.partitions().len().max(1)) as i32;
    let input: Box<dyn BufRead> = match &file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut sent = 0u64;
    for line in input.split(b'\n') {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let partition = (sent % partitions as u64) as i32;
        let mut record = BaseRecord::<(), [u8]>::to(topic)
            .payload(line)
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => anyhow::bail!("kafka brokers {brokers}: cannot produce: {e}"),
            }
        }
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(120))
        .with_context(|| format!("kafka brokers {brokers}: records were not delivered"))?;
    println!("{sent} records produced to {topic}");
    Ok(ExitCode::SUCCESS)
}

fn count(brokers: &str, topics: &[String]) -> anyhow::Result<ExitCode> {
    let consumer: BaseConsumer = config(brokers).create()?;
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .with_context(|| format!("kafka brokers {brokers}: cannot read topic `{topic}`"))?;
        let Some(found) = metadata.topics().first().filter(|t| t.error().is_none()) else {
            println!("{topic:<20} (no such topic)");
            continue;
        };
        let mut records = 0;
        for partition in found.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), TIMEOUT)?;
            records += high - low;
        }
        println!("{topic:<20} {records}");
    }
    Ok(ExitCode::SUCCESS)
}
