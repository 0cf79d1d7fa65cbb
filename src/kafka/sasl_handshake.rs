//! SaslHandshake: the client names its mechanism; the broker answers with the
//! mechanisms it offers and starts an exchange (`sasl_authenticate.rs` runs
//! it). Version 0, whose exchange is raw frames without Kafka headers, is not
//! offered; every current client sends version 1.

use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::ResponseError;

use super::session::Auth;
use super::{str_bytes, Call};

pub fn handle(call: &Call, request: SaslHandshakeRequest) -> SaslHandshakeResponse {
    let sasl = &call.ctx.sasl;
    let offered = sasl.mechanisms.iter().map(|m| str_bytes(m.clone())).collect();
    let answer = SaslHandshakeResponse::default().with_mechanisms(offered);
    let code = call.session.with_auth(|auth| {
        let reauthenticating = match auth {
            Auth::AwaitingHandshake => false,
            Auth::Authenticated { .. } => true,
            _ => return ResponseError::IllegalSaslState.code(),
        };
        let Some(exchange) = sasl.start(&request.mechanism) else {
            // Kafka closes the connection after this answer: there is nothing the client can do on it.
            *auth = Auth::Failed;
            return ResponseError::UnsupportedSaslMechanism.code();
        };
        let exchange = Some(Box::new(exchange));
        *auth = if reauthenticating { Auth::Reauthenticating(exchange) } else { Auth::Exchanging(exchange) };
        0
    });
    if code == ResponseError::UnsupportedSaslMechanism.code() {
        let (peer, listener) = (call.session.peer, call.session.listener);
        tracing::info!(%peer, listener, mechanism = %request.mechanism, offered = ?sasl.mechanisms, "SASL mechanism not offered; closing connection");
    }
    answer.with_error_code(code)
}

super::registry::api! {
    SaslHandshake: SaslHandshakeRequest => SaslHandshakeResponse, versions 1..=1, access none,
    |call, request| handle(call, request)
}
