//! The Iceberg REST catalog protocol (client side).
//!
//! JSON over HTTP(S) as the Iceberg REST OpenAPI specification defines it: `GET /v1/config`
//! (the server's defaults and the path `prefix`), `GET`/`POST /v1/{prefix}/namespaces[/{ns}]`,
//! `GET /v1/{prefix}/namespaces/{ns}/tables/{table}` (load: the metadata and its location),
//! `POST …/tables` (create) and `POST …/tables/{table}` (commit: requirements and updates,
//! which the server checks and applies atomically; `409` when a requirement fails). A
//! multi-level namespace travels as its levels joined by the unit separator (`%1F`).
//!
//! Authentication: a bearer token (`'catalog.token'`), or OAuth2 client credentials
//! (`'catalog.credential'` = `client_id:client_secret`) exchanged at the server's
//! `/v1/oauth/tokens` endpoint (or `'catalog.oauth2-server-uri'`) for a token. Secrets are never
//! put into messages.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{TableCreation, TableIdent, TableRequirement, TableUpdate};
use serde::Deserialize;
use serde_json::json;

use super::catalog::{table, Committed};
use crate::{ConnectorError, Result};

/// How the client authenticates.
#[derive(Clone, Debug, Default)]
pub(crate) enum RestAuth {
    /// No credentials.
    #[default]
    None,
    /// A bearer token.
    Token(String),
    /// OAuth2 client credentials, exchanged for a token at `token_uri` (default: the server's
    /// `v1/oauth/tokens`).
    Credential { client_id: String, secret: String, token_uri: Option<String>, scope: String },
}

/// A REST catalog.
#[derive(Debug)]
pub(crate) struct RestCatalog {
    uri: String,
    warehouse: Option<String>,
    auth: RestAuth,
    client: reqwest::Client,
    /// The path prefix and the token, learnt at the first call.
    session: Mutex<Option<Session>>,
}

#[derive(Clone, Debug)]
struct Session {
    prefix: String,
    token: Option<String>,
}

/// `LoadTableResult`.
#[derive(Deserialize)]
struct Loaded {
    #[serde(rename = "metadata-location")]
    metadata_location: Option<String>,
    metadata: TableMetadata,
}

#[derive(Deserialize)]
struct ConfigResponse {
    #[serde(default)]
    defaults: HashMap<String, String>,
    #[serde(default)]
    overrides: HashMap<String, String>,
}

impl RestCatalog {
    /// A client of the catalog at `uri` (`http(s)://host[:port][/path]`).
    pub(crate) fn new(uri: &str, warehouse: Option<String>, auth: RestAuth) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ConnectorError::Config(format!("'catalog_uri': {e}")))?;
        Ok(Self { uri: uri.trim_end_matches('/').to_string(), warehouse, auth, client, session: Mutex::new(None) })
    }

    /// A short description for messages.
    pub(crate) fn describe(&self) -> String {
        format!("REST catalog {}", self.uri)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Failed(format!("Iceberg {}: {what}: {e}", self.describe()))
    }

    fn unavailable(&self, what: &str, e: reqwest::Error) -> ConnectorError {
        // reqwest's message names the URL, which may carry credentials: name ours instead.
        let e = e.without_url();
        ConnectorError::Unavailable(format!("Iceberg {}: {what}: {e}", self.describe()))
    }

    /// The prefix and token, asking the server for its config (and a token) at the first call.
    async fn session(&self) -> Result<Session> {
        if let Some(s) = self.session.lock().map_err(|_| self.err("session", "poisoned"))?.clone() {
            return Ok(s);
        }
        let token = match &self.auth {
            RestAuth::None => None,
            RestAuth::Token(t) => Some(t.clone()),
            RestAuth::Credential { client_id, secret, token_uri, scope } => {
                let at = token_uri.clone().unwrap_or_else(|| format!("{}/v1/oauth/tokens", self.uri));
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("grant_type", "client_credentials")
                    .append_pair("client_id", client_id)
                    .append_pair("client_secret", secret)
                    .append_pair("scope", scope)
                    .finish();
                let resp = self
                    .client
                    .post(&at)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| self.unavailable("cannot get a token", e))?;
                let status = resp.status();
                let text = resp.text().await.map_err(|e| self.unavailable("cannot get a token", e))?;
                if !status.is_success() {
                    return Err(ConnectorError::Config(format!(
                        "Iceberg {}: the token request with 'catalog.credential' was refused ({status}): {}",
                        self.describe(),
                        error_message(&text)
                    )));
                }
                let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| self.err("token response", e))?;
                let t = v["access_token"].as_str().ok_or_else(|| self.err("token response", "no access_token"))?;
                Some(t.to_string())
            }
        };
        let mut req = self.client.get(format!("{}/v1/config", self.uri));
        if let Some(w) = &self.warehouse {
            req = req.query(&[("warehouse", w)]);
        }
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.unavailable("cannot reach the catalog", e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unavailable("cannot read the catalog's config", e))?;
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(ConnectorError::Config(format!(
                "Iceberg {}: not allowed ({status}): {}; set 'catalog.token' or 'catalog.credential'",
                self.describe(),
                error_message(&text)
            )));
        }
        if !status.is_success() {
            return Err(self.err(&format!("GET /v1/config answered {status}"), error_message(&text)));
        }
        let config: ConfigResponse =
            serde_json::from_str(&text).map_err(|e| self.err("the catalog's config is not JSON it knows", e))?;
        let prefix = config
            .overrides
            .get("prefix")
            .or(config.defaults.get("prefix"))
            .map(|p| p.trim_matches('/').to_string())
            .unwrap_or_default();
        let s = Session { prefix, token };
        *self.session.lock().map_err(|_| self.err("session", "poisoned"))? = Some(s.clone());
        Ok(s)
    }

    /// `{uri}/v1/{prefix}/namespaces[/{ns}[/tables[/{table}]]]`, each part percent-encoded.
    fn url(&self, s: &Session, ns: Option<&TableIdent>, tables: bool, name: Option<&str>) -> Result<String> {
        let mut url = url::Url::parse(&self.uri).map_err(|e| self.err("'catalog_uri'", e))?;
        {
            let mut path = url.path_segments_mut().map_err(|_| self.err("'catalog_uri'", "not a base URL"))?;
            path.pop_if_empty().push("v1");
            if !s.prefix.is_empty() {
                path.extend(s.prefix.split('/'));
            }
            path.push("namespaces");
            if let Some(ident) = ns {
                path.push(&ident.namespace.join("\u{1f}"));
                if tables {
                    path.push("tables");
                }
                if let Some(n) = name {
                    path.push(n);
                }
            }
        }
        Ok(url.to_string())
    }

    async fn send(
        &self,
        what: &str,
        s: &Session,
        req: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, String)> {
        let req = match &s.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.unavailable(what, e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unavailable(what, e))?;
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(ConnectorError::Config(format!(
                "Iceberg {}: {what}: not allowed ({status}): {}",
                self.describe(),
                error_message(&text)
            )));
        }
        Ok((status, text))
    }

    /// The `location` property of the table's namespace, if the namespace exists and has one.
    pub(crate) async fn namespace_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        let s = self.session().await?;
        let url = self.url(&s, Some(ident), false, None)?;
        let (status, text) = self.send("cannot read the namespace", &s, self.client.get(url)).await?;
        match status.as_u16() {
            404 => Ok(None),
            200..=299 => {
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| self.err("namespace response", e))?;
                Ok(v["properties"]["location"].as_str().map(str::to_string))
            }
            _ => {
                Err(self.err(&format!("reading namespace {} answered {status}", ident.namespace), error_message(&text)))
            }
        }
    }

    fn loaded(&self, ident: &TableIdent, file_io: &FileIO, text: &str) -> Result<Table> {
        let l: Loaded =
            serde_json::from_str(text).map_err(|e| self.err(&format!("the catalog's answer for {ident}"), e))?;
        let location = l
            .metadata_location
            .ok_or_else(|| self.err(&format!("{ident}"), "the catalog gave no metadata location"))?;
        table(ident, file_io, l.metadata, location)
    }

    /// Loads the table, or None when the catalog does not have it.
    pub(crate) async fn load(&self, ident: &TableIdent, file_io: &FileIO) -> Result<Option<Table>> {
        let s = self.session().await?;
        let url = self.url(&s, Some(ident), true, Some(&ident.name))?;
        let (status, text) = self.send(&format!("cannot load {ident}"), &s, self.client.get(url)).await?;
        match status.as_u16() {
            404 => Ok(None),
            200..=299 => Ok(Some(self.loaded(ident, file_io, &text)?)),
            _ => Err(self.err(&format!("loading {ident} answered {status}"), error_message(&text))),
        }
    }

    /// Creates the table (and its namespace if absent), or loads it when another writer
    /// created it first.
    pub(crate) async fn create(&self, ident: &TableIdent, creation: TableCreation, file_io: &FileIO) -> Result<Table> {
        let s = self.session().await?;
        let body = json!({ "namespace": ident.namespace.clone().inner(), "properties": {} });
        let url = self.url(&s, None, false, None)?;
        let (status, text) = self.send("cannot create the namespace", &s, self.client.post(url).json(&body)).await?;
        if !status.is_success() && status.as_u16() != 409 {
            return Err(
                self.err(&format!("creating namespace {} answered {status}", ident.namespace), error_message(&text))
            );
        }
        let mut properties = creation.properties.clone();
        let version = match creation.format_version {
            iceberg::spec::FormatVersion::V1 => "1",
            iceberg::spec::FormatVersion::V2 => "2",
            iceberg::spec::FormatVersion::V3 => "3",
        };
        properties.entry("format-version".to_string()).or_insert_with(|| version.to_string());
        let mut body = json!({
            "name": creation.name,
            "schema": creation.schema,
            "stage-create": false,
            "properties": properties,
        });
        if let Some(l) = &creation.location {
            body["location"] = json!(l);
        }
        if let Some(p) = &creation.partition_spec {
            body["partition-spec"] = json!(p);
        }
        if let Some(o) = &creation.sort_order {
            body["write-order"] = json!(o);
        }
        let url = self.url(&s, Some(ident), true, None)?;
        let (status, text) =
            self.send(&format!("cannot create {ident}"), &s, self.client.post(url).json(&body)).await?;
        match status.as_u16() {
            200..=299 => self.loaded(ident, file_io, &text),
            409 => self
                .load(ident, file_io)
                .await?
                .ok_or_else(|| self.err(&format!("cannot create {ident}"), "the table exists but cannot be loaded")),
            _ => Err(self.err(&format!("creating {ident} answered {status}"), error_message(&text))),
        }
    }

    /// Sends `requirements` and `updates` for the server to check and apply atomically.
    pub(crate) async fn commit(
        &self,
        base: &Table,
        requirements: &[TableRequirement],
        updates: Vec<TableUpdate>,
    ) -> Result<Committed> {
        let ident = base.identifier();
        let s = self.session().await?;
        let body = json!({
            "identifier": { "namespace": ident.namespace.clone().inner(), "name": ident.name },
            "requirements": requirements,
            "updates": updates,
        });
        let url = self.url(&s, Some(ident), true, Some(&ident.name))?;
        let (status, text) =
            self.send(&format!("cannot commit {ident}"), &s, self.client.post(url).json(&body)).await?;
        match status.as_u16() {
            200..=299 => Ok(Committed::Done(Box::new(self.loaded(ident, base.file_io(), &text)?))),
            409 => Ok(Committed::Conflict(error_message(&text))),
            // The server may or may not have applied the commit (spec: CommitStateUnknown).
            500 | 502 | 503 | 504 => Err(self.err(
                &format!("the commit to {ident} ended with {status}; whether it was applied is unknown"),
                error_message(&text),
            )),
            _ => Err(self.err(&format!("committing to {ident} answered {status}"), error_message(&text))),
        }
    }
}

/// The message of a REST error response (`{"error": {"message", "type", "code"}}`), else the
/// body's start.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) if v["error"]["message"].is_string() => {
            let kind = v["error"]["type"].as_str().unwrap_or("error");
            format!("{kind}: {}", v["error"]["message"].as_str().unwrap_or_default())
        }
        _ => body.chars().take(300).collect(),
    }
}
