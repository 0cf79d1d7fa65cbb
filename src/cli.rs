//! `tributary topic|group|produce|consume|cluster`: an admin and data CLI in
//! the spirit of Redpanda's rpk, speaking the Kafka protocol to any broker.
//! Tables for people, `--format json` for scripts; errors name the Kafka error.

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::{Args, Subcommand, ValueEnum};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use kafka_protocol::ResponseError;
use serde_json::json;
use tributary_actors::{encode_batch, NewRecord};

/// Largest response frame the CLI reads.
const MAX_RESPONSE_BYTES: usize = 128 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Records per produce request.
const PRODUCE_BATCH: usize = 1000;
/// Sends of one batch when its partition leader keeps moving.
const PRODUCE_ATTEMPTS: usize = 5;

#[derive(Args)]
pub struct Global {
    /// Broker to talk to.
    #[arg(long, short = 'b', global = true, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Output for people (text) or scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, short, default_value_t = 1)]
        partitions: i32,
        #[arg(long, short, default_value_t = 1)]
        replicas: i16,
        /// Topic config, as name=value; repeatable.
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show partitions, offsets and configs of a topic.
    Describe { name: String },
    /// Set (name=value) or reset (--delete name) topic configs.
    Alter {
        name: String,
        #[arg(long = "set")]
        set: Vec<String>,
        #[arg(long = "delete")]
        delete: Vec<String>,
    },
    /// Delete topics.
    Delete { names: Vec<String> },
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// List consumer groups.
    List,
    /// Show a group's state, members and lag.
    Describe { group: String },
    /// Move a group's committed offsets on a topic (the group must have no members).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, conflicts_with_all = ["to_latest", "to_offset"])]
        to_earliest: bool,
        #[arg(long, conflicts_with = "to_offset")]
        to_latest: bool,
        #[arg(long)]
        to_offset: Option<i64>,
    },
}

#[derive(Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line at the first SEP into key and value.
    #[arg(long, short = 'k')]
    pub key_separator: Option<String>,
    /// Send every record to this partition (default: by key, murmur2 as Kafka's Java client).
    #[arg(long, short)]
    pub partition: Option<i32>,
}

#[derive(Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Where to start: beginning, end, or an offset.
    #[arg(long, short, default_value = "beginning")]
    pub offset: String,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub count: Option<usize>,
    /// Keep waiting for new records instead of exiting at the end.
    #[arg(long)]
    pub follow: bool,
    /// Print key SEP value (text format).
    #[arg(long, short = 'k')]
    pub key_separator: Option<String>,
}

/// Lets a closed stdout end the command the way it ends `ls`: by SIGPIPE,
/// silently. Rust starts programs with SIGPIPE ignored, so writing to a pipe
/// whose reader left (`tributary topic list | head -1`) fails with EPIPE
/// instead, and `println!` panics on that. Only the client commands do this;
/// the broker keeps SIGPIPE ignored. The CLI's broker connections are std
/// `TcpStream`s, which send with MSG_NOSIGNAL, so a broker that closes one is
/// still reported as an error, not a silent exit.
pub fn exit_quietly_on_closed_stdout() {
    // SAFETY: restores the default disposition of one signal before any
    // thread is started; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A blocking Kafka client: one connection, versions negotiated once.
struct Client {
    stream: TcpStream,
    correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
}

impl Client {
    fn connect(addr: &str) -> anyhow::Result<Client> {
        let target = addr.to_socket_addrs().with_context(|| format!("bad broker address {addr}"))?.next();
        let target = target.ok_or_else(|| anyhow!("broker address {addr} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut client = Client { stream, correlation_id: 0, versions: HashMap::new() };
        let resp: ApiVersionsResponse = client.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?;
        check(resp.error_code, "ApiVersions")?;
        client.versions = resp.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(client)
    }

    /// The highest version both sides know, up to `preferred`.
    fn version(&self, api: ApiKey, preferred: i16) -> anyhow::Result<i16> {
        let (min, max) = *self.versions.get(&(api as i16)).ok_or_else(|| anyhow!("broker does not support {api:?}"))?;
        let version = preferred.min(max);
        if version < min {
            bail!("broker needs {api:?} v{min}+, this CLI speaks up to v{preferred}");
        }
        Ok(version)
    }

    fn call<Req: Encodable, Resp: Decodable>(&mut self, api: ApiKey, version: i16, req: &Req) -> anyhow::Result<Resp> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("tributary-cli")));
        let mut body = BytesMut::new();
        header.encode(&mut body, api.request_header_version(version))?;
        req.encode(&mut body, version)?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).with_context(|| format!("sending {api:?}"))?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).with_context(|| format!("reading {api:?} response"))?;
        let len = i32::from_be_bytes(len);
        if len < 0 || len as usize > MAX_RESPONSE_BYTES {
            bail!("{api:?} response of {len} bytes is out of bounds");
        }
        let mut buf = vec![0u8; len as usize];
        self.stream.read_exact(&mut buf)?;
        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, api.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!("{api:?}: response for request {} while waiting for {}", header.correlation_id, self.correlation_id);
        }
        Resp::decode(&mut buf, version).with_context(|| format!("decoding {api:?} v{version} response"))
    }

    fn metadata(&mut self, topics: Option<Vec<&str>>) -> anyhow::Result<MetadataResponse> {
        let v = self.version(ApiKey::Metadata, 9)?;
        let topics = topics.map(|names| {
            names
                .into_iter()
                .map(|n| metadata_request::MetadataRequestTopic::default().with_name(Some(tn(n))))
                .collect()
        });
        let req = MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(false);
        self.call(ApiKey::Metadata, v, &req)
    }

    /// A connection to the coordinator of `group` (FindCoordinator).
    fn coordinator(&mut self, group: &str) -> anyhow::Result<Client> {
        let v = self.version(ApiKey::FindCoordinator, 2)?;
        let req = FindCoordinatorRequest::default().with_key(StrBytes::from_string(group.to_string())).with_key_type(0);
        let resp: FindCoordinatorResponse = self.call(ApiKey::FindCoordinator, v, &req)?;
        check(resp.error_code, &format!("finding the coordinator of '{group}'"))?;
        Client::connect(&format!("{}:{}", resp.host, resp.port))
    }

    /// (earliest, latest) offsets of each partition.
    fn offsets(&mut self, topic: &str, partitions: &[i32]) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
        let v = self.version(ApiKey::ListOffsets, 5)?;
        let mut out: HashMap<i32, (i64, i64)> = HashMap::new();
        for (slot, ts) in [(0, -2i64), (1, -1i64)] {
            let parts = partitions
                .iter()
                .map(|p| {
                    list_offsets_request::ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(ts)
                })
                .collect();
            let req = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default().with_name(tn(topic)).with_partitions(parts),
            ]);
            let resp: ListOffsetsResponse = self.call(ApiKey::ListOffsets, v, &req)?;
            for p in resp.topics.iter().flat_map(|t| t.partitions.iter()) {
                check(p.error_code, &format!("{topic}-{}", p.partition_index))?;
                let entry = out.entry(p.partition_index).or_insert((-1, -1));
                if slot == 0 {
                    entry.0 = p.offset
                } else {
                    entry.1 = p.offset
                }
            }
        }
        Ok(out)
    }
}

/// Connections to the brokers leading a topic's partitions, as Metadata
/// names them: requests for a partition go to its leader, as Kafka clients do.
struct Router {
    topic: String,
    addresses: HashMap<i32, String>,
    leaders: HashMap<i32, i32>,
    connections: HashMap<i32, Client>,
}

impl Router {
    fn new(client: &mut Client, topic: &str) -> anyhow::Result<(Router, Vec<i32>)> {
        let md = client.metadata(Some(vec![topic]))?;
        let t = md.topics.first().ok_or_else(|| anyhow!("no metadata for '{topic}'"))?;
        check(t.error_code, &format!("topic '{topic}'"))?;
        let addresses = md.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port))).collect();
        let leaders = t.partitions.iter().map(|p| (p.partition_index, p.leader_id.0)).collect();
        let mut indexes: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        indexes.sort_unstable();
        Ok((Router { topic: topic.to_string(), addresses, leaders, connections: HashMap::new() }, indexes))
    }

    fn leader(&self, partition: i32) -> anyhow::Result<i32> {
        match self.leaders.get(&partition) {
            Some(id) if *id >= 0 => Ok(*id),
            _ => bail!("{}-{partition} has no leader right now (a broker is down?); retry shortly", self.topic),
        }
    }

    /// The connection to `broker`, opened on first use.
    fn client(&mut self, broker: i32) -> anyhow::Result<&mut Client> {
        if !self.connections.contains_key(&broker) {
            let addr =
                self.addresses.get(&broker).ok_or_else(|| anyhow!("metadata names no address for broker {broker}"))?;
            self.connections.insert(broker, Client::connect(addr)?);
        }
        Ok(self.connections.get_mut(&broker).expect("inserted above"))
    }

    /// Partitions grouped by their leader.
    fn by_leader(&self, partitions: &[i32]) -> anyhow::Result<Vec<(i32, Vec<i32>)>> {
        let mut groups: std::collections::BTreeMap<i32, Vec<i32>> = Default::default();
        for p in partitions {
            groups.entry(self.leader(*p)?).or_default().push(*p);
        }
        Ok(groups.into_iter().collect())
    }

    /// (earliest, latest) offsets of each partition, asked of each leader.
    fn offsets(&mut self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
        let mut out = HashMap::new();
        let topic = self.topic.clone();
        for (leader, parts) in self.by_leader(partitions)? {
            out.extend(self.client(leader)?.offsets(&topic, &parts)?);
        }
        Ok(out)
    }
}

fn tn(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Ok for 0; otherwise an error naming the Kafka error and what it was about.
fn check(code: i16, what: &str) -> anyhow::Result<()> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(e) => bail!("{what}: {e} (Kafka error {code})"),
    }
}

fn check_with(code: i16, message: &Option<StrBytes>, what: &str) -> anyhow::Result<()> {
    check(code, what).map_err(|e| match message {
        Some(m) if !m.is_empty() => anyhow!("{e}: {m}"),
        _ => e,
    })
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn name_value(s: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=').map(|(n, v)| (n.to_string(), v.to_string())).ok_or_else(|| anyhow!("'{s}' is not name=value"))
}

pub fn topic(global: &Global, command: TopicCommand) -> anyhow::Result<()> {
    let mut client = Client::connect(&global.brokers)?;
    match command {
        TopicCommand::Create { name, partitions, replicas, configs } => {
            let configs = configs
                .iter()
                .map(|c| {
                    let (n, v) = name_value(c)?;
                    Ok(create_topics_request::CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(n))
                        .with_value(Some(StrBytes::from_string(v))))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let v = client.version(ApiKey::CreateTopics, 5)?;
            let req = CreateTopicsRequest::default().with_timeout_ms(30_000).with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(tn(&name))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replicas)
                    .with_configs(configs),
            ]);
            let resp: CreateTopicsResponse = client.call(ApiKey::CreateTopics, v, &req)?;
            let r = &resp.topics[0];
            check_with(r.error_code, &r.error_message, &format!("creating topic '{name}'"))?;
            emit(global, json!({"topic": name, "partitions": partitions}), || {
                println!("created topic {name} ({partitions} partitions)")
            });
        }
        TopicCommand::List => {
            let md = client.metadata(None)?;
            let mut rows: Vec<(String, usize, usize)> = md
                .topics
                .iter()
                .map(|t| {
                    let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                    (name, t.partitions.len(), t.partitions.first().map_or(0, |p| p.replica_nodes.len()))
                })
                .collect();
            rows.sort();
            let data = json!(rows
                .iter()
                .map(|(n, p, r)| json!({"name": n, "partitions": p, "replicas": r}))
                .collect::<Vec<_>>());
            emit(global, data, || {
                let cells: Vec<Vec<String>> =
                    rows.iter().map(|(n, p, r)| vec![n.clone(), p.to_string(), r.to_string()]).collect();
                table(&["NAME", "PARTITIONS", "REPLICAS"], &cells);
            });
        }
        TopicCommand::Describe { name } => {
            let md = client.metadata(Some(vec![&name]))?;
            let t = md.topics.first().ok_or_else(|| anyhow!("no metadata for '{name}'"))?;
            check(t.error_code, &format!("topic '{name}'"))?;
            let mut indexes: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
            indexes.sort();
            let offsets = Router::new(&mut client, &name)?.0.offsets(&indexes)?;
            let v = client.version(ApiKey::DescribeConfigs, 2)?;
            let req = DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(name.clone()))
                    .with_configuration_keys(None),
            ]);
            let resp: DescribeConfigsResponse = client.call(ApiKey::DescribeConfigs, v, &req)?;
            let result = &resp.results[0];
            check_with(result.error_code, &result.error_message, &format!("configs of '{name}'"))?;
            let configs: Vec<(String, String)> = result
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()).unwrap_or_default()))
                .collect();
            let leaders: HashMap<i32, i32> = t.partitions.iter().map(|p| (p.partition_index, p.leader_id.0)).collect();
            let data = json!({
                "name": name,
                "partitions": indexes.iter().map(|p| json!({
                    "partition": p, "leader": leaders[p], "log_start_offset": offsets[p].0, "high_watermark": offsets[p].1,
                })).collect::<Vec<_>>(),
                "configs": configs.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            });
            emit(global, data, || {
                let rows: Vec<Vec<String>> = indexes
                    .iter()
                    .map(|p| {
                        vec![p.to_string(), leaders[p].to_string(), offsets[p].0.to_string(), offsets[p].1.to_string()]
                    })
                    .collect();
                table(&["PARTITION", "LEADER", "LOG-START", "HIGH-WATERMARK"], &rows);
                println!();
                let rows: Vec<Vec<String>> = configs.iter().map(|(n, v)| vec![n.clone(), v.clone()]).collect();
                table(&["CONFIG", "VALUE"], &rows);
            });
        }
        TopicCommand::Alter { name, set, delete } => {
            let mut ops = Vec::new();
            for s in &set {
                let (n, v) = name_value(s)?;
                ops.push(
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_string(n))
                        .with_config_operation(0)
                        .with_value(Some(StrBytes::from_string(v))),
                );
            }
            for n in &delete {
                ops.push(
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_string(n.clone()))
                        .with_config_operation(1),
                );
            }
            if ops.is_empty() {
                bail!("nothing to change: give --set name=value or --delete name");
            }
            let v = client.version(ApiKey::IncrementalAlterConfigs, 1)?;
            let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_string(name.clone()))
                    .with_configs(ops),
            ]);
            let resp: IncrementalAlterConfigsResponse = client.call(ApiKey::IncrementalAlterConfigs, v, &req)?;
            let r = &resp.responses[0];
            check_with(r.error_code, &r.error_message, &format!("altering '{name}'"))?;
            emit(global, json!({"topic": name, "altered": true}), || println!("altered topic {name}"));
        }
        TopicCommand::Delete { names } => {
            if names.is_empty() {
                bail!("name at least one topic to delete");
            }
            let v = client.version(ApiKey::DeleteTopics, 4)?;
            let req = DeleteTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topic_names(names.iter().map(|n| tn(n)).collect());
            let resp: DeleteTopicsResponse = client.call(ApiKey::DeleteTopics, v, &req)?;
            for r in &resp.responses {
                let name = r.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                check(r.error_code, &format!("deleting topic '{name}'"))?;
            }
            emit(global, json!({"deleted": names}), || println!("deleted {}", names.join(", ")));
        }
    }
    Ok(())
}

fn emit(global: &Global, data: serde_json::Value, text: impl FnOnce()) {
    match global.format {
        Format::Json => println!("{data}"),
        Format::Text => text(),
    }
}

/// Kafka's murmur2 (the Java client's default partitioner hash).
fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

pub fn produce(global: &Global, args: ProduceArgs) -> anyhow::Result<()> {
    let mut bootstrap = Client::connect(&global.brokers)?;
    let (mut router, indexes) = Router::new(&mut bootstrap, &args.topic)?;
    let partitions = indexes.len() as i32;
    if let Some(p) = args.partition {
        if p < 0 || p >= partitions {
            bail!("partition {p} does not exist: '{}' has {partitions}", args.topic);
        }
    }
    let v = bootstrap.version(ApiKey::Produce, 7)?;
    // Drawn only when stderr is a terminal, and not for scripts (--format json).
    let progress = match global.format {
        Format::Text => indicatif::ProgressBar::new_spinner(),
        Format::Json => indicatif::ProgressBar::hidden(),
    };
    progress.set_message(format!("producing to {}", args.topic));
    let mut pending: HashMap<i32, Vec<NewRecord>> = HashMap::new();
    let (mut produced, mut round_robin) = (0usize, 0i32);
    let stdin = std::io::stdin();
    let flush = |bootstrap: &mut Client,
                 router: &mut Router,
                 pending: &mut HashMap<i32, Vec<NewRecord>>|
     -> anyhow::Result<usize> {
        let mut sent = 0;
        for (partition, records) in pending.drain() {
            let batch =
                encode_batch(&records, Compression::None, tributary_actors::now_ms()).map_err(|e| anyhow!(e))?;
            let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
                produce_request::TopicProduceData::default().with_name(tn(&args.topic)).with_partition_data(vec![
                    produce_request::PartitionProduceData::default().with_index(partition).with_records(Some(batch)),
                ]),
            ]);
            // A leader that moved answers NOT_LEADER_OR_FOLLOWER: learn the new one and resend, a few times.
            for attempt in 0..PRODUCE_ATTEMPTS {
                let leader = router.leader(partition)?;
                let resp: ProduceResponse = router.client(leader)?.call(ApiKey::Produce, v, &req)?;
                let p = resp.responses.iter().flat_map(|t| t.partition_responses.iter()).next();
                let Some(p) = p else { bail!("empty produce response") };
                let moved = p.error_code == kafka_protocol::ResponseError::NotLeaderOrFollower.code();
                if moved && attempt + 1 < PRODUCE_ATTEMPTS {
                    std::thread::sleep(Duration::from_millis(500));
                    *router = Router::new(bootstrap, &args.topic)?.0;
                    continue;
                }
                check_with(p.error_code, &p.error_message, &format!("producing to {}-{}", args.topic, p.index))?;
                break;
            }
            sent += records.len();
        }
        Ok(sent)
    };
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (Some(Bytes::from(k.to_string())), Bytes::from(v.to_string())),
                None => (None, Bytes::from(line)),
            },
            None => (None, Bytes::from(line)),
        };
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for(k, partitions),
            (None, None) => {
                round_robin = (round_robin + 1) % partitions;
                round_robin
            }
        };
        pending.entry(partition).or_default().push(NewRecord { key, value: Some(value), ..NewRecord::default() });
        if pending.values().map(Vec::len).sum::<usize>() >= PRODUCE_BATCH {
            produced += flush(&mut bootstrap, &mut router, &mut pending)?;
            progress.set_message(format!("produced {produced} records to {}", args.topic));
            progress.tick();
        }
    }
    produced += flush(&mut bootstrap, &mut router, &mut pending)?;
    progress.finish_and_clear();
    emit(global, json!({"topic": args.topic, "produced": produced}), || {
        eprintln!("produced {produced} records to {}", args.topic)
    });
    Ok(())
}

pub fn consume(global: &Global, args: ConsumeArgs) -> anyhow::Result<()> {
    let mut bootstrap = Client::connect(&global.brokers)?;
    let (mut router, indexes) = Router::new(&mut bootstrap, &args.topic)?;
    let bounds = router.offsets(&indexes)?;
    let mut next: HashMap<i32, i64> = HashMap::new();
    for p in &indexes {
        let (start, end) = bounds[p];
        next.insert(
            *p,
            match args.offset.as_str() {
                "beginning" => start,
                "end" => end,
                n => n
                    .parse::<i64>()
                    .map_err(|_| anyhow!("--offset must be beginning, end or a number, not '{n}'"))?
                    .max(start),
            },
        );
    }
    let v = bootstrap.version(ApiKey::Fetch, 11)?;
    let limit = args.count.unwrap_or(usize::MAX);
    let groups = router.by_leader(&indexes)?;
    let mut printed = 0usize;
    let out = std::io::stdout();
    let mut out = out.lock();
    let started = Instant::now();
    // Bounded: ends at the end of the log (or --count); with --follow, at --count or an interrupt.
    while printed < limit {
        let caught_up = indexes.iter().all(|p| next[p] >= bounds[p].1);
        if caught_up && !args.follow {
            break;
        }
        for (leader, partitions) in &groups {
            let parts = partitions.iter().map(|p| {
                fetch_request::FetchPartition::default()
                    .with_partition(*p)
                    .with_fetch_offset(next[p])
                    .with_partition_max_bytes(1 << 20)
            });
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(500 / groups.len().max(1) as i32)
                .with_min_bytes(1)
                .with_max_bytes(16 << 20)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(tn(&args.topic))
                    .with_partitions(parts.collect())]);
            let resp: FetchResponse = router.client(*leader)?.call(ApiKey::Fetch, v, &req)?;
            for p in resp.responses.iter().flat_map(|t| t.partitions.iter()) {
                check(p.error_code, &format!("fetching {}-{}", args.topic, p.partition_index))?;
                let Some(records) = &p.records else { continue };
                let mut buf = records.clone();
                while buf.has_remaining() && printed < limit {
                    let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| anyhow!("decoding records: {e}"))?;
                    for r in set.records {
                        if r.offset < next[&p.partition_index] || printed >= limit {
                            continue;
                        }
                        next.insert(p.partition_index, r.offset + 1);
                        print_record(&mut out, global, &args, p.partition_index, &r)?;
                        printed += 1;
                    }
                }
            }
        }
        if started.elapsed() > Duration::from_secs(24 * 3600) {
            break;
        }
    }
    Ok(())
}

fn print_record(
    out: &mut impl Write,
    global: &Global,
    args: &ConsumeArgs,
    partition: i32,
    r: &kafka_protocol::records::Record,
) -> anyhow::Result<()> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    match global.format {
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> =
                r.headers.iter().map(|(k, v)| (k.to_string(), json!(text(v)))).collect();
            let line = json!({"topic": args.topic, "partition": partition, "offset": r.offset,
                "timestamp": r.timestamp, "key": text(&r.key), "value": text(&r.value), "headers": headers});
            writeln!(out, "{line}")?;
        }
        Format::Text => match &args.key_separator {
            Some(sep) => {
                writeln!(out, "{}{sep}{}", text(&r.key).unwrap_or_default(), text(&r.value).unwrap_or_default())?
            }
            None => writeln!(out, "{}", text(&r.value).unwrap_or_default())?,
        },
    }
    Ok(())
}

pub fn group(global: &Global, command: GroupCommand) -> anyhow::Result<()> {
    let mut bootstrap = Client::connect(&global.brokers)?;
    // Each group lives on its coordinator (in a cluster, one broker per group).
    let group_name = match &command {
        GroupCommand::List => None,
        GroupCommand::Describe { group } | GroupCommand::ResetOffsets { group, .. } => Some(group.clone()),
    };
    let mut coordinator = match &group_name {
        Some(group) => Some(bootstrap.coordinator(group)?),
        None => None,
    };
    let client = coordinator.as_mut().unwrap_or(&mut bootstrap);
    match command {
        GroupCommand::List => {
            // Groups are spread over the brokers: ask each.
            let md = client.metadata(Some(Vec::new()))?;
            let mut rows: Vec<Vec<String>> = Vec::new();
            for b in &md.brokers {
                let mut broker = Client::connect(&format!("{}:{}", b.host, b.port))?;
                let v = broker.version(ApiKey::ListGroups, 4)?;
                let resp: ListGroupsResponse = broker.call(ApiKey::ListGroups, v, &ListGroupsRequest::default())?;
                check(resp.error_code, "listing groups")?;
                rows.extend(
                    resp.groups.iter().map(|g| {
                        vec![g.group_id.0.to_string(), g.group_state.to_string(), g.protocol_type.to_string()]
                    }),
                );
            }
            rows.sort();
            let data = json!(rows
                .iter()
                .map(|r| json!({"group": r[0], "state": r[1], "protocol_type": r[2]}))
                .collect::<Vec<_>>());
            emit(global, data, || table(&["GROUP", "STATE", "PROTOCOL-TYPE"], &rows));
        }
        GroupCommand::Describe { group } => {
            let v = client.version(ApiKey::DescribeGroups, 4)?;
            let req = DescribeGroupsRequest::default().with_groups(vec![GroupId(StrBytes::from_string(group.clone()))]);
            let resp: DescribeGroupsResponse = client.call(ApiKey::DescribeGroups, v, &req)?;
            let g = &resp.groups[0];
            check(g.error_code, &format!("group '{group}'"))?;
            let v = client.version(ApiKey::OffsetFetch, 6)?;
            let req = OffsetFetchRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.clone())))
                .with_topics(None);
            let fetched: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, v, &req)?;
            check(fetched.error_code, &format!("offsets of '{group}'"))?;
            let mut rows = Vec::new();
            for t in &fetched.topics {
                let indexes: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
                let ends = Router::new(client, &t.name)?.0.offsets(&indexes)?;
                for p in &t.partitions {
                    let end = ends.get(&p.partition_index).map_or(-1, |o| o.1);
                    let lag = if p.committed_offset >= 0 { end - p.committed_offset } else { -1 };
                    rows.push((t.name.0.to_string(), p.partition_index, p.committed_offset, end, lag));
                }
            }
            rows.sort();
            let data = json!({
                "group": group, "state": g.group_state.to_string(), "members": g.members.len(),
                "offsets": rows.iter().map(|(t, p, c, e, l)| json!({"topic": t, "partition": p, "committed": c, "high_watermark": e, "lag": l})).collect::<Vec<_>>(),
            });
            emit(global, data, || {
                println!("group {group}: {} with {} members", g.group_state, g.members.len());
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|(t, p, c, e, l)| vec![t.clone(), p.to_string(), c.to_string(), e.to_string(), l.to_string()])
                    .collect();
                table(&["TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"], &cells);
            });
        }
        GroupCommand::ResetOffsets { group, topic, to_earliest, to_latest, to_offset } => {
            let target: Box<dyn Fn((i64, i64)) -> i64> = match (to_earliest, to_latest, to_offset) {
                (true, _, _) => Box::new(|(start, _)| start),
                (_, true, _) => Box::new(|(_, end)| end),
                (_, _, Some(offset)) => Box::new(move |_| offset),
                _ => bail!("say where to: --to-earliest, --to-latest or --to-offset N"),
            };
            reset_offsets(client, global, &group, &topic, target)?;
        }
    }
    Ok(())
}

fn reset_offsets(
    client: &mut Client,
    global: &Global,
    group: &str,
    topic: &str,
    target: impl Fn((i64, i64)) -> i64,
) -> anyhow::Result<()> {
    let md = client.metadata(Some(vec![topic]))?;
    let t = md.topics.first().ok_or_else(|| anyhow!("no metadata for '{topic}'"))?;
    check(t.error_code, &format!("topic '{topic}'"))?;
    let indexes: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
    let bounds = Router::new(client, topic)?.0.offsets(&indexes)?;
    let mut new: Vec<(i32, i64)> =
        indexes.iter().map(|p| (*p, target(bounds[p]).clamp(bounds[p].0, bounds[p].1))).collect();
    new.sort();
    let v = client.version(ApiKey::OffsetCommit, 7)?;
    let partitions = new
        .iter()
        .map(|(p, o)| {
            offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o)
        })
        .collect();
    // Generation -1 and no member: a standalone commit, which the broker only allows while the group is empty.
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(tn(topic))
            .with_partitions(partitions)]);
    let resp: OffsetCommitResponse = client.call(ApiKey::OffsetCommit, v, &req)?;
    for p in resp.topics.iter().flat_map(|t| t.partitions.iter()) {
        check(
            p.error_code,
            &format!("resetting {group} on {topic}-{} (is the group still running?)", p.partition_index),
        )?;
    }
    let data = json!({"group": group, "topic": topic,
        "offsets": new.iter().map(|(p, o)| json!({"partition": p, "offset": o})).collect::<Vec<_>>()});
    emit(global, data, || {
        let rows: Vec<Vec<String>> =
            new.iter().map(|(p, o)| vec![topic.to_string(), p.to_string(), o.to_string()]).collect();
        table(&["TOPIC", "PARTITION", "NEW-OFFSET"], &rows);
    });
    Ok(())
}

pub fn cluster_status(global: &Global) -> anyhow::Result<()> {
    let mut client = Client::connect(&global.brokers)?;
    let md = client.metadata(None)?;
    let partitions: usize = md.topics.iter().map(|t| t.partitions.len()).sum();
    let brokers: Vec<(i32, String)> =
        md.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port))).collect();
    let cluster = md.cluster_id.as_ref().map(|c| c.to_string()).unwrap_or_default();
    let data = json!({"cluster_id": cluster, "controller": md.controller_id.0,
        "brokers": brokers.iter().map(|(id, addr)| json!({"id": id, "address": addr})).collect::<Vec<_>>(),
        "topics": md.topics.len(), "partitions": partitions});
    emit(global, data, || {
        println!(
            "cluster {cluster}: {} topics, {partitions} partitions, controller {}",
            md.topics.len(),
            md.controller_id.0
        );
        let rows: Vec<Vec<String>> = brokers.iter().map(|(id, addr)| vec![id.to_string(), addr.clone()]).collect();
        table(&["BROKER", "ADDRESS"], &rows);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_partitioner_vectors() {
        // Kafka's UtilsTest vectors for Utils.murmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
        assert_eq!(murmur2(b"abc"), 479470107);
    }
}
