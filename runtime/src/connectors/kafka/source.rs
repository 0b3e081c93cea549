//! A Kafka source: every partition of its topics, read through one consumer that flumen assigns
//! itself (no group rebalancing: the offsets live in flumen's checkpoints), handed out one
//! partition per batch in round robin, each partition a split with its own watermark.

use super::journal::{At, Decision, Journal, Replayed};
use super::{Context, KafkaInput, client_config, failed, partitions_of};
use crate::connectors::batch::SourceBatch;
use crate::connectors::{KafkaSplit, Position, Pull, Source, SourceConfig};
use crate::window::SplitMark;
use rdkafka::Offset;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::TopicPartitionList;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A record fetched, not handed out yet.
struct Fetched {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Option<i64>,
}

/// One partition.
struct Split {
    topic: String,
    partition: i32,
    /// The offset of the next record to hand out.
    offset: i64,
    /// Where a bounded read ends (the end offset seen at the first start).
    stop: Option<i64>,
    fetched: VecDeque<Fetched>,
    /// Its own queue of fetched messages, once assigned.
    queue: Option<PartitionQueue<Context>>,
    idle: bool,
    ended: bool,
    last_record: Instant,
}

/// Records taken ahead per partition, at most (librdkafka's own prefetch is bounded by
/// `queued.max.messages.kbytes`).
const AHEAD: usize = 8192;
/// Messages taken from the consumer per read, at most.
const POLL_BUDGET: usize = 16384;

/// Where the journal is.
enum JournalState {
    /// No checkpoints: nothing is journaled.
    None,
    /// Not opened yet: a fresh start unless [`Source::seek`] resumes it first.
    Unopened(PathBuf),
    Open(Journal),
}

/// A Kafka source (see the module).
pub struct KafkaSource {
    input: KafkaInput,
    consumer: Arc<BaseConsumer<Context>>,
    splits: Vec<Split>,
    batch_size: usize,
    max_record_bytes: usize,
    /// The split to look at first next (round robin).
    next: usize,
    journal: JournalState,
    /// Decisions of a crashed run still to replay, in order.
    replay: VecDeque<Replayed>,
    started: bool,
    /// The journal segments of the last two checkpoints known durable.
    durable: [Option<u64>; 2],
}

impl KafkaSource {
    /// Connects to the brokers and finds every partition of the topics, with where a first run
    /// starts (the group's committed offsets, else `start_at`) and, bounded, where it ends.
    /// `journal` is the folder for the decision journal (with checkpoints on).
    pub fn open(
        input: &KafkaInput,
        config: &SourceConfig,
        journal: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let brokers = &input.brokers;
        let consumer: BaseConsumer<Context> = client_config(brokers)
            .set("group.id", &input.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "error")
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.message.max.bytes", "4194304")
            .set("fetch.wait.max.ms", "10")
            // For the partitions' high watermarks: how far behind the source is.
            .set("statistics.interval.ms", "1000")
            .create_with_context(Context::new(brokers))
            .map_err(|e| failed(brokers, "create a consumer", e))?;
        let timeout = input.timeout;
        let mut splits = Vec::new();
        for topic in &input.topics {
            let Some(partitions) = partitions_of(consumer.client(), brokers, topic, timeout)?
            else {
                anyhow::bail!("kafka brokers {brokers}: topic `{topic}` does not exist");
            };
            for partition in partitions {
                splits.push(Split {
                    topic: topic.clone(),
                    partition,
                    offset: 0,
                    stop: None,
                    fetched: VecDeque::new(),
                    queue: None,
                    idle: false,
                    ended: false,
                    last_record: Instant::now(),
                });
            }
        }
        let mut source = KafkaSource {
            input: input.clone(),
            consumer: Arc::new(consumer),
            splits,
            batch_size: config.batch_size,
            max_record_bytes: config.max_record_bytes,
            next: 0,
            journal: journal.map_or(JournalState::None, JournalState::Unopened),
            replay: VecDeque::new(),
            started: false,
            durable: [None; 2],
        };
        let committed = source.committed_offsets()?;
        for (split, committed) in source.splits.iter_mut().zip(committed) {
            let (low, high) = source
                .consumer
                .fetch_watermarks(&split.topic, split.partition, timeout)
                .map_err(|e| {
                    failed(
                        brokers,
                        &format!("read the offsets of {}/{}", split.topic, split.partition),
                        e,
                    )
                })?;
            split.offset = match committed {
                Some(offset) => offset.clamp(low, high),
                None if input.start_latest => high,
                None => low,
            };
            split.stop = input.stop_at_end.then_some(high);
        }
        Ok(source)
    }

    /// The group's committed offset of each split, if it has one.
    fn committed_offsets(&self) -> anyhow::Result<Vec<Option<i64>>> {
        let mut list = TopicPartitionList::new();
        for split in &self.splits {
            list.add_partition(&split.topic, split.partition);
        }
        let committed = self
            .consumer
            .committed_offsets(list, self.input.timeout)
            .map_err(|e| {
                failed(
                    &self.input.brokers,
                    &format!("read the committed offsets of group `{}`", self.input.group),
                    e,
                )
            })?;
        Ok(self
            .splits
            .iter()
            .map(|s| match committed.find_partition(&s.topic, s.partition) {
                Some(found) => match found.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                },
                None => None,
            })
            .collect())
    }

    /// What to say of a record.
    fn at(split: &Split, offset: i64) -> String {
        format!("{}/{}@{offset}", split.topic, split.partition)
    }

    /// Starts reading: the journal opened afresh unless resumed, every split assigned at its
    /// offset.
    fn start(&mut self, out: &mut SourceBatch) -> anyhow::Result<()> {
        if let JournalState::Unopened(dir) = &self.journal {
            self.journal = JournalState::Open(Journal::fresh(dir)?);
        }
        let mut list = TopicPartitionList::new();
        for (i, split) in self.splits.iter_mut().enumerate() {
            // Idle time counts from when reading starts.
            split.last_record = Instant::now();
            out.marks.push(SplitMark::Open(i as u32));
            if split.stop.is_some_and(|stop| split.offset >= stop) {
                split.ended = true;
                out.marks.push(SplitMark::Ended(i as u32));
                continue;
            }
            list.add_partition_offset(&split.topic, split.partition, Offset::Offset(split.offset))?;
        }
        self.consumer
            .assign(&list)
            .map_err(|e| failed(&self.input.brokers, "assign the partitions", e))?;
        for split in &mut self.splits {
            split.queue = self
                .consumer
                .split_partition_queue(&split.topic, split.partition);
        }
        self.started = true;
        Ok(())
    }

    /// Serves the consumer's events (errors, commits), and takes what was fetched for each
    /// split that is not far enough ahead, waiting up to `wait` on split `first` if given.
    fn fill(&mut self, first: Option<usize>, wait: Duration) {
        self.serve();
        let ahead = self.ahead();
        for i in 0..self.splits.len() {
            let wait = if first == Some(i) {
                wait
            } else {
                Duration::ZERO
            };
            self.fill_split(i, ahead, wait);
        }
    }

    /// Serves the consumer's own queue: events, and the messages fetched before the splits'
    /// queues were made (between `assign` and `split_partition_queue`), which go to their
    /// splits first.
    fn serve(&mut self) {
        let consumer = self.consumer.clone();
        for _ in 0..POLL_BUDGET {
            match consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(message)) => {
                    let found = self.splits.iter().position(|s| {
                        s.partition == message.partition() && s.topic == message.topic()
                    });
                    if let Some(i) = found {
                        keep(&mut self.splits[i], &message);
                    }
                }
                Some(Err(e)) => consumer.context().say(format!("reading: {e}")),
            }
        }
    }

    /// Takes what was fetched for split `i`, up to `ahead` records held (after the caller has
    /// served the consumer's own queue, [`Self::serve`], which may hold its first records).
    fn fill_split(&mut self, i: usize, ahead: usize, wait: Duration) {
        let consumer = self.consumer.clone();
        let split = &mut self.splits[i];
        let Some(queue) = split.queue.take() else {
            return;
        };
        let mut wait = wait;
        for _ in 0..POLL_BUDGET {
            if split.fetched.len() >= ahead {
                break;
            }
            let Some(polled) = queue.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            match polled {
                Ok(message) => keep(split, &message),
                Err(e) => consumer.context().say(format!("reading: {e}")),
            }
        }
        split.queue = Some(queue);
    }

    /// Whether split `i` has `needed` records fetched, or all it will have before its stop.
    fn has(&self, i: usize, needed: usize) -> bool {
        let split = &self.splits[i];
        split.fetched.len() >= needed
            || split
                .fetched
                .back()
                .zip(split.stop)
                .is_some_and(|(last, stop)| last.offset + 1 >= stop)
    }

    /// Records taken ahead per partition, at most.
    fn ahead(&self) -> usize {
        AHEAD.max(2 * self.batch_size)
    }

    /// Hands out `count` records of split `i` into `out`.
    fn take(&mut self, i: usize, count: usize, out: &mut SourceBatch) {
        out.split = i as u32;
        for _ in 0..count {
            let Some(record) = self.splits[i].fetched.pop_front() else {
                break;
            };
            let split = &mut self.splits[i];
            split.offset = record.offset + 1;
            split.last_record = Instant::now();
            split.idle = false;
            let at = Self::at(split, record.offset);
            self.push(record, &at, out);
        }
        let split = &mut self.splits[i];
        if split.stop.is_some_and(|stop| split.offset >= stop) && !split.ended {
            split.ended = true;
            out.marks.push(SplitMark::Ended(i as u32));
        }
    }

    /// One record into the batch, or to the dead letters with where it was.
    fn push(&self, record: Fetched, at: &str, out: &mut SourceBatch) {
        let Some(value) = record.value else {
            out.reject(
                format!("a record without a value (a tombstone) at {at}"),
                b"",
            );
            return;
        };
        if value.len() > self.max_record_bytes {
            out.reject(
                format!(
                    "a value of {} bytes at {at}, longer than max_record_bytes ({})",
                    value.len(),
                    self.max_record_bytes
                ),
                &value,
            );
            return;
        }
        // A value within max_record_bytes goes to the dead letters whole, as a file's line does.
        if value.iter().all(u8::is_ascii_whitespace) {
            out.rejected
                .push((format!("an empty value at {at}"), value));
            return;
        }
        if let Err(e) = std::str::from_utf8(&value) {
            out.rejected
                .push((format!("the value at {at} is not UTF-8: {e}"), value));
            return;
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&value) {
            out.rejected
                .push((format!("the value at {at} is not JSON: {e}"), value));
            return;
        }
        let mut added: Vec<(&str, serde_json::Value)> = Vec::new();
        if let Some(field) = &self.input.key_field {
            let key = record.key.as_deref().unwrap_or_default();
            match std::str::from_utf8(key) {
                Ok(key) => added.push((field, serde_json::Value::from(key))),
                Err(e) => {
                    let why = format!("the key of the record at {at} is not UTF-8: {e}");
                    out.rejected.push((why, value));
                    return;
                }
            }
        }
        if let (Some(field), Some(ts)) = (&self.input.timestamp_field, record.timestamp) {
            added.push((field, serde_json::Value::from(ts)));
        }
        if added.is_empty() {
            out.push_json(&value);
            return;
        }
        match with_fields(&value, &added) {
            Some(value) => out.push_json(&value),
            None => out.rejected.push((
                format!(
                    "the value at {at} is not a JSON object, so the record's key or timestamp \
                     cannot be added to it"
                ),
                value,
            )),
        }
    }

    /// Splits idle for `idle_timeout` (nothing fetched, nothing handed out) are called idle.
    fn call_idle(&mut self, out: &mut SourceBatch) {
        let Some(timeout) = self.input.idle_timeout else {
            return;
        };
        for (i, split) in self.splits.iter_mut().enumerate() {
            if !split.idle
                && !split.ended
                && split.fetched.is_empty()
                && split.last_record.elapsed() >= timeout
            {
                split.idle = true;
                out.marks.push(SplitMark::Idle(i as u32));
                if let JournalState::Open(journal) = &mut self.journal {
                    journal.record(Decision::Idle { split: i as u32 });
                }
            }
        }
    }

    /// Replays the next journaled decision of a crashed run.
    fn replay_next(
        &mut self,
        (at, decision): Replayed,
        out: &mut SourceBatch,
    ) -> std::io::Result<Pull> {
        match decision {
            Decision::Idle { split } => {
                if let Some(s) = self.splits.get_mut(split as usize) {
                    s.idle = true;
                    out.marks.push(SplitMark::Idle(split));
                }
                self.next_batch(out)
            }
            Decision::Quiet { pulls } => {
                if pulls > 1 {
                    let at = At {
                        pulls: at.pulls + 1,
                        ..at
                    };
                    self.replay
                        .push_front((at, Decision::Quiet { pulls: pulls - 1 }));
                }
                Ok(Pull::Idle)
            }
            Decision::Batch { split, count } => {
                let i = split as usize;
                let count = count as usize;
                if i >= self.splits.len() {
                    return Err(std::io::Error::other(format!(
                        "the journal names partition {i}, which the topics do not have"
                    )));
                }
                // The records were read before the crash: they are there, wait for them.
                let deadline = Instant::now() + self.input.timeout;
                while self.splits[i].fetched.len() < count {
                    if Instant::now() >= deadline {
                        let split = &self.splits[i];
                        return Err(std::io::Error::other(format!(
                            "kafka brokers {}: the records of {}/{} from offset {} the crashed \
                             run had read did not come within {} ms",
                            self.input.brokers,
                            split.topic,
                            split.partition,
                            split.offset,
                            self.input.timeout.as_millis()
                        )));
                    }
                    let ahead = self.ahead().max(count);
                    self.serve();
                    self.fill_split(i, ahead, Duration::from_millis(100));
                }
                self.next = (i + 1) % self.splits.len();
                self.take(i, count, out);
                Ok(Pull::Batch)
            }
        }
    }
}

/// Keeps a fetched message in its split, unless it was handed out or kept already (a fetch
/// again after a seek) or lies past a bounded read's stop. Offsets may skip (compacted topics).
fn keep(split: &mut Split, message: &rdkafka::message::BorrowedMessage<'_>) {
    let offset = message.offset();
    let expected = split.fetched.back().map_or(split.offset, |f| f.offset + 1);
    if offset < expected || split.stop.is_some_and(|stop| offset >= stop) {
        return;
    }
    split.fetched.push_back(Fetched {
        offset,
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        timestamp: message.timestamp().to_millis(),
    });
}

/// `value` (a JSON object) with `fields` added in front; `None` if it is not an object. A field
/// the value has already keeps the value's own.
fn with_fields(value: &[u8], fields: &[(&str, serde_json::Value)]) -> Option<Vec<u8>> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value).ok()?;
    let added: Vec<String> = fields
        .iter()
        .filter(|(name, _)| !object.contains_key(*name))
        .map(|(name, v)| format!("{}:{v}", serde_json::Value::from(*name)))
        .collect();
    if added.is_empty() {
        return Some(value.to_vec());
    }
    let rest = std::str::from_utf8(value)
        .ok()?
        .trim_start()
        .strip_prefix('{')?;
    let separator = if object.is_empty() { "" } else { "," };
    let rest = if object.is_empty() { "}" } else { rest };
    Some(format!("{{{}{separator}{rest}", added.join(",")).into_bytes())
}

impl Source for KafkaSource {
    fn lag(&mut self) -> Option<crate::telemetry::Lag> {
        let context = self.consumer.context();
        let mut known = false;
        let mut behind = 0u64;
        for split in &self.splits {
            if let Some(high) = context.high_watermark(&split.topic, split.partition) {
                known = true;
                let end = split.stop.map_or(high, |stop| stop.min(high));
                behind += u64::try_from(end - split.offset).unwrap_or(0);
            }
        }
        known.then_some(crate::telemetry::Lag {
            behind,
            unit: "offsets",
        })
    }

    fn next_batch(&mut self, out: &mut SourceBatch) -> std::io::Result<Pull> {
        if !self.started {
            self.start(out).map_err(std::io::Error::other)?;
        }
        if let Some(replayed) = self.replay.pop_front() {
            return self.replay_next(replayed, out);
        }
        if self.splits.iter().all(|s| s.ended) {
            return Ok(Pull::Finished);
        }
        self.call_idle(out);
        let n = self.splits.len();
        let turn = |s: &Self, ok: &dyn Fn(&Split) -> bool| {
            (0..n).map(|k| (s.next + k) % n).find(|&i| ok(&s.splits[i]))
        };
        let (i, count) = if self.input.stop_at_end {
            // Bounded, the batches are the records' own: each partition in turn gives
            // `batch_size` records (fewer only at its end), as a file gives its lines — whatever
            // has arrived when.
            let Some(i) = turn(self, &|s| !s.ended) else {
                return Ok(Pull::Finished);
            };
            let split = &self.splits[i];
            let left = split.stop.map_or(0, |stop| (stop - split.offset).max(0)) as usize;
            let needed = left.min(self.batch_size);
            self.fill(Some(i), Duration::ZERO);
            if !self.has(i, needed) {
                self.fill(Some(i), Duration::from_millis(10));
            }
            if !self.has(i, needed) {
                if let JournalState::Open(journal) = &mut self.journal {
                    journal.record(Decision::Quiet { pulls: 1 });
                }
                return Ok(Pull::Busy);
            }
            (i, needed.min(self.splits[i].fetched.len()))
        } else {
            self.fill(None, Duration::ZERO);
            let mut chosen = turn(self, &|s| !s.fetched.is_empty());
            if chosen.is_none() {
                // Nothing fetched yet: wait a little for the brokers before saying so.
                self.fill(Some(self.next), Duration::from_millis(10));
                chosen = turn(self, &|s| !s.fetched.is_empty());
            }
            let Some(i) = chosen else {
                if let JournalState::Open(journal) = &mut self.journal {
                    journal.record(Decision::Quiet { pulls: 1 });
                }
                return Ok(Pull::Idle);
            };
            (i, self.splits[i].fetched.len().min(self.batch_size))
        };
        if let JournalState::Open(journal) = &mut self.journal {
            journal.record(Decision::Batch {
                split: i as u32,
                count: count as u32,
            });
        }
        self.next = (i + 1) % n;
        self.take(i, count, out);
        Ok(Pull::Batch)
    }

    fn retune(&mut self, config: &SourceConfig) {
        self.batch_size = config.batch_size;
        self.max_record_bytes = config.max_record_bytes;
    }

    fn position(&mut self) -> std::io::Result<Position> {
        let rotated = match &mut self.journal {
            JournalState::None => None,
            JournalState::Unopened(dir) => {
                let mut journal = Journal::fresh(dir).map_err(std::io::Error::other)?;
                let at = journal.rotate().map_err(std::io::Error::other)?;
                self.journal = JournalState::Open(journal);
                Some(at)
            }
            JournalState::Open(journal) => Some(journal.rotate().map_err(std::io::Error::other)?),
        };
        // In the middle of a replay, the decisions after this position are the rest of it.
        let journal = rotated.map(|at| self.replay.front().map_or(at, |(next, _)| *next));
        Ok(Position::Kafka {
            splits: self
                .splits
                .iter()
                .map(|s| KafkaSplit {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    offset: s.offset,
                    stop: s.stop,
                })
                .collect(),
            journal,
            turn: self.next as u32,
        })
    }

    fn seek(&mut self, position: &Position) -> anyhow::Result<()> {
        let Position::Kafka {
            splits,
            journal,
            turn,
        } = position
        else {
            anyhow::bail!("a position of another input cannot resume a kafka source");
        };
        let mut ordered = Vec::with_capacity(self.splits.len());
        for at in splits {
            let Some(i) = self
                .splits
                .iter()
                .position(|s| s.topic == at.topic && s.partition == at.partition)
            else {
                anyhow::bail!(
                    "the checkpoint read partition {} of topic `{}`, which the source does not \
                     read now (topics: {})",
                    at.partition,
                    at.topic,
                    self.input.topics.join(", ")
                );
            };
            let mut split = self.splits.swap_remove(i);
            split.offset = at.offset;
            split.stop = at.stop.or(split.stop.filter(|_| self.input.stop_at_end));
            ordered.push(split);
        }
        // Partitions added since keep their first-run start, after the checkpoint's.
        for split in self.splits.drain(..) {
            tracing::info!(
                "kafka: partition {}/{} is new since the checkpoint; reading it from offset {}",
                split.topic,
                split.partition,
                split.offset
            );
            ordered.push(split);
        }
        self.splits = ordered;
        self.next = (*turn as usize) % self.splits.len().max(1);
        if let (Some(from), JournalState::Unopened(dir)) = (journal, &self.journal) {
            let (journal, replay) = Journal::resume(dir, *from)?;
            if !replay.is_empty() {
                tracing::info!(
                    "kafka: replaying {} reads of the interrupted run from the journal",
                    replay.len()
                );
            }
            self.replay = replay;
            self.journal = JournalState::Open(journal);
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        match &mut self.journal {
            JournalState::Open(journal) => journal.sync(),
            _ => Ok(()),
        }
    }

    fn checkpointed(&mut self, position: &Position) {
        let Position::Kafka {
            splits, journal, ..
        } = position
        else {
            return;
        };
        if let (Some(segment), JournalState::Open(open)) = (journal, &self.journal) {
            // The journal keeps what the two newest checkpoints need.
            self.durable = [self.durable[1], Some(segment.segment)];
            if let Some(oldest) = self.durable[0] {
                open.forget_before(oldest);
            }
        }
        let mut list = TopicPartitionList::new();
        for split in splits {
            let _ = list.add_partition_offset(
                &split.topic,
                split.partition,
                Offset::Offset(split.offset),
            );
        }
        self.consumer
            .context()
            .commits_sent
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.consumer.commit(&list, CommitMode::Async) {
            self.consumer
                .context()
                .commits_done
                .fetch_add(1, Ordering::Relaxed);
            self.consumer.context().say(format!(
                "committing the offsets of group `{}`: {e}",
                self.input.group
            ));
        }
    }
}

impl Drop for KafkaSource {
    /// Waits a little for the offsets committed after the last checkpoints to reach the group
    /// (a bounded run's last commit is made just before the end), serving their answers.
    fn drop(&mut self) {
        let context = self.consumer.context().clone();
        let deadline = Instant::now() + Duration::from_secs(3);
        while context.commits_done.load(Ordering::Relaxed)
            < context.commits_sent.load(Ordering::Relaxed)
            && Instant::now() < deadline
        {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_added_in_front_of_an_object() {
        let key = [("user_id", serde_json::Value::from("u1"))];
        assert_eq!(
            with_fields(br#"{"sku":"S"}"#, &key).unwrap(),
            br#"{"user_id":"u1","sku":"S"}"#
        );
        assert_eq!(with_fields(b" {}", &key).unwrap(), br#"{"user_id":"u1"}"#);
        // The value's own field wins.
        assert_eq!(
            with_fields(br#"{"user_id":"mine"}"#, &key).unwrap(),
            br#"{"user_id":"mine"}"#
        );
        assert_eq!(with_fields(b"[1]", &key), None);
    }
}
