//! The connector of the coordinators' client: this broker's own address is
//! served in-process (`connection::serve` over a pipe, as every connection
//! is), every other broker over TCP. So a cluster of one never dials itself,
//! and a request to this broker takes the path any client's takes.

use std::io;

use tributary_client::{BrokerAddress, Connector, ReadHalf, Tcp, WriteHalf};

use crate::in_process::InProcess;

pub struct Peers {
    own: BrokerAddress,
    local: InProcess,
}

impl Peers {
    pub fn new(own: BrokerAddress, local: InProcess) -> Peers {
        Peers { own, local }
    }
}

impl Connector for Peers {
    async fn connect(&self, broker: &BrokerAddress) -> io::Result<(ReadHalf, WriteHalf)> {
        if *broker == self.own {
            return self.local.connect(broker).await;
        }
        Tcp.connect(broker).await
    }
}
