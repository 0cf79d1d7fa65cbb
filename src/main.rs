//! `tributary`: a Kafka-compatible event streaming broker.

mod cli;
mod cluster;
mod config;
mod connection;
mod disk;
mod http;
// The in-process connector; used by its test now, by embedded Connect and Streams later.
#[allow(dead_code)]
mod in_process;
mod kafka;
mod log_throttle;
mod metrics;
mod node;
mod security;
mod server;
mod txn;
mod simulate;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::BrokerConfig;
use crate::server::Server;

#[derive(Parser)]
#[command(name = "tributary", version, about = "A Kafka-compatible event streaming broker")]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a broker (defaults: 127.0.0.1:9092, data in ./data).
    Start {
        /// TOML config file; keys it omits keep the defaults of config/tributary.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overriding the config (e.g. 127.0.0.1:9092).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Data directory, overriding the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Metrics endpoint address, overriding the config ("" disables it).
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Print the default configuration, to start a config file from.
    DefaultConfig,
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(cli::TopicCommand),
    /// List and describe consumer groups.
    #[command(subcommand)]
    Group(cli::GroupCommand),
    /// List, describe and abort transactions.
    #[command(subcommand)]
    Transactions(cli::TransactionsCommand),
    /// SASL users and their SCRAM credentials.
    #[command(subcommand)]
    User(cli::UserCommand),
    /// Produce stdin lines as records.
    Produce(cli::ProduceArgs),
    /// Print records to stdout.
    Consume(cli::ConsumeArgs),
    /// Run a chaos scenario against a simulated cluster (see simulations/README.md).
    Simulate(simulate::SimulateArgs),
    /// Show brokers, topics and partitions.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Brokers, controller, topic and partition counts.
    Status,
}

fn main() -> anyhow::Result<()> {
    let parsed = Cli::parse();
    // A simulation's brokers log every fault they live through; quiet unless asked.
    let default_filter = if matches!(parsed.command, Command::Simulate(_)) { "off" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("TRIBUTARY_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with_writer(std::io::stderr)
        .init();
    let global = parsed.global;
    match parsed.command {
        Command::Topic(command) => cli::topic(&global, command),
        Command::Group(command) => cli::group(&global, command),
        Command::Transactions(command) => cli::transactions(&global, command),
        Command::User(command) => cli::user(&global, command),
        Command::Produce(args) => cli::produce(&global, args),
        Command::Consume(args) => cli::consume(&global, args),
        Command::Cluster { command: ClusterCommand::Status } => cli::cluster_status(&global),
        Command::Simulate(args) => simulate::command(args),
        Command::DefaultConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Start { config, listen, data_dir, metrics_listen } => {
            let text = match &config {
                Some(path) => {
                    Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
                }
                None => None,
            };
            let mut config = BrokerConfig::load(text.as_deref())?;
            if let Some(listen) = listen {
                if !config.broker.listeners.is_empty() {
                    anyhow::bail!("--listen sets the one PLAINTEXT listener; this config names broker.listeners");
                }
                config.broker.listen = listen;
            }
            if let Some(dir) = data_dir {
                config.broker.data_dir = dir;
            }
            if let Some(addr) = metrics_listen {
                config.metrics.listen = addr;
            }
            actix::System::new().block_on(run(config))
        }
    }
}

async fn run(config: BrokerConfig) -> anyhow::Result<()> {
    let metrics = std::sync::Arc::new(metrics::Metrics::new());
    let open_files = kafka::capacity::raise_fd_limit();
    let ctx = node::start(config, metrics.clone()).await?;
    tracing::info!(open_files, partitions = ctx.partition_cap, "partition replicas this broker takes");
    let (stop_http, http_stop) = tokio::sync::watch::channel(false);
    // One TLS setup (and one watch on its files) for the listeners and the metrics endpoint.
    let tls = match security::tls::needed(&ctx.config, &ctx.listeners) {
        true => Some(std::sync::Arc::new(security::tls::Tls::load(&ctx.config.security).context("TLS")?)),
        false => None,
    };
    let access = http_access(&ctx.config, &tls).context("the metrics endpoint's [metrics] bearer_token_file")?;
    let http = ctx.config.metrics.listen.parse::<std::net::SocketAddr>().ok().map(|addr| {
        let routes = metrics::routes(http::Router::new(), metrics, ctx.broker.clone(), ctx.cluster.clone());
        let access = access.clone();
        actix::spawn(async move {
            if let Err(e) = http::serve(addr, routes, http::Limits::default(), access, http_stop).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        })
    });
    let cluster = ctx.cluster.clone();
    let data_dir = ctx.config.broker.data_dir.clone();
    let server = Server::bind(ctx, tls).await?;
    for (listener, addr) in server.local_addrs()? {
        tracing::info!(listener, %addr, data_dir = %data_dir.display(), "tributary listening");
    }
    server.run(shutdown_signal()).await;
    let _ = stop_http.send(true);
    if let Some(http) = http {
        let _ = http.await;
    }
    cluster.shutdown().await;
    actix::System::current().stop();
    tracing::info!("stopped");
    Ok(())
}

/// The metrics endpoint's TLS and token, from `[metrics]`.
fn http_access(
    config: &BrokerConfig,
    tls: &Option<std::sync::Arc<security::tls::Tls>>,
) -> anyhow::Result<http::Access> {
    let tls = tls.clone().filter(|_| config.metrics.tls);
    let token = match config.metrics.bearer_token_file.as_os_str().is_empty() {
        true => None,
        false => Some(http::read_token(&config.metrics.bearer_token_file)?.into()),
    };
    Ok(http::Access { tls, token })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
