//! DescribeCluster: the brokers (this one) and the controller (this one).

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::{message, str_bytes, RequestContext};

const ENDPOINT_BROKERS: i8 = 1;

pub fn handle(call: &super::Call, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let (ctx, version): (&RequestContext, i16) = (&call.ctx, call.version);
    if version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return DescribeClusterResponse::default()
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(message("only broker endpoints (1) are described"))
            .with_endpoint_type(req.endpoint_type);
    }
    let brokers = ctx
        .cluster
        .metadata()
        .live_brokers()
        .filter_map(|b| {
            let endpoint = super::endpoint_for(b, &call.session)?;
            Some(
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.node_id as i32))
                    .with_host(str_bytes(endpoint.host.clone()))
                    .with_port(endpoint.port)
                    .with_rack(b.rack.clone().map(str_bytes)),
            )
        })
        .collect();
    let controller = ctx.cluster.controller_id().map_or(BrokerId(-1), |id| BrokerId(id as i32));
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(ctx.config.broker.cluster_id.clone()))
        .with_controller_id(controller)
        .with_brokers(brokers)
}

super::registry::api! {
    DescribeCluster: DescribeClusterRequest => DescribeClusterResponse, versions 0..=1, access Cluster Describe,
    |call, request| handle(call, request)
}
