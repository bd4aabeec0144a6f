//! Connecting to a broker, and what its errors mean for the pipeline.

use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, ErrorKind};

use super::config::Broker;
use crate::{ConnectorError, Result};

/// How long connecting (TCP, TLS and the AMQP handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection named after the pipeline object (shown in the broker's management UI).
pub async fn connect(broker: &Broker, name: &str) -> Result<Connection> {
    let cert_chain = match &broker.ca_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| ConnectorError::Config(format!("option 'tls.ca_file': cannot read '{f}': {e}")))?,
        ),
        None => None,
    };
    let tls = OwnedTLSConfig { identity: None, cert_chain };
    let props = ConnectionProperties::default().with_connection_name(format!("laminardb {name}").into());
    let runtime = lapin::runtime::default_runtime().map_err(|e| error("cannot start", e))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_with_config(&broker.uri, props, tls, runtime)).await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(error("connecting failed", e)),
        Err(_) => Err(ConnectorError::Unavailable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))),
    }
}

/// A lapin error as a connector error (the caller's context names the broker): refusals that retrying cannot fix
/// (wrong credentials, a missing queue or exchange, a refused argument) fail; the rest
/// (connections lost, brokers restarting) are transient.
pub fn error(what: &str, e: lapin::Error) -> ConnectorError {
    let text = e.to_string();
    let hint = if text.contains("ACCESS_REFUSED") || text.contains("ACCESS-REFUSED") {
        " (check the user name, password and virtual host in 'uri', and the user's permissions)"
    } else if text.contains("NOT_FOUND") || text.contains("NOT-FOUND") {
        " (declare it first)"
    } else if text.contains("PRECONDITION_FAILED") || text.contains("PRECONDITION-FAILED") {
        " (it exists with other settings)"
    } else {
        ""
    };
    let msg = format!("{what}: {text}{hint}");
    let permanent = !hint.is_empty()
        || matches!(e.kind(), ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_))
        || text.contains("NOT_ALLOWED")
        || text.contains("NOT-ALLOWED");
    if permanent {
        ConnectorError::Failed(msg)
    } else {
        ConnectorError::Unavailable(msg)
    }
}
