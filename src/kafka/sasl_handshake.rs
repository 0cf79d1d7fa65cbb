//! SaslHandshake: the client names its mechanism; the broker answers with the
//! mechanisms it offers and starts an exchange (`sasl_authenticate.rs` runs
//! it). After version 1 the exchange is SaslAuthenticate requests; after
//! version 0 it is raw tokens, each a frame of its own. Version 0 stays
//! offered, as Kafka 4 offers it: librdkafka before 2.10 (Debian's kcat)
//! enables SASL only if the range includes it, and then sends version 1.

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
            Auth::AwaitingHandshake => None,
            // KIP-368: a re-authentication keeps the mechanism.
            Auth::Authenticated { mechanism, .. } if !mechanism.eq_ignore_ascii_case(&request.mechanism) => {
                *auth = Auth::Failed;
                return ResponseError::UnsupportedSaslMechanism.code();
            }
            Auth::Authenticated { expires, .. } => Some(*expires),
            Auth::NotRequired => return ResponseError::IllegalSaslState.code(),
            _ => {
                // A handshake in the middle of an exchange: Kafka closes the connection.
                *auth = Auth::Failed;
                return ResponseError::IllegalSaslState.code();
            }
        };
        // KIP-368 re-authentication is a SaslAuthenticate exchange.
        if reauthenticating.is_some() && call.version == 0 {
            return ResponseError::IllegalSaslState.code();
        }
        let Some(mut exchange) = sasl.start(&request.mechanism) else {
            // Kafka closes the connection after this answer: there is nothing the client can do on it.
            *auth = Auth::Failed;
            return ResponseError::UnsupportedSaslMechanism.code();
        };
        exchange.raw = call.version == 0;
        let exchange = Some(Box::new(exchange));
        *auth = match reauthenticating {
            Some(expires) => Auth::Reauthenticating { exchange, expires },
            None => Auth::Exchanging(exchange),
        };
        0
    });
    if code == ResponseError::UnsupportedSaslMechanism.code() {
        let (peer, listener) = (call.session.peer, call.session.listener);
        tracing::info!(%peer, listener, mechanism = %request.mechanism, offered = ?sasl.mechanisms, "SASL mechanism not offered; closing connection");
    }
    answer.with_error_code(code)
}

super::registry::api! {
    SaslHandshake: SaslHandshakeRequest => SaslHandshakeResponse, versions 0..=1, access none,
    |call, request| handle(call, request)
}
