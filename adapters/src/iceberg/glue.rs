//! The AWS Glue Data Catalog as an Iceberg catalog.
//!
//! Glue's JSON API (`POST /` with `X-Amz-Target: AWSGlue.<Operation>`, signed with AWS
//! Signature Version 4 for the service `glue`). A namespace is a Glue database (one level); an
//! Iceberg table is a Glue table of type `EXTERNAL_TABLE` whose parameters hold `table_type =
//! ICEBERG` and `metadata_location` (and `previous_metadata_location`), the layout Spark, Trino,
//! Athena and pyiceberg use. A commit writes the next metadata file and updates the Glue table
//! passing the `VersionId` it read, which Glue refuses (`ConcurrentModificationException`) if
//! another writer updated the table since; the pointer is also re-read first, so a commit built
//! on an old snapshot is rebuilt. Credentials come from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.

use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::{PrimitiveType, TableMetadata, Type};
use iceberg::table::Table;
use iceberg::{TableCreation, TableIdent, TableRequirement, TableUpdate};
use serde_json::{json, Value};

use super::catalog::{first_metadata, next_metadata, table, Committed};
use super::sigv4::{authorization, Credentials, Request};
use crate::{ConnectorError, Result};

/// A Glue Data Catalog.
#[derive(Debug)]
pub(crate) struct GlueCatalog {
    endpoint: url::Url,
    region: String,
    /// The AWS account whose catalog is used (default: the caller's).
    catalog_id: Option<String>,
    client: reqwest::Client,
}

/// A Glue error: its type (e.g. `EntityNotFoundException`) and message.
struct GlueError {
    kind: String,
    message: String,
}

impl GlueCatalog {
    /// The catalog behind `endpoint` (`https://glue.<region>.amazonaws.com` or a stand-in), in
    /// `region` (default: the endpoint's, else `AWS_REGION` / `AWS_DEFAULT_REGION`, else
    /// `us-east-1`).
    pub(crate) fn new(endpoint: &str, region: Option<String>, catalog_id: Option<String>) -> Result<Self> {
        let url = url::Url::parse(endpoint)
            .map_err(|e| ConnectorError::Config(format!("'catalog_uri' = '{endpoint}' is not a Glue endpoint: {e}")))?;
        let from_host = url
            .host_str()
            .and_then(|h| h.strip_prefix("glue."))
            .and_then(|h| h.strip_suffix(".amazonaws.com"))
            .map(str::to_string);
        let region = region
            .or(from_host)
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ConnectorError::Config(format!("'catalog_uri': {e}")))?;
        Ok(Self { endpoint: url, region, catalog_id, client })
    }

    /// A short description for messages.
    pub(crate) fn describe(&self) -> String {
        format!("Glue catalog {} ({})", self.endpoint.as_str().trim_end_matches('/'), self.region)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Failed(format!("Iceberg {}: {what}: {e}", self.describe()))
    }

    fn database(ident: &TableIdent) -> Result<String> {
        match ident.namespace.as_ref().as_slice() {
            [db] => Ok(db.clone()),
            _ => Err(ConnectorError::Config(format!(
                "'table' = '{ident}': a Glue namespace is one database ('database.table')"
            ))),
        }
    }

    /// Calls `AWSGlue.<op>` with `body`; a Glue error comes back inside.
    async fn call(&self, op: &str, mut body: Value) -> Result<std::result::Result<Value, GlueError>> {
        if let Some(id) = &self.catalog_id {
            body["CatalogId"] = json!(id);
        }
        let creds = Credentials::from_env().ok_or_else(|| {
            ConnectorError::Config(format!(
                "Iceberg {}: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
                 AWS_SESSION_TOKEN for temporary ones)",
                self.describe()
            ))
        })?;
        let payload = serde_json::to_vec(&body).map_err(|e| self.err(op, e))?;
        let host = match self.endpoint.port() {
            Some(p) => format!("{}:{p}", self.endpoint.host_str().unwrap_or_default()),
            None => self.endpoint.host_str().unwrap_or_default().to_string(),
        };
        let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        let target = format!("AWSGlue.{op}");
        let mut headers = vec![
            ("content-type", "application/x-amz-json-1.1"),
            ("host", host.as_str()),
            ("x-amz-date", amz_date.as_str()),
            ("x-amz-target", target.as_str()),
        ];
        if let Some(t) = &creds.session_token {
            headers.push(("x-amz-security-token", t.as_str()));
        }
        let path = self.endpoint.path().to_string();
        let req = Request { method: "POST", path: &path, query: &[], headers: &headers, payload: &payload };
        let auth = authorization(&req, &creds, &self.region, "glue", &amz_date);
        let mut http = self.client.post(self.endpoint.clone()).header("authorization", auth);
        for (k, v) in headers.iter().filter(|(k, _)| *k != "host") {
            http = http.header(*k, *v);
        }
        let resp = http.body(payload).send().await.map_err(|e| {
            ConnectorError::Unavailable(format!("Iceberg {}: {op}: {}", self.describe(), e.without_url()))
        })?;
        let status = resp.status();
        let header_kind = resp.headers().get("x-amzn-errortype").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.text().await.map_err(|e| {
            ConnectorError::Unavailable(format!("Iceberg {}: {op}: {}", self.describe(), e.without_url()))
        })?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Ok(v));
        }
        let kind = v["__type"].as_str().map(str::to_string).or(header_kind).unwrap_or_else(|| status.to_string());
        // `com.amazonaws…#EntityNotFoundException` and `EntityNotFoundException:…` forms.
        let kind = kind.rsplit('#').next().unwrap_or_default().split(':').next().unwrap_or_default().to_string();
        let message = v["message"].as_str().or(v["Message"].as_str()).unwrap_or(&text).to_string();
        if matches!(
            kind.as_str(),
            "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
        ) {
            return Err(ConnectorError::Config(format!(
                "Iceberg {}: {op} was refused ({kind}): {message}; check the AWS_* credentials",
                self.describe()
            )));
        }
        Ok(Err(GlueError { kind, message }))
    }

    /// The database's `LocationUri`, if the database exists and has one.
    pub(crate) async fn namespace_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        let db = Self::database(ident)?;
        match self.call("GetDatabase", json!({ "Name": db })).await? {
            Ok(v) => Ok(v["Database"]["LocationUri"].as_str().filter(|s| !s.is_empty()).map(str::to_string)),
            Err(e) if e.kind == "EntityNotFoundException" => Ok(None),
            Err(e) => Err(self.err(&format!("GetDatabase {db}"), format!("{}: {}", e.kind, e.message))),
        }
    }

    /// The Glue table's `metadata_location` and `VersionId`, or None when there is no table.
    async fn pointer(&self, ident: &TableIdent) -> Result<Option<(String, Option<String>)>> {
        let db = Self::database(ident)?;
        let v = match self.call("GetTable", json!({ "DatabaseName": db, "Name": ident.name })).await? {
            Ok(v) => v,
            Err(e) if e.kind == "EntityNotFoundException" => return Ok(None),
            Err(e) => return Err(self.err(&format!("GetTable {ident}"), format!("{}: {}", e.kind, e.message))),
        };
        let params = &v["Table"]["Parameters"];
        if !params["table_type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case("iceberg")) {
            return Err(self.err(&format!("{ident}"), "the Glue table is not an Iceberg table (table_type)"));
        }
        let location = params["metadata_location"]
            .as_str()
            .ok_or_else(|| self.err(&format!("{ident}"), "the Glue table has no metadata_location"))?;
        Ok(Some((location.to_string(), v["Table"]["VersionId"].as_str().map(str::to_string))))
    }

    /// Loads the table, or None when the catalog does not have it.
    pub(crate) async fn load(&self, ident: &TableIdent, file_io: &FileIO) -> Result<Option<Table>> {
        let Some((location, _)) = self.pointer(ident).await? else { return Ok(None) };
        let metadata = TableMetadata::read_from(file_io, &location)
            .await
            .map_err(|e| self.err(&format!("cannot read the metadata of {ident} at {location}"), e))?;
        Ok(Some(table(ident, file_io, metadata, location)?))
    }

    /// The Glue table input for `metadata` at `location`.
    fn table_input(ident: &TableIdent, metadata: &TableMetadata, location: &str, previous: Option<&str>) -> Value {
        let columns: Vec<Value> = metadata
            .current_schema()
            .as_struct()
            .fields()
            .iter()
            .map(|f| json!({ "Name": f.name, "Type": hive_type(&f.field_type), "Comment": f.doc.clone().unwrap_or_default() }))
            .collect();
        let mut params = json!({ "table_type": "ICEBERG", "metadata_location": location });
        if let Some(p) = previous {
            params["previous_metadata_location"] = json!(p);
        }
        json!({
            "Name": ident.name,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": params,
            "StorageDescriptor": { "Location": metadata.location(), "Columns": columns },
        })
    }

    /// Creates the table (and its database if absent), or loads it when another writer
    /// created it first.
    pub(crate) async fn create(&self, ident: &TableIdent, creation: TableCreation, file_io: &FileIO) -> Result<Table> {
        let db = Self::database(ident)?;
        if creation.location.is_none() {
            return Err(ConnectorError::Config(format!(
                "Iceberg {}: {ident} does not exist and neither 'warehouse' nor the database's location says \
                 where to create it: set 'warehouse' = 's3://bucket/prefix'",
                self.describe()
            )));
        }
        match self.call("CreateDatabase", json!({ "DatabaseInput": { "Name": db } })).await? {
            Ok(_) => {}
            Err(e) if e.kind == "AlreadyExistsException" => {}
            Err(e) => return Err(self.err(&format!("CreateDatabase {db}"), format!("{}: {}", e.kind, e.message))),
        }
        let (metadata, at) =
            first_metadata(creation, file_io).await.map_err(|e| self.err(&format!("cannot create {ident}"), e))?;
        let input = Self::table_input(ident, &metadata, &at.to_string(), None);
        match self.call("CreateTable", json!({ "DatabaseName": db, "TableInput": input })).await? {
            Ok(_) => table(ident, file_io, metadata, at.to_string()),
            Err(e) if e.kind == "AlreadyExistsException" => {
                drop(file_io.delete(at.to_string()).await);
                self.load(ident, file_io)
                    .await?
                    .ok_or_else(|| self.err(&format!("cannot create {ident}"), "the table vanished"))
            }
            Err(e) => Err(self.err(&format!("CreateTable {ident}"), format!("{}: {}", e.kind, e.message))),
        }
    }

    /// Applies `updates` to `base` if `requirements` hold, writes the next metadata file and
    /// points the Glue table at it if nobody moved the pointer meanwhile.
    pub(crate) async fn commit(
        &self,
        base: &Table,
        requirements: &[TableRequirement],
        updates: Vec<TableUpdate>,
    ) -> Result<Committed> {
        let ident = base.identifier();
        let db = Self::database(ident)?;
        let current = base.metadata_location_result().map_err(|e| self.err("commit", e))?.to_string();
        let version = match self.pointer(ident).await? {
            Some((at, version)) if at == current => version,
            Some(_) => return Ok(Committed::Conflict(format!("{ident} was changed by another writer"))),
            None => return Err(self.err(&format!("commit to {ident}"), "the table was dropped")),
        };
        let (metadata, at) = match next_metadata(base, requirements, updates)
            .await
            .map_err(|e| self.err(&format!("cannot update {ident}"), e))?
        {
            Ok(next) => next,
            Err(why) => return Ok(Committed::Conflict(why)),
        };
        let mut body = json!({
            "DatabaseName": db,
            "TableInput": Self::table_input(ident, &metadata, &at.to_string(), Some(&current)),
            "SkipArchive": false,
        });
        if let Some(v) = version {
            body["VersionId"] = json!(v);
        }
        match self.call("UpdateTable", body).await? {
            Ok(_) => Ok(Committed::Done(Box::new(table(ident, base.file_io(), metadata, at.to_string())?))),
            Err(e) if e.kind == "ConcurrentModificationException" => {
                drop(base.file_io().delete(at.to_string()).await);
                Ok(Committed::Conflict(format!("{ident}: {}", e.message)))
            }
            Err(e) => Err(self.err(&format!("UpdateTable {ident}"), format!("{}: {}", e.kind, e.message))),
        }
    }
}

/// The Hive type name Glue shows for an Iceberg type (what query engines list as columns).
fn hive_type(t: &Type) -> String {
    match t {
        Type::Primitive(p) => match p {
            PrimitiveType::Boolean => "boolean".into(),
            PrimitiveType::Int => "int".into(),
            PrimitiveType::Long => "bigint".into(),
            PrimitiveType::Float => "float".into(),
            PrimitiveType::Double => "double".into(),
            PrimitiveType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            PrimitiveType::Date => "date".into(),
            PrimitiveType::Timestamp | PrimitiveType::TimestampNs => "timestamp".into(),
            PrimitiveType::Timestamptz | PrimitiveType::TimestamptzNs => "timestamp".into(),
            PrimitiveType::Binary | PrimitiveType::Fixed(_) => "binary".into(),
            _ => "string".into(),
        },
        Type::Struct(_) | Type::List(_) | Type::Map(_) => "string".into(),
    }
}
