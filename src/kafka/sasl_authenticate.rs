//! SaslAuthenticate: one message of the exchange SaslHandshake started. A
//! failure is answered after `security.failed_authentication_delay_ms` and
//! the connection is then closed, as Kafka does. A session that succeeds is
//! its user's (`User:<name>`) until `security.max_reauth_ms`, when the client
//! must authenticate again (KIP-368) as the same user.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse};
use kafka_protocol::ResponseError;

use super::session::{Auth, Refusal};
use super::{message, Call, RequestContext, RequestError, Session, Started};
use crate::security::sasl::{Exchange, Step};
use crate::security::Principal;

pub async fn handle(call: &Call, request: SaslAuthenticateRequest) -> SaslAuthenticateResponse {
    match advance(&call.ctx, &call.session, request.auth_bytes).await {
        Outcome::NotExchanging => SaslAuthenticateResponse::default()
            .with_error_code(ResponseError::IllegalSaslState.code())
            .with_error_message(message("SaslAuthenticate without a SaslHandshake before it")),
        Outcome::Continue(reply) => SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply)),
        Outcome::Done { reply, lifetime } => {
            let answer = SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply));
            match call.version >= 1 {
                true => answer.with_session_lifetime_ms(lifetime.map_or(0, |l| l.as_millis() as i64)),
                false => answer,
            }
        }
        Outcome::Failed { mechanism } => SaslAuthenticateResponse::default()
            .with_error_code(ResponseError::SaslAuthenticationFailed.code())
            .with_error_message(message(format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}"
            ))),
    }
}

/// A SASL token framed on its own, after a SaslHandshake v0: the token is
/// the whole frame, and so is the answer (a length and the server's token).
/// `None` when the session is not in such an exchange. A failure closes the
/// connection with no answer, as Kafka does for v0.
pub fn raw_token(ctx: &Arc<RequestContext>, session: &Arc<Session>, frame: &Bytes) -> Option<Started> {
    let raw = session.with_auth(|auth| matches!(auth, Auth::Exchanging(Some(e)) if e.raw));
    if !raw {
        return None;
    }
    let (ctx, session, token) = (ctx.clone(), session.clone(), frame.clone());
    Some(Started::Serial(Box::pin(async move {
        let reply = match advance(&ctx, &session, token).await {
            Outcome::Continue(reply) | Outcome::Done { reply, .. } => reply,
            Outcome::NotExchanging | Outcome::Failed { .. } => {
                return Err(RequestError::Refused { api: ApiKey::SaslAuthenticate, why: Refusal::Failed })
            }
        };
        let mut framed = BytesMut::with_capacity(4 + reply.len());
        framed.put_u32(reply.len() as u32);
        framed.put_slice(&reply);
        let charge = ctx.response_memory.charge(framed.len());
        Ok(Some(charge.attach(framed.freeze())))
    })))
}

/// Where a client message leaves the session's exchange.
enum Outcome {
    NotExchanging,
    Continue(Vec<u8>),
    Done { reply: Vec<u8>, lifetime: Option<Duration> },
    Failed { mechanism: String },
}

/// Takes one client message of the session's exchange and moves the session on.
async fn advance(ctx: &RequestContext, session: &Session, input: Bytes) -> Outcome {
    let taken = session.with_auth(|auth| match auth {
        Auth::Exchanging(exchange) => exchange.take().map(|e| (e, None)),
        Auth::Reauthenticating { exchange, expires } => exchange.take().map(|e| (e, Some(*expires))),
        // SaslAuthenticate with no exchange begun: Kafka closes the connection after the answer.
        Auth::AwaitingHandshake => {
            *auth = Auth::Failed;
            None
        }
        _ => None,
    });
    let Some((exchange, reauthenticating)) = taken else { return Outcome::NotExchanging };
    let mechanism = exchange.mechanism.clone();
    let (exchange, step) = step_off_thread(ctx, exchange, input).await;
    match step {
        Step::Continue(reply) => {
            session.with_auth(|auth| {
                *auth = match reauthenticating {
                    Some(expires) => Auth::Reauthenticating { exchange, expires },
                    None => Auth::Exchanging(exchange),
                }
            });
            Outcome::Continue(reply)
        }
        Step::Done { user, reply, expires } => {
            let security = &ctx.config.security;
            let reauth = (security.max_reauth_ms > 0).then(|| Duration::from_millis(security.max_reauth_ms));
            // A token's session ends with it (KIP-368), sooner if max_reauth_ms says so.
            let token = expires.map(|at| at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO));
            // Within the clock skew a token may be past its exp: nothing is left of its session.
            if token.is_some_and(|left| left < Duration::from_secs(1)) {
                return failed(ctx, session, mechanism, "the token expires within a second").await;
            }
            let lifetime = [reauth, token].into_iter().flatten().min();
            let principal = Principal::user(&user);
            if !session.authenticated(principal.clone(), &mechanism, lifetime) {
                return failed(ctx, session, mechanism, "re-authenticated as another principal").await;
            }
            tracing::debug!(peer = %session.peer, %principal, %mechanism, "authenticated");
            Outcome::Done { reply, lifetime }
        }
        Step::Failed(why) => failed(ctx, session, mechanism, &why).await,
    }
}

/// Runs the step on the blocking pool: PLAIN's check is a PBKDF2 of up to
/// 16384 rounds, which would stall the other connections of this thread.
async fn step_off_thread(
    ctx: &RequestContext,
    mut exchange: Box<Exchange>,
    input: Bytes,
) -> (Option<Box<Exchange>>, Step) {
    let Ok(_turn) = ctx.sasl.steps.clone().acquire_owned().await else {
        return (None, Step::Failed("the broker is shutting down".into()));
    };
    let stepped = tokio::task::spawn_blocking(move || {
        let step = exchange.step(&input);
        (exchange, step)
    })
    .await;
    match stepped {
        Ok((exchange, step)) => (Some(exchange), step),
        Err(e) => (None, Step::Failed(format!("the exchange failed: {e}"))),
    }
}

/// Fails the session and waits the configured delay before it is answered.
async fn failed(ctx: &RequestContext, session: &Session, mechanism: String, why: &str) -> Outcome {
    session.with_auth(|auth| *auth = Auth::Failed);
    ctx.metrics.authentication_failures.inc();
    let (peer, listener) = (session.peer, session.listener);
    static FAILURES: crate::log_throttle::Throttle = crate::log_throttle::Throttle::new();
    if let Some(skipped) = FAILURES.admit() {
        tracing::info!(%peer, listener, %mechanism, reason = why, skipped, "SASL authentication failed; closing connection");
    }
    tokio::time::sleep(Duration::from_millis(ctx.config.security.failed_authentication_delay_ms)).await;
    Outcome::Failed { mechanism }
}

super::registry::api! {
    SaslAuthenticate: SaslAuthenticateRequest => SaslAuthenticateResponse, versions 0..=2, access none,
    |call, request| handle(call, request).await
}
