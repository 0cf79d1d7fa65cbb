//! Real broker processes for the integration tests: `target/release/tributary`
//! (or `$TRIBUTARY_BIN`), one alone or three forming a cluster on
//! 127.0.0.1-3, each in a temporary directory and killed when dropped.

#![allow(dead_code)] // each test file uses part of it

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_client::{ApiKey, BrokerAddress, Client, Config, Retry, Tcp, IMPLEMENTED};

/// How long a broker may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The broker binary; a clear failure if it was not built.
pub fn binary() -> PathBuf {
    let path = match std::env::var_os("TRIBUTARY_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tributary"),
    };
    assert!(
        path.is_file(),
        "broker binary {} is missing: run `cargo build --release` first (or set TRIBUTARY_BIN)",
        path.display()
    );
    path
}

pub fn free_port(host: &str) -> u16 {
    TcpListener::bind((host, 0)).expect("a free port").local_addr().unwrap().port()
}

/// Runs `test` on a current-thread runtime's `LocalSet`, as the client needs.
pub fn local<F: Future>(test: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, test)
}

/// A client of `bootstrap` that retries for up to `within` (leader elections take seconds).
pub fn client(bootstrap: Vec<BrokerAddress>, within: Duration) -> Client<Tcp> {
    client_at(bootstrap, within, Vec::new())
}

/// Versions to speak: the newest both sides have, or the oldest the client implements.
#[derive(Clone, Copy, Debug)]
pub enum Versions {
    Newest,
    Oldest,
}

impl Versions {
    pub fn caps(self) -> Vec<(ApiKey, i16)> {
        match self {
            Versions::Newest => Vec::new(),
            Versions::Oldest => IMPLEMENTED.iter().map(|(api, min, _)| (*api, *min)).collect(),
        }
    }
}

/// As [`client`], speaking at most `max_versions`.
pub fn client_at(bootstrap: Vec<BrokerAddress>, within: Duration, max_versions: Vec<(ApiKey, i16)>) -> Client<Tcp> {
    let mut config = Config::new(bootstrap);
    config.connection.max_versions = max_versions;
    config.retry =
        Retry { attempts: 200, within, backoff: Duration::from_millis(100), max_backoff: Duration::from_millis(500) };
    config.connection.request_timeout = Duration::from_secs(10);
    Client::new(Tcp, config)
}

pub struct Broker {
    pub address: BrokerAddress,
    pub node_id: i32,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    /// A single broker on a free port of 127.0.0.1, with `config` (TOML) overlaid.
    pub fn start(config: &str) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port("127.0.0.1");
        let config_path = dir.path().join("broker.toml");
        std::fs::write(&config_path, config).unwrap();
        let data = dir.path().join("data");
        let args = vec![
            "start".to_string(),
            "--config".to_string(),
            config_path.display().to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--data-dir".to_string(),
            data.display().to_string(),
            "--metrics-listen".to_string(),
            String::new(),
        ];
        let log = dir.path().join("broker.log");
        let mut broker = Broker {
            address: BrokerAddress::new("127.0.0.1", port),
            node_id: 0,
            args,
            log,
            child: None,
            _dir: Some(dir),
        };
        broker.run();
        broker
    }

    /// Starts the process and waits until it accepts connections.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(binary())
            .args(&self.args)
            .env("TRIBUTARY_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the broker starts");
        self.child = Some(child);
        let target: SocketAddr = format!("{}:{}", self.address.host, self.address.port).parse().unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded by START_TIMEOUT.
        while TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("broker exited with {status}; log: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "broker did not listen within {START_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (SIGKILL): no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three brokers on 127.0.0.1, .2 and .3, every one a voter.
pub struct Cluster {
    pub brokers: Vec<Broker>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let hosts: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}")).collect();
        let kafka_ports: Vec<u16> = hosts.iter().map(|h| free_port(h)).collect();
        let cluster_ports: Vec<u16> = hosts.iter().map(|h| free_port(h)).collect();
        let voters: Vec<String> = (0..3).map(|i| format!("\"{}@{}:{}\"", i + 1, hosts[i], cluster_ports[i])).collect();
        let key: String = (0..64).map(|i| char::from(b"0123456789abcdef"[(i * 7 + 3) % 16])).collect();
        let mut brokers = Vec::new();
        for i in 0..3 {
            let config = format!(
                "[broker]\nnode_id = {id}\n[cluster]\nvoters = [{voters}]\nlisten = \"{host}:{cport}\"\nkey = \"{key}\"\nrack = \"rack{id}\"\n",
                id = i + 1,
                voters = voters.join(", "),
                host = hosts[i],
                cport = cluster_ports[i],
            );
            let config_path = dir.path().join(format!("node{}.toml", i + 1));
            std::fs::write(&config_path, config).unwrap();
            let args = vec![
                "start".to_string(),
                "--config".to_string(),
                config_path.display().to_string(),
                "--listen".to_string(),
                format!("{}:{}", hosts[i], kafka_ports[i]),
                "--data-dir".to_string(),
                dir.path().join(format!("data{}", i + 1)).display().to_string(),
                "--metrics-listen".to_string(),
                String::new(),
            ];
            let log = dir.path().join(format!("broker{}.log", i + 1));
            brokers.push(Broker {
                address: BrokerAddress::new(hosts[i].clone(), kafka_ports[i]),
                node_id: i as i32 + 1,
                args,
                log,
                child: None,
                _dir: None,
            });
        }
        brokers.iter_mut().for_each(Broker::run);
        Cluster { brokers, _dir: dir }
    }

    pub fn bootstrap(&self) -> Vec<BrokerAddress> {
        self.brokers.iter().map(|b| b.address.clone()).collect()
    }

    pub fn broker(&mut self, node_id: i32) -> &mut Broker {
        &mut self.brokers[node_id as usize - 1]
    }
}

/// Polls `probe` every 200 ms until it yields `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    // Bounded by `within`.
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
