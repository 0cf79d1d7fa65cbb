//! `tributary topic|group|produce|consume|cluster`: an admin and data CLI in
//! the spirit of Redpanda's rpk, speaking the Kafka protocol to any broker
//! through `tributary-client`. Tables for people, `--format json` for
//! scripts; errors name the Kafka error.
//!
//! Each command runs on a current-thread runtime (the client lives on a
//! `LocalSet`). Every line goes out through `?`, so a reader that goes away
//! (`| head`) ends the command quietly with status 0, as `ls | head` does.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use futures::future::try_join_all;
use serde_json::json;
use crate::cluster::metadata::ScramMechanism;
use tributary_client::{
    partition_for_key, AlterConfig, BrokerAddress, Client, ConfigResource, ConsumedRecord, Consumer, FetchOptions,
    NewRecord, NewTopic, OffsetSpec, PartitionOffset, Producer, ProducerConfig, Transport,
};

/// Records per round of produce requests (one batch per partition, sent together).
const PRODUCE_BATCH: usize = 1000;
/// A `consume --follow` ends after this long at most.
const CONSUME_LIMIT: Duration = Duration::from_secs(24 * 3600);

#[derive(Args)]
pub struct Global {
    /// Broker to talk to.
    #[arg(long, short = 'b', global = true, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Output for people (text) or scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Client security settings, a Kafka properties file (as Kafka's tools'
    /// --command-config): security.protocol, sasl.mechanism, sasl.username and
    /// sasl.password (or sasl.jaas.config), ssl.ca.location (PEM).
    #[arg(long, global = true)]
    pub command_config: Option<std::path::PathBuf>,
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

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a SASL user, or set its password: SCRAM credentials, salted and
    /// iterated here, so the password never reaches the broker.
    Create {
        name: String,
        /// The password (visible to other local users in the process list; prefer --password-file).
        #[arg(long, conflicts_with = "password_file")]
        password: Option<String>,
        /// A file whose first line is the password.
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
        /// SCRAM-SHA-256, SCRAM-SHA-512, or both (the default).
        #[arg(long)]
        mechanism: Option<String>,
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
    /// List the users and their SCRAM mechanisms.
    List,
    /// Delete a user's credentials (all its mechanisms unless --mechanism).
    Delete {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TransactionsCommand {
    /// List the transactional ids every broker coordinates.
    List,
    /// Show a transactional id's state, producer and partitions.
    Describe { transactional_id: String },
    /// Show the producers of a partition and where their open transactions start.
    Producers {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
    },
    /// Find the open transactions of a topic's partitions that no coordinator
    /// knows (hanging: nothing will end them); `abort` ends one.
    FindHanging {
        #[arg(long)]
        topic: String,
    },
    /// End a hanging transaction on a partition with an abort marker (one its
    /// coordinator no longer knows, holding the partition's last stable offset).
    Abort {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        #[arg(long)]
        producer_id: i64,
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

/// Runs one command to completion. A closed stdout or stderr is the reader
/// having seen enough: not an error.
fn run(command: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    match tokio::task::LocalSet::new().block_on(&runtime, command) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        done => done,
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn connect(global: &Global) -> anyhow::Result<Client<Transport>> {
    let mut config = tributary_client::Config::new(BrokerAddress::parse_list(&global.brokers)?);
    config.connection.client_id = "tributary-cli".to_string();
    let transport = match &global.command_config {
        None => Transport::Tcp,
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let security = ClientSecurity::parse(&text).with_context(|| format!("{}", path.display()))?;
            config.connection.sasl = security.sasl;
            security.transport
        }
    };
    Ok(Client::new(transport, config))
}

/// What a client properties file says about security.
struct ClientSecurity {
    transport: Transport,
    sasl: Option<tributary_client::Sasl>,
}

impl ClientSecurity {
    fn parse(text: &str) -> anyhow::Result<ClientSecurity> {
        let mut properties = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!')) {
            let (key, value) = line.split_once('=').or_else(|| line.split_once(':')).unwrap_or((line, ""));
            properties.insert(key.trim().to_string(), value.trim().to_string());
        }
        let get = |key: &str| properties.get(key).map(String::as_str).filter(|v| !v.is_empty());
        let protocol = get("security.protocol").unwrap_or("PLAINTEXT").to_ascii_uppercase();
        let (tls, sasl) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => bail!("security.protocol {other:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
        };
        let transport = match tls {
            false => Transport::Tcp,
            true => {
                let ca = get("ssl.ca.location").or_else(|| get("ssl.truststore.location")).ok_or_else(|| {
                    anyhow!("TLS needs ssl.ca.location (a PEM file of the CA certificates to trust)")
                })?;
                Transport::tls_trusting(std::path::Path::new(ca))?
            }
        };
        let sasl = match sasl {
            false => None,
            true => {
                let mechanism = get("sasl.mechanism").or_else(|| get("sasl.mechanisms")).unwrap_or("PLAIN");
                let jaas = get("sasl.jaas.config").map(jaas_credentials).unwrap_or_default();
                let username = get("sasl.username").map(String::from).or(jaas.0);
                let password = get("sasl.password").map(String::from).or(jaas.1);
                let (Some(username), Some(password)) = (username, password) else {
                    bail!("SASL needs sasl.username and sasl.password (or sasl.jaas.config with both)");
                };
                Some(tributary_client::Sasl { mechanism: mechanism.to_ascii_uppercase(), username, password })
            }
        };
        Ok(ClientSecurity { transport, sasl })
    }
}

/// The username and password of a `sasl.jaas.config` (`... username="a" password="b";`).
fn jaas_credentials(jaas: &str) -> (Option<String>, Option<String>) {
    let field = |name: &str| {
        let start = jaas.find(&format!("{name}=\""))? + name.len() + 2;
        let end = jaas[start..].find('"')? + start;
        Some(jaas[start..end].to_string())
    };
    (field("username"), field("password"))
}

/// Prints `data` as one JSON line, or runs `text` for people.
fn emit(
    out: &mut dyn Write,
    global: &Global,
    data: serde_json::Value,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match global.format {
        Format::Json => writeln!(out, "{data}"),
        Format::Text => text(out),
    }
}

/// Prints rows as aligned columns.
fn table(out: &mut dyn Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        writeln!(out, "{}", padded.join("  ").trim_end())
    };
    line(headers.to_vec())?;
    for row in rows {
        line(row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

fn name_value(s: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=').map(|(n, v)| (n.to_string(), v.to_string())).ok_or_else(|| anyhow!("'{s}' is not name=value"))
}

/// Earliest and latest offset of each of `partitions`.
async fn bounds(client: &Client<Transport>, topic: &str, partitions: &[i32]) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let (start, end) = futures::try_join!(
        client.list_offsets(topic, partitions, OffsetSpec::Earliest),
        client.list_offsets(topic, partitions, OffsetSpec::Latest),
    )?;
    Ok(start.into_iter().map(|(p, s)| (p, (s.offset, end.get(&p).map_or(-1, |e| e.offset)))).collect())
}

pub fn topic(global: &Global, command: TopicCommand) -> anyhow::Result<()> {
    run(async {
        let client = connect(global)?;
        let out = &mut std::io::stdout().lock();
        match command {
            TopicCommand::Create { name, partitions, replicas, configs } => {
                let configs = configs.iter().map(|c| name_value(c)).collect::<anyhow::Result<Vec<_>>>()?;
                let topic = NewTopic { name: name.clone(), partitions, replication_factor: replicas, configs };
                client.create_topics(&[topic]).await?;
                emit(out, global, json!({"topic": name, "partitions": partitions}), |out| {
                    writeln!(out, "created topic {name} ({partitions} partitions)")
                })?;
            }
            TopicCommand::List => list_topics(&client, global, out).await?,
            TopicCommand::Describe { name } => describe_topic(&client, global, out, &name).await?,
            TopicCommand::Alter { name, set, delete } => {
                let mut changes = Vec::new();
                for s in &set {
                    let (n, v) = name_value(s)?;
                    changes.push(AlterConfig::Set(n, v));
                }
                changes.extend(delete.iter().map(|n| AlterConfig::Delete(n.clone())));
                if changes.is_empty() {
                    bail!("nothing to change: give --set name=value or --delete name");
                }
                client.incremental_alter_configs(&ConfigResource::Topic(name.clone()), &changes).await?;
                emit(out, global, json!({"topic": name, "altered": true}), |out| {
                    writeln!(out, "altered topic {name}")
                })?;
            }
            TopicCommand::Delete { names } => {
                if names.is_empty() {
                    bail!("name at least one topic to delete");
                }
                client.delete_topics(&names.iter().map(String::as_str).collect::<Vec<_>>()).await?;
                emit(out, global, json!({"deleted": names}), |out| writeln!(out, "deleted {}", names.join(", ")))?;
            }
        }
        Ok(())
    })
}

async fn list_topics(client: &Client<Transport>, global: &Global, out: &mut dyn Write) -> anyhow::Result<()> {
    let rows: Vec<(String, usize, usize)> = client
        .list_topics()
        .await?
        .iter()
        .map(|t| (t.name.clone(), t.partitions.len(), t.partitions.first().map_or(0, |p| p.replicas.len())))
        .collect();
    let data =
        json!(rows.iter().map(|(n, p, r)| json!({"name": n, "partitions": p, "replicas": r})).collect::<Vec<_>>());
    emit(out, global, data, |out| {
        let cells: Vec<Vec<String>> =
            rows.iter().map(|(n, p, r)| vec![n.clone(), p.to_string(), r.to_string()]).collect();
        table(out, &["NAME", "PARTITIONS", "REPLICAS"], &cells)
    })?;
    Ok(())
}

async fn describe_topic(client: &Client<Transport>, global: &Global, out: &mut dyn Write, name: &str) -> anyhow::Result<()> {
    let described = client.describe_topics(&[name]).await?;
    let t = described.first().ok_or_else(|| anyhow!("no metadata for '{name}'"))?.check()?;
    let indexes = t.indexes();
    let offsets = bounds(client, name, &indexes).await?;
    let configs: BTreeMap<String, String> = client
        .describe_configs(&ConfigResource::Topic(name.to_string()))
        .await?
        .into_iter()
        .map(|c| (c.name, c.value.unwrap_or_default()))
        .collect();
    let leaders: BTreeMap<i32, i32> = t.partitions.iter().map(|p| (p.index, p.leader.unwrap_or(-1))).collect();
    let data = json!({
        "name": name,
        "partitions": indexes.iter().map(|p| json!({
            "partition": p, "leader": leaders[p], "log_start_offset": offsets[p].0, "high_watermark": offsets[p].1,
        })).collect::<Vec<_>>(),
        "configs": configs,
    });
    emit(out, global, data, |out| {
        let rows: Vec<Vec<String>> = indexes
            .iter()
            .map(|p| vec![p.to_string(), leaders[p].to_string(), offsets[p].0.to_string(), offsets[p].1.to_string()])
            .collect();
        table(out, &["PARTITION", "LEADER", "LOG-START", "HIGH-WATERMARK"], &rows)?;
        writeln!(out)?;
        let rows: Vec<Vec<String>> = configs.iter().map(|(n, v)| vec![n.clone(), v.clone()]).collect();
        table(out, &["CONFIG", "VALUE"], &rows)
    })?;
    Ok(())
}

pub fn produce(global: &Global, args: ProduceArgs) -> anyhow::Result<()> {
    run(async {
        let client = connect(global)?;
        let partitions = i32::try_from(client.topic(&args.topic).await?.partitions.len())?;
        if let Some(p) = args.partition {
            if p < 0 || p >= partitions {
                bail!("partition {p} does not exist: '{}' has {partitions}", args.topic);
            }
        }
        let producer = Producer::new(client, ProducerConfig::default());
        // Drawn only when stderr is a terminal, and not for scripts (--format json).
        let progress = match global.format {
            Format::Text => indicatif::ProgressBar::new_spinner(),
            Format::Json => indicatif::ProgressBar::hidden(),
        };
        progress.set_message(format!("producing to {}", args.topic));
        let mut pending: BTreeMap<i32, Vec<NewRecord>> = BTreeMap::new();
        let (mut produced, mut round_robin) = (0usize, 0i32);
        for line in std::io::stdin().lock().lines() {
            let record = record_of(line.context("reading stdin")?, args.key_separator.as_deref());
            let partition = match (args.partition, &record.key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, partitions),
                (None, None) => {
                    round_robin = (round_robin + 1) % partitions;
                    round_robin
                }
            };
            pending.entry(partition).or_default().push(record);
            if pending.values().map(Vec::len).sum::<usize>() >= PRODUCE_BATCH {
                produced += flush(&producer, &args.topic, &mut pending).await?;
                progress.set_message(format!("produced {produced} records to {}", args.topic));
                progress.tick();
            }
        }
        produced += flush(&producer, &args.topic, &mut pending).await?;
        progress.finish_and_clear();
        let out = &mut std::io::stdout().lock();
        emit(out, global, json!({"topic": args.topic, "produced": produced}), |_| {
            writeln!(std::io::stderr(), "produced {produced} records to {}", args.topic)
        })?;
        Ok(())
    })
}

/// A stdin line as a record: split at the first `separator` into key and value, if given.
fn record_of(line: String, separator: Option<&str>) -> NewRecord {
    match separator.and_then(|sep| line.split_once(sep)) {
        Some((k, v)) => NewRecord::keyed(Bytes::from(k.to_string()), Bytes::from(v.to_string())),
        None => NewRecord::value(Bytes::from(line)),
    }
}

/// Sends every partition's pending batch at once (pipelined per leader).
async fn flush(
    producer: &Producer<Transport>,
    topic: &str,
    pending: &mut BTreeMap<i32, Vec<NewRecord>>,
) -> anyhow::Result<usize> {
    let sends = pending.iter().map(|(partition, records)| producer.send(topic, *partition, records));
    try_join_all(sends).await?;
    let sent = pending.values().map(Vec::len).sum();
    pending.clear();
    Ok(sent)
}

pub fn consume(global: &Global, args: ConsumeArgs) -> anyhow::Result<()> {
    run(async {
        let client = connect(global)?;
        let indexes = client.topic(&args.topic).await?.indexes();
        let bounds = bounds(&client, &args.topic, &indexes).await?;
        let mut positions = BTreeMap::new();
        for (p, (start, end)) in &bounds {
            let position = match args.offset.as_str() {
                "beginning" => *start,
                "end" => *end,
                n => n
                    .parse::<i64>()
                    .map_err(|_| anyhow!("--offset must be beginning, end or a number, not '{n}'"))?
                    .max(*start),
            };
            positions.insert(*p, position);
        }
        let mut consumer = Consumer::new(client, &args.topic, positions, FetchOptions::default());
        let limit = args.count.unwrap_or(usize::MAX);
        let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
        let (started, mut printed) = (Instant::now(), 0usize);
        // Bounded: ends at the end of the log (or --count); with --follow, at --count, an interrupt or CONSUME_LIMIT.
        while printed < limit && started.elapsed() < CONSUME_LIMIT {
            let caught_up = bounds.iter().all(|(p, (_, end))| consumer.positions()[p] >= *end);
            if caught_up && !args.follow {
                break;
            }
            for record in consumer.poll().await?.iter().take(limit - printed) {
                print_record(out, global, &args, record)?;
                printed += 1;
            }
            out.flush()?;
        }
        out.flush()?;
        Ok(())
    })
}

fn print_record(out: &mut dyn Write, global: &Global, args: &ConsumeArgs, r: &ConsumedRecord) -> std::io::Result<()> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    match global.format {
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> =
                r.headers.iter().map(|(k, v)| (k.clone(), json!(text(v)))).collect();
            let line = json!({"topic": args.topic, "partition": r.partition, "offset": r.offset,
                "timestamp": r.timestamp, "key": text(&r.key), "value": text(&r.value), "headers": headers});
            writeln!(out, "{line}")
        }
        Format::Text => match &args.key_separator {
            Some(sep) => {
                writeln!(out, "{}{sep}{}", text(&r.key).unwrap_or_default(), text(&r.value).unwrap_or_default())
            }
            None => writeln!(out, "{}", text(&r.value).unwrap_or_default()),
        },
    }
}

pub fn group(global: &Global, command: GroupCommand) -> anyhow::Result<()> {
    run(async {
        let client = connect(global)?;
        let out = &mut std::io::stdout().lock();
        match command {
            GroupCommand::List => {
                let rows: Vec<Vec<String>> = client
                    .list_groups()
                    .await?
                    .into_iter()
                    .map(|g| vec![g.group_id, g.state, g.protocol_type])
                    .collect();
                let data = json!(rows
                    .iter()
                    .map(|r| json!({"group": r[0], "state": r[1], "protocol_type": r[2]}))
                    .collect::<Vec<_>>());
                emit(out, global, data, |out| table(out, &["GROUP", "STATE", "PROTOCOL-TYPE"], &rows))?;
            }
            GroupCommand::Describe { group } => describe_group(&client, global, out, &group).await?,
            GroupCommand::ResetOffsets { group, topic, to_earliest, to_latest, to_offset } => {
                let target: Box<dyn Fn((i64, i64)) -> i64> = match (to_earliest, to_latest, to_offset) {
                    (true, _, _) => Box::new(|(start, _)| start),
                    (_, true, _) => Box::new(|(_, end)| end),
                    (_, _, Some(offset)) => Box::new(move |_| offset),
                    _ => bail!("say where to: --to-earliest, --to-latest or --to-offset N"),
                };
                reset_offsets(&client, global, out, &group, &topic, target).await?;
            }
        }
        Ok(())
    })
}

/// The mechanisms `--mechanism` names: one, or both when absent.
fn scram_mechanisms(named: Option<&str>) -> anyhow::Result<Vec<ScramMechanism>> {
    match named {
        None => Ok(ScramMechanism::ALL.to_vec()),
        Some(name) => ScramMechanism::from_name(name)
            .map(|m| vec![m])
            .ok_or_else(|| anyhow::anyhow!("--mechanism must be SCRAM-SHA-256 or SCRAM-SHA-512, not {name:?}")),
    }
}

pub fn user(global: &Global, command: UserCommand) -> anyhow::Result<()> {
    use tributary_client::ScramChange;
    run(async {
        let client = connect(global)?;
        let out = &mut std::io::stdout().lock();
        match command {
            UserCommand::Create { name, password, password_file, mechanism, iterations } => {
                let password = match (password, password_file) {
                    (Some(password), None) => password,
                    (None, Some(file)) => std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    _ => anyhow::bail!("give --password or --password-file"),
                };
                if password.is_empty() {
                    anyhow::bail!("the password is empty");
                }
                let changes: Vec<ScramChange> = scram_mechanisms(mechanism.as_deref())?
                    .into_iter()
                    .map(|m| {
                        let salt: [u8; 32] = rand::random();
                        let salted = crate::security::scram::salted_password(m, password.as_bytes(), &salt, iterations.max(1));
                        ScramChange::Upsert {
                            user: name.clone(),
                            mechanism: m.code(),
                            iterations: iterations as i32,
                            salt: salt.to_vec(),
                            salted_password: salted,
                        }
                    })
                    .collect();
                client.alter_user_scram_credentials(&changes).await?;
                emit(out, global, json!({"user": name, "created": true}), |out| writeln!(out, "user {name} set"))?;
            }
            UserCommand::List => {
                let users = client.describe_user_scram_credentials(&[]).await?;
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        let mechanisms: Vec<String> = u
                            .mechanisms
                            .iter()
                            .map(|(code, iterations)| {
                                let name = ScramMechanism::from_code(*code).map_or("unknown", |m| m.name());
                                format!("{name}({iterations})")
                            })
                            .collect();
                        vec![u.user.clone(), mechanisms.join(" ")]
                    })
                    .collect();
                let data = json!(rows.iter().map(|r| json!({"user": r[0], "mechanisms": r[1]})).collect::<Vec<_>>());
                emit(out, global, data, |out| table(out, &["USER", "MECHANISMS(ITERATIONS)"], &rows))?;
            }
            UserCommand::Delete { name, mechanism } => {
                let mechanisms = match mechanism.as_deref() {
                    Some(m) => scram_mechanisms(Some(m))?,
                    // Only those it has: deleting one it lacks is an error.
                    None => {
                        let described = client.describe_user_scram_credentials(&[&name]).await?;
                        described.iter().flat_map(|u| &u.mechanisms).filter_map(|(c, _)| ScramMechanism::from_code(*c)).collect()
                    }
                };
                let changes: Vec<ScramChange> =
                    mechanisms.into_iter().map(|m| ScramChange::Delete { user: name.clone(), mechanism: m.code() }).collect();
                client.alter_user_scram_credentials(&changes).await?;
                emit(out, global, json!({"user": name, "deleted": true}), |out| writeln!(out, "user {name} deleted"))?;
            }
        }
        Ok(())
    })
}

pub fn transactions(global: &Global, command: TransactionsCommand) -> anyhow::Result<()> {
    run(async {
        let client = connect(global)?;
        let out = &mut std::io::stdout().lock();
        match command {
            TransactionsCommand::List => {
                let rows: Vec<Vec<String>> = client
                    .list_transactions()
                    .await?
                    .into_iter()
                    .map(|t| vec![t.transactional_id, t.producer_id.to_string(), t.state, t.coordinator.to_string()])
                    .collect();
                let data = json!(rows
                    .iter()
                    .map(|r| json!({"transactional_id": r[0], "producer_id": r[1], "state": r[2], "coordinator": r[3]}))
                    .collect::<Vec<_>>());
                emit(out, global, data, |out| table(out, &["TRANSACTIONAL-ID", "PRODUCER-ID", "STATE", "COORDINATOR"], &rows))?;
            }
            TransactionsCommand::Describe { transactional_id } => {
                let t = client.describe_transaction(&transactional_id).await?;
                let partitions: Vec<String> = t.partitions.iter().map(|(topic, p)| format!("{topic}-{p}")).collect();
                let data = json!({
                    "transactional_id": t.transactional_id, "coordinator": t.coordinator, "state": t.state,
                    "producer_id": t.producer_id, "producer_epoch": t.producer_epoch, "timeout_ms": t.timeout_ms,
                    "start_time_ms": t.start_time_ms, "partitions": partitions,
                });
                emit(out, global, data, |out| {
                    writeln!(out, "transactional id {}: {} (coordinator {})", t.transactional_id, t.state, t.coordinator)?;
                    writeln!(out, "producer {} epoch {}, timeout {} ms", t.producer_id, t.producer_epoch, t.timeout_ms)?;
                    writeln!(out, "partitions: {}", if partitions.is_empty() { "-".to_string() } else { partitions.join(" ") })
                })?;
            }
            TransactionsCommand::Producers { topic, partition } => {
                let producers = client.describe_producers(&topic, partition).await?;
                let rows: Vec<Vec<String>> = producers
                    .iter()
                    .map(|p| {
                        vec![p.producer_id.to_string(), p.producer_epoch.to_string(), p.last_sequence.to_string(),
                            p.coordinator_epoch.to_string(), p.current_txn_start_offset.to_string()]
                    })
                    .collect();
                let data = json!(producers
                    .iter()
                    .map(|p| json!({"producer_id": p.producer_id, "producer_epoch": p.producer_epoch,
                        "last_sequence": p.last_sequence, "coordinator_epoch": p.coordinator_epoch,
                        "current_txn_start_offset": p.current_txn_start_offset}))
                    .collect::<Vec<_>>());
                emit(out, global, data, |out| {
                    table(out, &["PRODUCER-ID", "EPOCH", "LAST-SEQUENCE", "COORDINATOR-EPOCH", "TXN-START-OFFSET"], &rows)
                })?;
            }
            TransactionsCommand::FindHanging { topic } => {
                let hanging = client.find_hanging_transactions(&topic).await?;
                let rows: Vec<Vec<String>> = hanging
                    .iter()
                    .map(|h| {
                        vec![format!("{}-{}", h.topic, h.partition), h.producer_id.to_string(),
                            h.producer_epoch.to_string(), h.start_offset.to_string()]
                    })
                    .collect();
                let data = json!(hanging
                    .iter()
                    .map(|h| json!({"topic": h.topic, "partition": h.partition, "producer_id": h.producer_id,
                        "producer_epoch": h.producer_epoch, "start_offset": h.start_offset}))
                    .collect::<Vec<_>>());
                emit(out, global, data, |out| table(out, &["PARTITION", "PRODUCER-ID", "EPOCH", "START-OFFSET"], &rows))?;
            }
            TransactionsCommand::Abort { topic, partition, producer_id } => {
                let producers = client.describe_producers(&topic, partition).await?;
                let Some(producer) = producers.iter().find(|p| p.producer_id == producer_id) else {
                    bail!("{topic}-{partition} knows no producer {producer_id}");
                };
                if producer.current_txn_start_offset < 0 {
                    bail!("producer {producer_id} has no open transaction on {topic}-{partition}");
                }
                client.abort_transaction(&topic, partition, producer).await?;
                let start = producer.current_txn_start_offset;
                emit(out, global, json!({"topic": topic, "partition": partition, "producer_id": producer_id, "aborted_from": start}), |out| {
                    writeln!(out, "aborted producer {producer_id}'s transaction on {topic}-{partition} (open since offset {start})")
                })?;
            }
        }
        Ok(())
    })
}

async fn describe_group(client: &Client<Transport>, global: &Global, out: &mut dyn Write, group: &str) -> anyhow::Result<()> {
    let g = client.describe_group(group).await?;
    let committed = client.fetch_offsets(group, None).await?;
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for o in &committed {
        by_topic.entry(&o.topic).or_default().push(o.partition);
    }
    let mut ends = BTreeMap::new();
    for (topic, partitions) in &by_topic {
        let latest = client.list_offsets(topic, partitions, OffsetSpec::Latest).await?;
        ends.extend(latest.into_iter().map(|(p, l)| ((topic.to_string(), p), l.offset)));
    }
    let rows: Vec<(String, i32, i64, i64, i64)> = committed
        .iter()
        .map(|o| {
            let end = ends.get(&(o.topic.clone(), o.partition)).copied().unwrap_or(-1);
            let lag = if o.offset >= 0 { end - o.offset } else { -1 };
            (o.topic.clone(), o.partition, o.offset, end, lag)
        })
        .collect();
    let data = json!({
        "group": group, "state": g.state, "members": g.members.len(),
        "offsets": rows.iter().map(|(t, p, c, e, l)| json!({"topic": t, "partition": p, "committed": c, "high_watermark": e, "lag": l})).collect::<Vec<_>>(),
    });
    emit(out, global, data, |out| {
        writeln!(out, "group {group}: {} with {} members", g.state, g.members.len())?;
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|(t, p, c, e, l)| vec![t.clone(), p.to_string(), c.to_string(), e.to_string(), l.to_string()])
            .collect();
        table(out, &["TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"], &cells)
    })?;
    Ok(())
}

async fn reset_offsets(
    client: &Client<Transport>,
    global: &Global,
    out: &mut dyn Write,
    group: &str,
    topic: &str,
    target: impl Fn((i64, i64)) -> i64,
) -> anyhow::Result<()> {
    let indexes = client.topic(topic).await?.indexes();
    let bounds = bounds(client, topic, &indexes).await?;
    let new: Vec<(i32, i64)> = bounds.iter().map(|(p, b)| (*p, target(*b).clamp(b.0, b.1))).collect();
    let offsets: Vec<PartitionOffset> = new.iter().map(|(p, o)| PartitionOffset::new(topic, *p, *o)).collect();
    // A standalone commit, which the broker only allows while the group is empty.
    client
        .commit_offsets(group, &offsets)
        .await
        .with_context(|| format!("resetting {group} on {topic} (is the group still running?)"))?;
    let data = json!({"group": group, "topic": topic,
        "offsets": new.iter().map(|(p, o)| json!({"partition": p, "offset": o})).collect::<Vec<_>>()});
    emit(out, global, data, |out| {
        let rows: Vec<Vec<String>> =
            new.iter().map(|(p, o)| vec![topic.to_string(), p.to_string(), o.to_string()]).collect();
        table(out, &["TOPIC", "PARTITION", "NEW-OFFSET"], &rows)
    })?;
    Ok(())
}

pub fn cluster_status(global: &Global) -> anyhow::Result<()> {
    run(async {
        let client = connect(global)?;
        let md = client.metadata(None).await?;
        let partitions: usize = md.topics.iter().map(|t| t.partitions.len()).sum();
        let cluster = md.cluster_id.clone().unwrap_or_default();
        let controller = md.controller.unwrap_or(-1);
        let data = json!({"cluster_id": cluster, "controller": controller,
            "brokers": md.brokers.iter().map(|b| json!({"id": b.id, "address": b.address.to_string()})).collect::<Vec<_>>(),
            "topics": md.topics.len(), "partitions": partitions});
        let out = &mut std::io::stdout().lock();
        emit(out, global, data, |out| {
            writeln!(
                out,
                "cluster {cluster}: {} topics, {partitions} partitions, controller {controller}",
                md.topics.len()
            )?;
            let rows: Vec<Vec<String>> =
                md.brokers.iter().map(|b| vec![b.id.to_string(), b.address.to_string()]).collect();
            table(out, &["BROKER", "ADDRESS"], &rows)
        })?;
        Ok(())
    })
}
