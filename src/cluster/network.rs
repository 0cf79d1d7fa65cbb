//! openraft's network, over the libp2p transport: each Raft RPC is one
//! request-response exchange with the target broker.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode};

use super::metadata::NodeId;
use super::raft::TypeConfig;
use super::transport::{Request, Response, Transport};

#[derive(Clone)]
pub struct RaftNetworkOverTransport {
    pub transport: Transport,
}

pub struct PeerClient {
    target: NodeId,
    transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for RaftNetworkOverTransport {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _: &BasicNode) -> PeerClient {
        PeerClient { target, transport: self.transport.clone() }
    }
}

fn unreachable<E: std::error::Error>(message: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&AnyError::error(message)))
}

impl PeerClient {
    async fn call(&self, request: Request, option: &RPCOption) -> Result<Response, String> {
        let timeout = option.hard_ttl().max(Duration::from_millis(100));
        self.transport.request(self.target, request, timeout).await
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::AppendEntries(rpc), &option).await {
            Ok(Response::AppendEntries(Ok(answer))) => Ok(answer),
            Ok(Response::AppendEntries(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(unreachable("mismatched answer to AppendEntries".into())),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(Request::InstallSnapshot(rpc), &option).await {
            Ok(Response::InstallSnapshot(Ok(answer))) => Ok(answer),
            Ok(Response::InstallSnapshot(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(unreachable("mismatched answer to InstallSnapshot".into())),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), &option).await {
            Ok(Response::Vote(Ok(answer))) => Ok(answer),
            Ok(Response::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(unreachable("mismatched answer to Vote".into())),
            Err(e) => Err(unreachable(e)),
        }
    }
}
