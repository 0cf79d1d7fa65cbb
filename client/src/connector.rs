//! How the client reaches a broker: a [`Connector`] turns a broker's address
//! into the two halves of a byte stream. TCP is here; a TLS connector wraps
//! [`Tcp::stream`]; the broker's in-process pipe and the simulation's network
//! are other impls. Nothing here needs `Send`: a connector's streams and
//! futures may be bound to one thread (the client runs on a tokio `LocalSet`).

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// A broker's Kafka listener, as bootstrap lists and Metadata names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
}

impl BrokerAddress {
    pub fn new(host: impl Into<String>, port: u16) -> BrokerAddress {
        BrokerAddress { host: host.into(), port }
    }

    /// Parses `host:port,host:port` (an IPv6 host in brackets).
    pub fn parse_list(list: &str) -> Result<Vec<BrokerAddress>> {
        let addresses: Vec<BrokerAddress> =
            list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_>>()?;
        if addresses.is_empty() {
            return Err(Error::BadAddress { input: list.to_string() });
        }
        Ok(addresses)
    }
}

impl std::str::FromStr for BrokerAddress {
    type Err = Error;

    fn from_str(input: &str) -> Result<BrokerAddress> {
        let bad = || Error::BadAddress { input: input.to_string() };
        let (host, port) = input.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = port.parse::<u16>().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(BrokerAddress::new(host, port))
    }
}

impl std::fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

pub type ReadHalf = Box<dyn AsyncRead + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Unpin>;

/// Opens byte streams to brokers. The client calls it once per connection
/// and bounds it by `Config::connect_timeout`.
pub trait Connector {
    fn connect(&self, broker: &BrokerAddress) -> impl Future<Output = io::Result<(ReadHalf, WriteHalf)>>;
}

/// Plain TCP, with Nagle off (requests are whole frames, written at once).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Tcp {
    /// The TCP stream itself, for a connector that wraps it (TLS).
    pub async fn stream(&self, broker: &BrokerAddress) -> io::Result<TcpStream> {
        let stream = TcpStream::connect((broker.host.as_str(), broker.port)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Connector for Tcp {
    async fn connect(&self, broker: &BrokerAddress) -> io::Result<(ReadHalf, WriteHalf)> {
        let (read, write) = self.stream(broker).await?.into_split();
        Ok((Box::new(read), Box::new(write)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let list = BrokerAddress::parse_list("127.0.0.1:9092, [::1]:9093,").unwrap();
        assert_eq!(list, vec![BrokerAddress::new("127.0.0.1", 9092), BrokerAddress::new("::1", 9093)]);
        assert_eq!(list[1].to_string(), "[::1]:9093");
        for bad in ["", "host", "host:", ":9092", "host:99999", ","] {
            assert!(BrokerAddress::parse_list(bad).is_err(), "{bad:?} parsed");
        }
    }
}
