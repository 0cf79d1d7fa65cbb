//! SaslAuthenticate: one message of the exchange SaslHandshake started. A
//! failure is answered after `security.failed_authentication_delay_ms` and
//! the connection is then closed, as Kafka does. A session that succeeds is
//! its user's (`User:<name>`) until `security.max_reauth_ms`, when the client
//! must authenticate again (KIP-368) as the same user.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslAuthenticateResponse};
use kafka_protocol::ResponseError;

use super::session::Auth;
use super::{message, Call};
use crate::security::sasl::{Exchange, Step};
use crate::security::Principal;

pub async fn handle(call: &Call, request: SaslAuthenticateRequest) -> SaslAuthenticateResponse {
    let taken = call.session.with_auth(|auth| match auth {
        Auth::Exchanging(exchange) => exchange.take().map(|e| (e, false)),
        Auth::Reauthenticating(exchange) => exchange.take().map(|e| (e, true)),
        _ => None,
    });
    let Some((exchange, reauthenticating)) = taken else {
        return SaslAuthenticateResponse::default()
            .with_error_code(ResponseError::IllegalSaslState.code())
            .with_error_message(message("SaslAuthenticate without a SaslHandshake before it"));
    };
    let mechanism = exchange.mechanism.clone();
    let (exchange, step) = step_off_thread(exchange, request.auth_bytes).await;
    match step {
        Step::Continue(reply) => {
            call.session.with_auth(|auth| {
                *auth = if reauthenticating { Auth::Reauthenticating(exchange) } else { Auth::Exchanging(exchange) }
            });
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply))
        }
        Step::Done { user, reply } => {
            let security = &call.ctx.config.security;
            let lifetime = (security.max_reauth_ms > 0).then(|| Duration::from_millis(security.max_reauth_ms));
            let principal = Principal::user(&user);
            if !call.session.authenticated(principal.clone(), lifetime) {
                return failed(call, &mechanism, "re-authenticated as another principal").await;
            }
            tracing::debug!(peer = %call.session.peer, %principal, %mechanism, "authenticated");
            let lifetime_ms = lifetime.map_or(0, |l| l.as_millis() as i64);
            let answer = SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply));
            if call.version >= 1 {
                answer.with_session_lifetime_ms(lifetime_ms)
            } else {
                answer
            }
        }
        Step::Failed(why) => failed(call, &mechanism, &why).await,
    }
}

/// Runs the step on the blocking pool: PLAIN's check is a PBKDF2 of up to
/// 16384 rounds, which would stall the other connections of this thread.
async fn step_off_thread(mut exchange: Box<Exchange>, input: Bytes) -> (Option<Box<Exchange>>, Step) {
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

/// Fails the session, waits the configured delay, and says why in the answer.
async fn failed(call: &Call, mechanism: &str, why: &str) -> SaslAuthenticateResponse {
    call.session.with_auth(|auth| *auth = Auth::Failed);
    call.ctx.metrics.authentication_failures.inc();
    let (peer, listener) = (call.session.peer, call.session.listener);
    tracing::info!(%peer, listener, mechanism, reason = why, "SASL authentication failed; closing connection");
    let delay = call.ctx.config.security.failed_authentication_delay_ms;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    SaslAuthenticateResponse::default().with_error_code(ResponseError::SaslAuthenticationFailed.code()).with_error_message(
        message(format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}")),
    )
}

super::registry::api! {
    SaslAuthenticate: SaslAuthenticateRequest => SaslAuthenticateResponse, versions 0..=2, access none,
    |call, request| handle(call, request).await
}
