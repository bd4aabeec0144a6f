//! Opening a client connection: `ws://` or `wss://` (rustls with the web's root certificates,
//! plus those of `tls.ca_file`), the `Authorization` header from `auth`, and a bounded time.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::config::ClientOptions;
use crate::{ConnectorError, Result};

/// A client connection.
pub type ClientStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connecting (TCP, TLS and the handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings for `wss://` URLs.
pub fn tls_config(opts: &ClientOptions) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &opts.ca_file {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| ConnectorError::Config(format!("'tls.ca_file' {path}: {e}")))?;
        let mut n = 0;
        for c in certs {
            let c = c.map_err(|e| ConnectorError::Config(format!("'tls.ca_file' {path}: {e}")))?;
            roots.add(c).map_err(|e| ConnectorError::Config(format!("'tls.ca_file' {path}: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(ConnectorError::Config(format!("'tls.ca_file' {path} holds no PEM certificate")));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectorError::Config(format!("TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects to `opts.url`. Errors are [`ConnectorError::Unavailable`] naming the URL (never
/// the `auth` value).
pub async fn connect(
    opts: &ClientOptions,
    tls: &Arc<rustls::ClientConfig>,
    ws_config: WebSocketConfig,
) -> Result<ClientStream> {
    let shown = crate::options::redact_uri(&opts.url).unwrap_or_else(|| opts.url.clone());
    let mut request =
        opts.url.as_str().into_client_request().map_err(|e| ConnectorError::Config(format!("'url' {shown}: {e}")))?;
    if let Some(auth) = &opts.auth {
        let v = HeaderValue::from_str(auth)
            .map_err(|_| ConnectorError::Config("'auth' is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", v);
    }
    let connector = Some(Connector::Rustls(tls.clone()));
    let attempt = tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, connector);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(ConnectorError::Unavailable(format!(
            "websocket {shown}: no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Err(e)) => Err(ConnectorError::Unavailable(format!("websocket {shown}: {e}"))),
        Ok(Ok((stream, _response))) => Ok(stream),
    }
}
