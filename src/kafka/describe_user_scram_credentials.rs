//! DescribeUserScramCredentials: which users have SCRAM credentials, with
//! their mechanisms and iterations (never the keys), from the cluster metadata.

use std::collections::BTreeSet;

use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse};
use kafka_protocol::ResponseError;

use super::{message, str_bytes, RequestContext};

pub fn handle(
    ctx: &RequestContext,
    request: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    let metadata = ctx.cluster.metadata();
    let scram = &metadata.security.scram;
    let requested: Vec<String> = match request.users {
        Some(users) if !users.is_empty() => users.into_iter().map(|u| u.name.to_string()).collect(),
        _ => scram.keys().cloned().collect(),
    };
    let mut seen = BTreeSet::new();
    let duplicated: BTreeSet<&String> = requested.iter().filter(|u| !seen.insert(*u)).collect();
    let mut answered = BTreeSet::new();
    let results = requested
        .iter()
        .filter(|user| answered.insert(*user))
        .map(|user| {
            let result = DescribeUserScramCredentialsResult::default().with_user(str_bytes(user.clone()));
            if duplicated.contains(user) {
                return result
                    .with_error_code(ResponseError::DuplicateResource.code())
                    .with_error_message(message(format!("user {user:?} is asked for more than once")));
            }
            match scram.get(user) {
                Some(credentials) => result.with_credential_infos(
                    credentials
                        .iter()
                        .map(|(mechanism, c)| {
                            CredentialInfo::default()
                                .with_mechanism(mechanism.code())
                                .with_iterations(c.iterations as i32)
                        })
                        .collect(),
                ),
                None => result
                    .with_error_code(ResponseError::ResourceNotFound.code())
                    .with_error_message(message(format!("user {user:?} has no SCRAM credentials"))),
            }
        })
        .collect();
    DescribeUserScramCredentialsResponse::default().with_results(results)
}

super::registry::api! {
    DescribeUserScramCredentials: DescribeUserScramCredentialsRequest => DescribeUserScramCredentialsResponse,
    versions 0..=0, access Cluster Describe,
    |call, request| handle(&call.ctx, request)
}
