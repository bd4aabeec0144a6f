//! A Confluent Schema Registry client: writer schemas looked up by id (cached: each id is fetched
//! once per decoder) and value schemas registered under a subject.
//!
//! Protocol: `GET {url}/schemas/ids/{id}` answers `{"schema": "<Avro schema JSON>"}` (with an
//! optional `schemaType`, absent for Avro); `POST {url}/subjects/{subject}/versions` with
//! `{"schema": "…"}` answers `{"id": n}`. Basic authentication comes from
//! `'schema.registry.username'`/`'schema.registry.password'`; the password never appears in
//! messages. An unreachable registry is a transient error (retried by the caller); an id the
//! registry does not know, or a schema that is not Avro, is definite (the record is dead-lettered).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::options::redact_uri;
use crate::{ConnectorError, Result};

/// How to reach the registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://localhost:8081` (no trailing slash).
    pub url: String,
    /// Basic-auth user.
    pub username: Option<String>,
    /// Basic-auth password (secret).
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.display_url())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| crate::options::MASK))
            .finish()
    }
}

impl RegistryConfig {
    /// The URL as it may be shown (a password in it masked).
    pub fn display_url(&self) -> String {
        redact_uri(&self.url).unwrap_or_else(|| self.url.clone())
    }
}

/// A writer schema fetched from the registry, or why it cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The Avro schema JSON.
    Found(String),
    /// The registry does not have it (or it is not an Avro schema): records using it are
    /// dead-lettered with this reason.
    Unusable(String),
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

/// A registry client with a per-id cache.
pub struct SchemaRegistry {
    config: RegistryConfig,
    client: reqwest::Client,
    cache: HashMap<u32, Lookup>,
    requests: u64,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl SchemaRegistry {
    /// A client for `config` (no I/O).
    pub fn new(config: RegistryConfig) -> Result<Self> {
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(ConnectorError::Config(format!(
                "option 'schema.registry.url' must be an http:// or https:// URL, got '{}'",
                config.display_url()
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ConnectorError::Config(format!("cannot set up the schema registry client: {e}")))?;
        let mut config = config;
        config.url = config.url.trim_end_matches('/').to_string();
        Ok(Self { config, client, cache: HashMap::new(), requests: 0 })
    }

    /// The registry's configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// HTTP requests made so far (lookups are cached, so this grows once per new id).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The cached result for `id`, if it was looked up before.
    pub fn cached(&self, id: u32) -> Option<&Lookup> {
        self.cache.get(&id)
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.username {
            Some(u) => req.basic_auth(u, self.config.password.as_deref()),
            None => req,
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ConnectorError {
        // reqwest errors name the URL; show ours (masked) instead.
        let msg = e.to_string().replace(&self.config.url, &self.config.display_url());
        ConnectorError::Unavailable(format!("schema registry {} unreachable: {msg}", self.config.display_url()))
    }

    /// The writer schema with `id` (from the cache after the first lookup). Errors are transient
    /// (the registry could not be reached or answered with a server error).
    pub async fn schema_by_id(&mut self, id: u32) -> Result<Lookup> {
        if let Some(l) = self.cache.get(&id) {
            return Ok(l.clone());
        }
        self.requests += 1;
        let url = format!("{}/schemas/ids/{id}", self.config.url);
        let resp = self
            .auth(self.client.get(&url).header("Accept", CONTENT_TYPE))
            .send()
            .await
            .map_err(|e| self.unreachable(e.without_url()))?;
        let status = resp.status();
        let lookup = if status.is_success() {
            let body: SchemaResponse = resp.json().await.map_err(|e| {
                ConnectorError::Failed(format!(
                    "schema registry {} answered schema id {id} with an unexpected body: {}",
                    self.config.display_url(),
                    e.without_url()
                ))
            })?;
            match body.schema_type.as_deref() {
                None | Some("AVRO") => Lookup::Found(body.schema),
                Some(other) => Lookup::Unusable(format!("schema id {id} is a {other} schema, not Avro")),
            }
        } else if status.as_u16() == 404 {
            Lookup::Unusable(format!("schema id {id} is not in the schema registry at {}", self.config.display_url()))
        } else if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(ConnectorError::Failed(format!(
                "schema registry {} refused access ({status}): check 'schema.registry.username' and \
                 'schema.registry.password'",
                self.config.display_url()
            )));
        } else {
            return Err(self.unreachable(format!("HTTP {status} for schema id {id}")));
        };
        self.cache.insert(id, lookup.clone());
        Ok(lookup)
    }

    /// Registers `schema` (Avro JSON) under `subject` and returns its id (the registry returns
    /// the existing id when the schema is already registered).
    pub async fn register(&mut self, subject: &str, schema: &str) -> Result<u32> {
        self.requests += 1;
        let url = format!("{}/subjects/{subject}/versions", self.config.url);
        let body = serde_json::json!({ "schema": schema });
        let resp = self
            .auth(self.client.post(&url).header("Content-Type", CONTENT_TYPE).header("Accept", CONTENT_TYPE))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.unreachable(e.without_url()))?;
        let status = resp.status();
        if status.is_success() {
            let r: IdResponse = resp.json().await.map_err(|e| {
                ConnectorError::Failed(format!(
                    "schema registry {} answered the registration with an unexpected body: {}",
                    self.config.display_url(),
                    e.without_url()
                ))
            })?;
            self.cache.insert(r.id, Lookup::Found(schema.to_string()));
            return Ok(r.id);
        }
        let text = resp.text().await.unwrap_or_default();
        let err = format!(
            "schema registry {} refused to register the value schema under subject '{subject}' (HTTP {status}): {}",
            self.config.display_url(),
            text.trim()
        );
        if status.is_server_error() {
            Err(ConnectorError::Unavailable(err))
        } else {
            Err(ConnectorError::Failed(err))
        }
    }
}
