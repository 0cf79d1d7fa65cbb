//! AlterUserScramCredentials: sets and removes users' SCRAM credentials
//! through the controller, so every broker (and every restart) has them. The
//! client sends the salt and the salted password, never the password; the
//! broker keeps only StoredKey and ServerKey, derived from it (RFC 5802).
//! One answer per user, its first error if any, as Kafka answers.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse};
use kafka_protocol::ResponseError;

use super::{message, str_bytes, RequestContext};
use crate::cluster::metadata::{Command, ScramMechanism};
use crate::security::scram;

/// Credential changes one request may carry.
const MAX_CHANGES: usize = 1000;

type Refusal = (i16, String);

pub async fn handle(
    ctx: &RequestContext,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    // Each user's changes, in request order; a user's first refusal is its answer.
    let mut changes: BTreeMap<String, Result<Vec<Command>, Refusal>> = BTreeMap::new();
    let mut pairs = BTreeSet::new();
    let total = request.deletions.len() + request.upsertions.len();
    let deletions = request.deletions.into_iter().map(|d| (d.name.to_string(), d.mechanism, None));
    let upsertions = request.upsertions.into_iter().map(|u| (u.name.to_string(), u.mechanism, Some(u)));
    for (user, code, upsertion) in deletions.chain(upsertions) {
        let command = if total > MAX_CHANGES {
            Err((ResponseError::PolicyViolation.code(), format!("at most {MAX_CHANGES} credential changes a request")))
        } else {
            check(&user, code, &mut pairs).and_then(|mechanism| match upsertion {
                None => Ok(Command::DeleteScramCredential { user: user.clone(), mechanism }),
                Some(u) => upsert(&user, mechanism, u.iterations, &u.salt, &u.salted_password),
            })
        };
        let entry = changes.entry(user).or_insert_with(|| Ok(Vec::new()));
        match (entry.as_mut(), command) {
            (Ok(commands), Ok(command)) => commands.push(command),
            (Ok(_), Err(refusal)) => *entry = Err(refusal),
            (Err(_), _) => {}
        }
    }
    let mut results = Vec::with_capacity(changes.len());
    for (user, commands) in changes {
        // Every change of a user is checked against the current credentials before any is written.
        let outcome = match commands.and_then(|commands| applicable(ctx, &user, commands)) {
            Ok(commands) => commit_all(ctx, commands).await,
            Err(refusal) => Err(refusal),
        };
        let (code, why) = outcome.err().unwrap_or((0, String::new()));
        if code == 0 {
            tracing::info!(%user, "SCRAM credentials altered");
        }
        results.push(
            AlterUserScramCredentialsResult::default()
                .with_user(str_bytes(user))
                .with_error_code(code)
                .with_error_message((code != 0).then(|| message(why)).flatten()),
        );
    }
    AlterUserScramCredentialsResponse::default().with_results(results)
}

/// Users the metadata holds at most, and the longest name.
const MAX_USERS: usize = 100_000;
const MAX_USER_NAME_BYTES: usize = 256;

/// `commands`, if each applies to the current credentials: a deletion names
/// one that exists, and a new user fits under `MAX_USERS`.
fn applicable(ctx: &RequestContext, user: &str, commands: Vec<Command>) -> Result<Vec<Command>, Refusal> {
    let metadata = ctx.cluster.metadata();
    let existing = metadata.security.scram.get(user);
    for command in &commands {
        match command {
            Command::DeleteScramCredential { mechanism, .. }
                if !existing.is_some_and(|c| c.contains_key(mechanism)) =>
            {
                return Err((
                    ResponseError::ResourceNotFound.code(),
                    format!("user {user:?} has no {} credential to delete", mechanism.name()),
                ));
            }
            Command::UpsertScramCredential { .. }
                if existing.is_none() && metadata.security.scram.len() >= MAX_USERS =>
            {
                return Err((ResponseError::PolicyViolation.code(), format!("at most {MAX_USERS} users")));
            }
            _ => {}
        }
    }
    Ok(commands)
}

/// A change's user and mechanism, checked: named, known, and not changed twice.
fn check(user: &str, code: i8, pairs: &mut BTreeSet<(String, i8)>) -> Result<ScramMechanism, Refusal> {
    if user.is_empty() || user.len() > MAX_USER_NAME_BYTES {
        let why = format!("a user name is 1 to {MAX_USER_NAME_BYTES} bytes");
        return Err((ResponseError::UnacceptableCredential.code(), why));
    }
    let mechanism = ScramMechanism::from_code(code)
        .ok_or((ResponseError::UnsupportedSaslMechanism.code(), format!("unknown SCRAM mechanism {code}")))?;
    if !pairs.insert((user.to_string(), code)) {
        return Err((
            ResponseError::DuplicateResource.code(),
            format!("the {} credential of {user:?} is changed twice in one request", mechanism.name()),
        ));
    }
    Ok(mechanism)
}

fn upsert(
    user: &str,
    mechanism: ScramMechanism,
    iterations: i32,
    salt: &[u8],
    salted: &[u8],
) -> Result<Command, Refusal> {
    let unacceptable = |why: String| (ResponseError::UnacceptableCredential.code(), why);
    let iterations = u32::try_from(iterations).unwrap_or(0);
    if !(scram::MIN_ITERATIONS..=scram::MAX_ITERATIONS).contains(&iterations) {
        return Err(unacceptable(format!(
            "{iterations} iterations; {} takes {} to {}",
            mechanism.name(),
            scram::MIN_ITERATIONS,
            scram::MAX_ITERATIONS
        )));
    }
    if salt.is_empty() || salt.len() > scram::MAX_SALT_BYTES {
        return Err(unacceptable(format!("a salt of {} bytes (1 to {})", salt.len(), scram::MAX_SALT_BYTES)));
    }
    let expected = scram::key_len(mechanism);
    if salted.len() != expected {
        return Err(unacceptable(format!(
            "a {} salted password is {expected} bytes, not {}",
            mechanism.name(),
            salted.len()
        )));
    }
    let credential = scram::credential(mechanism, salt, salted, iterations);
    Ok(Command::UpsertScramCredential { user: user.to_string(), mechanism, credential })
}

async fn commit_all(ctx: &RequestContext, commands: Vec<Command>) -> Result<(), Refusal> {
    for command in commands {
        ctx.cluster.commit(command).await?;
    }
    Ok(())
}

super::registry::api! {
    AlterUserScramCredentials: AlterUserScramCredentialsRequest => AlterUserScramCredentialsResponse,
    versions 0..=0, access Cluster Alter,
    |call, request| handle(&call.ctx, request).await
}
