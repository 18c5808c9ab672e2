//! Bluesky documents from Kafka, NSLS-II's production path: bluesky-kafka's Publisher writes
//! each document as one message whose value is msgpack (with msgpack-numpy's arrays) of
//! `[name, doc]`, on `<beamline>.bluesky.runengine.documents`; BMM's plans send their control
//! messages as `["bmm", {...}]` on a topic of their own (`bmm.test`). Documents are placed in
//! their runs as the 0MQ `bluesky` source places them (see there): one event per document.
//!
//! Every partition of every listed topic is read, from its end (`start = "end"`, documents
//! published from now on) or from its beginning (`"earliest"`, whole runs Kafka still holds).
//! NSLS-II keys messages by run, so a run's documents are in one partition, in order; runs in
//! different partitions may interleave, which the per-run scan views do not mind. No consumer
//! group and no committed offsets: every beamflow reads everything, as NSLS-II's consumers each
//! do with a group of their own. Kafka keeps the messages, so a pipeline that falls behind
//! makes the consumer wait instead of losing documents: it reads at most 10,000 messages ahead.
//!
//! Compression: gzip and snappy batches are read; lz4 and zstd ones are refused (counted and
//! logged), as those need C libraries this build leaves out.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beamflow_protocol::StreamName;
use beamflow_protocol::streams::bluesky;
use futures_util::StreamExt;
use rskafka::client::ClientBuilder;
use rskafka::client::consumer::{StartOffset, StreamConsumerBuilder};
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use serde::Deserialize;
use tracing::{info, warn};

use crate::sources::bluesky::Placer;
use crate::{Source, SourceError, SourceFrame, SourceKind};

/// Messages read ahead of the pipeline at most.
const QUEUE: usize = 10_000;
/// Between attempts to reach the brokers.
const RETRY: Duration = Duration::from_secs(2);

/// `[ingesters.<name>]` with `kind = "kafka_bluesky"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaBlueskyConfig {
    /// Brokers to start from, `host:port`.
    pub bootstrap: Vec<String>,
    /// The topics: the RunEngine's documents (`bmm.bluesky.runengine.documents`) and, for BMM,
    /// its control topic (`bmm.test`).
    pub topics: Vec<String>,
    /// Where to start reading: `end` (documents published from now on) or `earliest`.
    #[serde(default)]
    pub start: Start,
    /// How long a fetch waits for new messages: the latency when the topic is quiet.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: i32,
    /// The stream name (default: the ingester's name).
    #[serde(default)]
    pub stream: Option<String>,
}

fn default_max_wait_ms() -> i32 {
    10
}

/// Where reading starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// After the last message now in each partition.
    #[default]
    End,
    /// At the first message Kafka still holds.
    Earliest,
}

impl SourceKind for KafkaBlueskyConfig {
    const KIND: &str = "kafka_bluesky";
    const SUMMARY: &str = "bluesky documents from Kafka (bluesky-kafka's msgpack `[name, doc]`, \
        NSLS-II's topics, BMM's control topic), placed in their runs as `bluesky` does";
    const BRACKETS_SERIES: bool = false;

    fn build(&self, name: &str, _: &zmq::Context) -> Result<Box<dyn Source>, SourceError> {
        Ok(Box::new(KafkaBluesky::start(self, name)?))
    }

    fn stream_names(&self, name: &str) -> Option<Vec<StreamName>> {
        Some(vec![StreamName::from(
            self.stream.as_deref().unwrap_or(name),
        )])
    }

    fn check(&self) -> Result<(), SourceError> {
        let table = |key: &str, message: &str| SourceError::Table {
            key: key.to_owned(),
            message: message.to_owned(),
        };
        if self.bootstrap.is_empty() {
            return Err(table("bootstrap", "name at least one broker, host:port"));
        }
        if self.topics.is_empty() {
            return Err(table(
                "topics",
                "name at least one topic, e.g. \"bmm.bluesky.runengine.documents\"",
            ));
        }
        if !(1..=60_000).contains(&self.max_wait_ms) {
            // A fetch that waits 0 ms gets an empty answer from some brokers (tansu).
            return Err(table("max_wait_ms", "between 1 and 60000 ms"));
        }
        Ok(())
    }
}

/// What the consumer thread says about itself, for the status.
#[derive(Debug, Default, serde::Serialize)]
struct Connection {
    /// Partitions read, as `topic/partition`.
    partitions: Vec<String>,
    /// The next offset of each partition.
    offsets: BTreeMap<String, i64>,
    /// The last error reaching the brokers or reading, if any.
    error: Option<String>,
}

/// The source.
pub struct KafkaBluesky {
    messages: Receiver<Vec<u8>>,
    connection: Arc<Mutex<Connection>>,
    placer: Placer,
}

impl KafkaBluesky {
    /// Starts the consumer thread; it connects, and reconnects, by itself.
    pub fn start(config: &KafkaBlueskyConfig, name: &str) -> Result<Self, SourceError> {
        let (sender, messages) = sync_channel(QUEUE);
        let connection = Arc::new(Mutex::new(Connection::default()));
        let origin = format!("{} {}", config.bootstrap.join(","), config.topics.join(","));
        let consumer = Consumer {
            config: config.clone(),
            sender,
            connection: Arc::clone(&connection),
        };
        std::thread::Builder::new()
            .name("kafka".to_owned())
            .spawn(move || consumer.run())
            .map_err(|error| SourceError::Config(format!("cannot start the Kafka consumer: {error}")))?;
        let stream = config.stream.as_deref().unwrap_or(name).into();
        Ok(Self {
            messages,
            connection,
            placer: Placer::new(stream, origin),
        })
    }

    /// Reads one message and places it; `Ok(false)` if none came.
    fn read(&mut self, timeout: Duration) -> Result<bool, SourceError> {
        let value = match self.messages.recv_timeout(timeout) {
            Ok(value) => value,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return Ok(false),
        };
        let document =
            bluesky::parse_kafka(&value).map_err(|error| self.placer.malformed(error))?;
        self.placer.place(document.name, document.body);
        Ok(true)
    }
}

impl Source for KafkaBluesky {
    fn streams(&self) -> Vec<StreamName> {
        self.placer.streams()
    }

    fn start_scan(&mut self, frames: &BTreeMap<StreamName, Range<u64>>) -> Result<(), SourceError> {
        self.placer.start_scan(frames);
        Ok(())
    }

    /// Reads nothing: Kafka keeps the documents for the next scan (the consumer waits once
    /// its queue is full), where a 0MQ subscriber would lose them anyway.
    fn idle(&mut self) {}

    fn next_frame(&mut self, timeout: Duration) -> Result<Option<SourceFrame>, SourceError> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.placer.has_pending() {
            if !self.read(deadline.saturating_duration_since(std::time::Instant::now()))? {
                return Ok(None);
            }
        }
        Ok(self.placer.next_frame())
    }

    fn status(&self) -> serde_json::Value {
        let mut status = self.placer.status("brokers");
        let connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(status), Ok(serde_json::Value::Object(connection))) = (
            status.as_object_mut(),
            serde_json::to_value(&*connection),
        ) {
            status.extend(connection);
        }
        status
    }
}

/// The consumer thread: an async Kafka client on a runtime of its own, handing message values
/// to the source through a bounded queue (a full queue makes it wait; Kafka keeps the rest).
struct Consumer {
    config: KafkaBlueskyConfig,
    sender: SyncSender<Vec<u8>>,
    connection: Arc<Mutex<Connection>>,
}

impl Consumer {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                warn!("Cannot start the Kafka consumer's runtime: {error}");
                return;
            }
        };
        runtime.block_on(self.consume());
    }

    fn failed(&self, error: String) {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if connection.error.as_ref() != Some(&error) {
            warn!(brokers = %self.config.bootstrap.join(","), "Kafka: {error}; trying again.");
        }
        connection.error = Some(error);
    }

    /// Reads until the source is dropped; on a failure, starts over from the next offsets.
    async fn consume(&self) {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        loop {
            match self.follow(&mut next).await {
                Ok(()) => return,
                Err(error) => self.failed(error),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Follows every partition from `next` (or the configured start); `Ok` once the source is
    /// gone.
    async fn follow(&self, next: &mut BTreeMap<(String, i32), i64>) -> Result<(), String> {
        let client = ClientBuilder::new(self.config.bootstrap.clone())
            .client_id("beamflow")
            .build()
            .await
            .map_err(|error| format!("cannot reach the brokers: {error}"))?;
        let topics = client
            .list_topics()
            .await
            .map_err(|error| format!("cannot list the topics: {error}"))?;
        let mut streams = Vec::new();
        for name in &self.config.topics {
            let Some(topic) = topics.iter().find(|topic| topic.name == *name) else {
                return Err(format!("no topic {name:?} on the brokers"));
            };
            for &partition in &topic.partitions {
                let client = client
                    .partition_client(name.clone(), partition, UnknownTopicHandling::Retry)
                    .await
                    .map_err(|error| format!("{name}/{partition}: {error}"))?;
                let key = (name.clone(), partition);
                let offset = match next.get(&key) {
                    Some(offset) => *offset,
                    None => self
                        .first_offset(&client)
                        .await
                        .map_err(|error| format!("{name}/{partition}: {error}"))?,
                };
                next.insert(key.clone(), offset);
                let stream = StreamConsumerBuilder::new(Arc::new(client), StartOffset::At(offset))
                    .with_max_wait_ms(self.config.max_wait_ms)
                    .build();
                streams.push(stream.map(move |item| (key.clone(), item)));
            }
        }
        {
            let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
            connection.partitions = next.keys().map(|(t, p)| format!("{t}/{p}")).collect();
            if connection.error.take().is_some() {
                info!(brokers = %self.config.bootstrap.join(","), "Kafka: reading again.");
            }
        }
        let mut all = futures_util::stream::select_all(streams);
        while let Some(((topic, partition), item)) = all.next().await {
            let (record, _high_watermark) =
                item.map_err(|error| format!("{topic}/{partition}: {error}"))?;
            let offset = record.offset + 1;
            next.insert((topic.clone(), partition), offset);
            self.connection
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .offsets
                .insert(format!("{topic}/{partition}"), offset);
            let Some(value) = record.record.value else {
                continue;
            };
            // Blocks this thread, the consumer's own, while the pipeline is behind.
            if self.sender.send(value).is_err() {
                return Ok(());
            }
        }
        Err("the partitions' streams ended".to_owned())
    }

    /// Where a partition is first read from. The end is taken from a fetch's high watermark:
    /// some brokers (tansu) answer the "latest offset" request wrong.
    async fn first_offset(
        &self,
        client: &rskafka::client::partition::PartitionClient,
    ) -> Result<i64, rskafka::client::error::Error> {
        let earliest = client.get_offset(OffsetAt::Earliest).await?;
        match self.config.start {
            Start::Earliest => Ok(earliest),
            Start::End => {
                let (_, high_watermark) = client.fetch_records(earliest, 1..2, 1).await?;
                Ok(high_watermark)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_without_brokers_or_topics_is_refused_at_its_key() {
        let config = |text: &str| toml::from_str::<KafkaBlueskyConfig>(text).unwrap();
        let error = config("bootstrap = []\ntopics = [\"t\"]").check().unwrap_err();
        assert!(error.to_string().starts_with("bootstrap:"), "{error}");
        let error = config("bootstrap = [\"h:9092\"]\ntopics = []").check().unwrap_err();
        assert!(error.to_string().starts_with("topics:"), "{error}");
        let error = config("bootstrap = [\"h:9092\"]\ntopics = [\"t\"]\nmax_wait_ms = 0")
            .check()
            .unwrap_err();
        assert!(error.to_string().starts_with("max_wait_ms:"), "{error}");
        let fine = config("bootstrap = [\"h:9092\"]\ntopics = [\"t\"]\nstart = \"earliest\"");
        assert_eq!(fine.start, Start::Earliest);
        assert!(fine.check().is_ok());
    }
}
