//! The connector of the coordinators' client: this broker's own address is
//! served in-process (`connection::serve` over a pipe, as every connection
//! is), every other broker over TCP, or, in the simulation, over its
//! network (the one seam it replaces). So a cluster of one never dials
//! itself, and a request to this broker takes the path any client's takes.

use std::io;
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use tributary_client::{BrokerAddress, Connector, ReadHalf, Tcp, WriteHalf};

use crate::in_process::InProcess;

/// How a broker opens a stream to another broker's Kafka port, when not by TCP.
pub type Dial = Rc<dyn Fn(BrokerAddress) -> LocalBoxFuture<'static, io::Result<(ReadHalf, WriteHalf)>>>;

pub struct Peers {
    own: BrokerAddress,
    local: InProcess,
    /// `None`: TCP.
    remote: Option<Dial>,
}

impl Peers {
    pub fn new(own: BrokerAddress, local: InProcess, remote: Option<Dial>) -> Peers {
        Peers { own, local, remote }
    }
}

impl Connector for Peers {
    async fn connect(&self, broker: &BrokerAddress) -> io::Result<(ReadHalf, WriteHalf)> {
        if *broker == self.own {
            return self.local.connect(broker).await;
        }
        match &self.remote {
            Some(dial) => dial(broker.clone()).await,
            None => Tcp.connect(broker).await,
        }
    }
}
