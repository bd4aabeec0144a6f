//! Iceberg catalogs the sink commits through.
//!
//! A catalog maps a table name to the location of the table's current metadata file; a commit
//! writes a new metadata file and swaps the pointer only if it still points at the metadata the
//! commit was built on (compare-and-swap), so concurrent writers never lose each other's
//! snapshots.
//!
//! The SQL catalog reads and writes the tables pyiceberg's `SqlCatalog` (and iceberg-java's
//! `JdbcCatalog`) use, so the sink works on a catalog database those tools made, and they read
//! what the sink commits:
//! `iceberg_tables(catalog_name, table_namespace, table_name, metadata_location,
//! previous_metadata_location[, iceberg_type])` and `iceberg_namespace_properties(catalog_name,
//! namespace, property_key, property_value)`; multi-level namespaces are stored joined with
//! dots. A new database gets the current layout (with `iceberg_type`, as pyiceberg 0.10+ and
//! iceberg-java make it); one without that column (older pyiceberg) is used as it is.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use iceberg::io::FileIO;
use iceberg::spec::{TableMetadata, TableMetadataBuilder};
use iceberg::table::Table;
use iceberg::{MetadataLocation, Runtime, TableCreation, TableIdent, TableRequirement, TableUpdate};
use rusqlite::Connection;

use crate::{ConnectorError, Result};

/// Where the catalog lives, from `catalog_uri` and `'catalog.type'`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CatalogTarget {
    /// A SQLite catalog database (`sqlite:////abs/path.db`, SQLAlchemy's form).
    Sqlite(PathBuf),
    /// A Postgres catalog database (`postgresql://…`, with or without SQLAlchemy's `+driver`).
    Postgres(String),
    /// A REST catalog at this base URL.
    Rest(String),
    /// The AWS Glue Data Catalog behind this endpoint.
    Glue(String),
}

impl CatalogTarget {
    /// Parses `catalog_uri` given the optional `'catalog.type'` override.
    pub(crate) fn parse(uri: &str, kind: Option<&str>) -> Result<Self> {
        let kind = match kind {
            Some(k) => k.to_string(),
            // The spec's form for Glue: its regional endpoint.
            None if url::Url::parse(uri).ok().and_then(|u| u.host_str().map(str::to_string)).is_some_and(|h| {
                h.starts_with("glue.") && (h.ends_with(".amazonaws.com") || h.ends_with(".amazonaws.com.cn"))
            }) =>
            {
                "glue".into()
            }
            None if uri.starts_with("http://") || uri.starts_with("https://") => "rest".into(),
            None if uri.starts_with("sqlite:")
                || matches!(
                    uri.split("://").next().and_then(|s| s.split('+').next()),
                    Some("postgresql" | "postgres")
                ) =>
            {
                "sql".into()
            }
            None => {
                return Err(ConnectorError::Config(format!(
                    "'catalog_uri' = '{uri}' is not a catalog this sink knows: use a SQL catalog \
                     ('sqlite:////abs/path/catalog.db' or 'postgresql://user:pw@host/db'), a REST catalog \
                     ('https://…'), Glue ('https://glue.<region>.amazonaws.com'), or set 'catalog.type'"
                )))
            }
        };
        match kind.as_str() {
            "sql" => {
                if let Some(path) = uri.strip_prefix("sqlite:///") {
                    if path.is_empty() || path == ":memory:" {
                        return Err(ConnectorError::Config(
                            "'catalog_uri': a SQLite catalog needs a file ('sqlite:////abs/path/catalog.db')".into(),
                        ));
                    }
                    return Ok(Self::Sqlite(PathBuf::from(path)));
                }
                if let Some((scheme, rest)) = uri.split_once("://") {
                    let base = scheme.split('+').next().unwrap_or_default();
                    if base == "postgresql" || base == "postgres" {
                        return Ok(Self::Postgres(format!("postgresql://{rest}")));
                    }
                }
                Err(ConnectorError::Config(format!(
                    "'catalog_uri' = '{uri}': the SQL catalog supports SQLite ('sqlite:////abs/path/catalog.db') \
                     and Postgres ('postgresql://user:password@host:5432/database') databases"
                )))
            }
            "rest" => {
                let url = url::Url::parse(uri).map_err(|e| {
                    ConnectorError::Config(format!("'catalog_uri' = '{uri}' is not a URL for a REST catalog: {e}"))
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(ConnectorError::Config(format!(
                        "'catalog_uri' = '{uri}': a REST catalog is an http:// or https:// URL"
                    )));
                }
                Ok(Self::Rest(uri.to_string()))
            }
            "glue" => {
                if !cfg!(feature = "iceberg-glue") {
                    return Err(ConnectorError::Config(
                        "'catalog.type' = 'glue' needs the iceberg-glue feature of this build".into(),
                    ));
                }
                let url = url::Url::parse(uri).map_err(|e| {
                    ConnectorError::Config(format!("'catalog_uri' = '{uri}' is not a Glue endpoint URL: {e}"))
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(ConnectorError::Config(format!(
                        "'catalog_uri' = '{uri}': a Glue catalog is its endpoint URL \
                         (e.g. 'https://glue.us-east-1.amazonaws.com')"
                    )));
                }
                Ok(Self::Glue(uri.to_string()))
            }
            "hms" => Err(ConnectorError::Config(format!(
                "'catalog.type' = '{kind}' is not supported by this build of the Iceberg sink; use a SQL catalog \
                 ('catalog_uri' = 'sqlite:////abs/path/catalog.db')"
            ))),
            other => Err(ConnectorError::Config(format!(
                "'catalog.type' = '{other}' is not a catalog type: use 'sql', 'rest', 'glue' or 'hms'"
            ))),
        }
    }
}

/// The result of a compare-and-swap commit.
pub(crate) enum Committed {
    /// The table as of the new metadata.
    Done(Box<Table>),
    /// Another writer committed first (or a requirement no longer holds): reload and retry.
    Conflict(String),
}

/// The database of a SQL catalog.
pub(crate) enum SqlBackend {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A Postgres database (connection parameters; the URI as shown, without the password).
    #[cfg(feature = "iceberg-postgres")]
    Postgres(crate::postgres::wire::ConnectParams, String),
}

impl std::fmt::Debug for SqlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SqlBackend {
    fn describe(&self) -> String {
        match self {
            SqlBackend::Sqlite(p) => format!("sqlite:///{}", p.display()),
            #[cfg(feature = "iceberg-postgres")]
            SqlBackend::Postgres(_, shown) => shown.clone(),
        }
    }
}

/// A row of a catalog query: each column as text (None for NULL).
type TextRow = Vec<Option<String>>;

/// A SQL string literal (quotes doubled; both SQLite and Postgres read it so).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL catalog in a SQLite or Postgres database.
#[derive(Debug)]
pub(crate) struct SqlCatalog {
    db: SqlBackend,
    name: String,
}

impl SqlCatalog {
    /// The catalog named `name` in the database `db` (its tables created if absent).
    pub(crate) fn new(db: SqlBackend, name: String) -> Self {
        Self { db, name }
    }

    /// A short description for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{} (catalog '{}')", self.db.describe(), self.name)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Failed(format!("Iceberg catalog {}: {what}: {e}", self.describe()))
    }

    /// Runs each statement of `sql` in one session (the catalog's tables made first if absent)
    /// and returns the rows of each, as text. A failing statement fails the call, unless it is
    /// marked `tolerant` (its result is then None).
    async fn run(&self, sql: &[(&str, bool)]) -> Result<Vec<Option<Vec<TextRow>>>> {
        const TABLES: [&str; 2] = [
            "CREATE TABLE IF NOT EXISTS iceberg_tables (
                catalog_name VARCHAR(255) NOT NULL,
                table_namespace VARCHAR(255) NOT NULL,
                table_name VARCHAR(255) NOT NULL,
                metadata_location VARCHAR(1000),
                previous_metadata_location VARCHAR(1000),
                iceberg_type VARCHAR(5),
                PRIMARY KEY (catalog_name, table_namespace, table_name))",
            "CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
                catalog_name VARCHAR(255) NOT NULL,
                namespace VARCHAR(255) NOT NULL,
                property_key VARCHAR(255) NOT NULL,
                property_value VARCHAR(1000) NOT NULL,
                PRIMARY KEY (catalog_name, namespace, property_key))",
        ];
        match &self.db {
            SqlBackend::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    if !dir.as_os_str().is_empty() && !dir.exists() {
                        return Err(self.err("cannot open", format!("directory {} does not exist", dir.display())));
                    }
                }
                let conn = Connection::open(path).map_err(|e| self.err("cannot open", e))?;
                conn.busy_timeout(Duration::from_secs(10)).map_err(|e| self.err("cannot open", e))?;
                let query = |q: &str| -> rusqlite::Result<Vec<TextRow>> {
                    let mut stmt = conn.prepare(q)?;
                    let n = stmt.column_count();
                    let rows = stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Option<String>>(i)).collect())?;
                    rows.collect()
                };
                for t in TABLES {
                    query(t).map_err(|e| self.err("cannot create the catalog tables", e))?;
                }
                let mut out = Vec::new();
                for (q, tolerant) in sql {
                    match query(q) {
                        Ok(rows) => out.push(Some(rows)),
                        Err(_) if *tolerant => out.push(None),
                        Err(e) => return Err(self.err("query", e)),
                    }
                }
                Ok(out)
            }
            #[cfg(feature = "iceberg-postgres")]
            SqlBackend::Postgres(params, _) => {
                let mut conn = crate::postgres::wire::Connection::connect(params, "").await.map_err(|e| {
                    ConnectorError::Unavailable(format!("Iceberg catalog {}: cannot connect: {e}", self.describe()))
                })?;
                for t in TABLES {
                    conn.query(t).await.map_err(|e| self.err("cannot create the catalog tables", e))?;
                }
                let mut out = Vec::new();
                for (q, tolerant) in sql {
                    match conn.query(q).await {
                        Ok(rows) => out.push(Some(rows)),
                        Err(_) if *tolerant => out.push(None),
                        Err(e) => {
                            conn.terminate().await;
                            return Err(self.err("query", e));
                        }
                    }
                }
                conn.terminate().await;
                Ok(out)
            }
        }
    }

    /// Runs one statement and returns its rows.
    async fn run1(&self, sql: &str) -> Result<Vec<TextRow>> {
        Ok(self.run(&[(sql, false)]).await?.pop().flatten().unwrap_or_default())
    }

    /// Whether the catalog's table has the `iceberg_type` column (tables vs views).
    async fn typed(&self) -> Result<bool> {
        Ok(self.run(&[("SELECT iceberg_type FROM iceberg_tables LIMIT 0", true)]).await?.pop().flatten().is_some())
    }

    fn namespace(ident: &TableIdent) -> String {
        ident.namespace.join(".")
    }

    fn key(&self, ident: &TableIdent) -> String {
        format!(
            "catalog_name = {} AND table_namespace = {} AND table_name = {}",
            lit(&self.name),
            lit(&Self::namespace(ident)),
            lit(&ident.name)
        )
    }

    /// The metadata location of `ident`, if the table exists.
    async fn location_of(&self, ident: &TableIdent) -> Result<Option<String>> {
        let views_apart =
            if self.typed().await? { " AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)" } else { "" };
        let rows = self
            .run1(&format!("SELECT metadata_location FROM iceberg_tables WHERE {}{views_apart}", self.key(ident)))
            .await?;
        Ok(rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()))
    }

    /// The `location` property of the table's namespace, if set.
    pub(crate) async fn namespace_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        let rows = self
            .run1(&format!(
                "SELECT property_value FROM iceberg_namespace_properties \
                 WHERE catalog_name = {} AND namespace = {} AND property_key = 'location'",
                lit(&self.name),
                lit(&Self::namespace(ident))
            ))
            .await?;
        Ok(rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()))
    }

    /// Loads the table, or None when the catalog does not have it.
    pub(crate) async fn load(&self, ident: &TableIdent, file_io: &FileIO) -> Result<Option<Table>> {
        let Some(location) = self.location_of(ident).await? else { return Ok(None) };
        let metadata = TableMetadata::read_from(file_io, &location)
            .await
            .map_err(|e| self.err(&format!("cannot read the metadata of {ident} at {location}"), e))?;
        Ok(Some(table(ident, file_io, metadata, location)?))
    }

    /// Creates the table (and its namespace, as pyiceberg does: an `exists` property), or loads
    /// it when another writer created it first.
    pub(crate) async fn create(&self, ident: &TableIdent, creation: TableCreation, file_io: &FileIO) -> Result<Table> {
        let (metadata, at) =
            first_metadata(creation, file_io).await.map_err(|e| self.err(&format!("cannot create {ident}"), e))?;
        let ns = lit(&Self::namespace(ident));
        let (column, value) = if self.typed().await? { (", iceberg_type", ", 'TABLE'") } else { ("", "") };
        let namespace = format!(
            "INSERT INTO iceberg_namespace_properties (catalog_name, namespace, property_key, property_value) \
             VALUES ({}, {ns}, 'exists', 'true') ON CONFLICT DO NOTHING",
            lit(&self.name)
        );
        let insert = format!(
            "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, metadata_location, \
             previous_metadata_location{column}) VALUES ({}, {ns}, {}, {}, NULL{value}) ON CONFLICT DO NOTHING \
             RETURNING table_name",
            lit(&self.name),
            lit(&ident.name),
            lit(&at.to_string())
        );
        let done = self.run(&[(&namespace, false), (&insert, false)]).await?;
        let inserted = done.get(1).and_then(|r| r.as_ref()).is_some_and(|rows| !rows.is_empty());
        if !inserted {
            // Created by another writer meanwhile: theirs is the table.
            drop(file_io.delete(at.to_string()).await);
            return self
                .load(ident, file_io)
                .await?
                .ok_or_else(|| self.err(&format!("cannot create {ident}"), "the table vanished"));
        }
        table(ident, file_io, metadata, at.to_string())
    }

    /// Applies `updates` to `base` if `requirements` hold, writes the new metadata file and
    /// moves the catalog's pointer from `base`'s metadata to it atomically.
    pub(crate) async fn commit(
        &self,
        base: &Table,
        requirements: &[TableRequirement],
        updates: Vec<TableUpdate>,
    ) -> Result<Committed> {
        let ident = base.identifier();
        let current = base.metadata_location_result().map_err(|e| self.err("commit", e))?.to_string();
        let (metadata, at) = match next_metadata(base, requirements, updates)
            .await
            .map_err(|e| self.err(&format!("cannot update {ident}"), e))?
        {
            Ok(next) => next,
            Err(why) => return Ok(Committed::Conflict(why)),
        };
        let swapped = self
            .run1(&format!(
                "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} \
                 WHERE {} AND metadata_location = {} RETURNING table_name",
                lit(&at.to_string()),
                lit(&current),
                self.key(ident),
                lit(&current)
            ))
            .await?;
        if swapped.is_empty() {
            drop(base.file_io().delete(at.to_string()).await);
            return Ok(Committed::Conflict(format!("{ident} was changed by another writer")));
        }
        Ok(Committed::Done(Box::new(table(ident, base.file_io(), metadata, at.to_string())?)))
    }

    /// The catalog database's directory (the default warehouse of tables the sink creates), for
    /// SQLite.
    pub(crate) fn directory(&self) -> Option<&Path> {
        match &self.db {
            SqlBackend::Sqlite(p) => Some(p.parent().unwrap_or(Path::new("/"))),
            #[cfg(feature = "iceberg-postgres")]
            SqlBackend::Postgres(..) => None,
        }
    }
}

/// The catalog a sink commits through.
#[derive(Debug)]
pub(crate) enum Catalog {
    /// A SQL catalog (SQLite).
    Sql(SqlCatalog),
    /// A REST catalog.
    Rest(super::rest::RestCatalog),
    /// The AWS Glue Data Catalog.
    #[cfg(feature = "iceberg-glue")]
    Glue(super::glue::GlueCatalog),
}

impl Catalog {
    /// A short description for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Catalog::Sql(c) => c.describe(),
            Catalog::Rest(c) => c.describe(),
            #[cfg(feature = "iceberg-glue")]
            Catalog::Glue(c) => c.describe(),
        }
    }

    /// The `location` property of the table's namespace, if set.
    pub(crate) async fn namespace_location(&self, ident: &TableIdent) -> Result<Option<String>> {
        match self {
            Catalog::Sql(c) => c.namespace_location(ident).await,
            Catalog::Rest(c) => c.namespace_location(ident).await,
            #[cfg(feature = "iceberg-glue")]
            Catalog::Glue(c) => c.namespace_location(ident).await,
        }
    }

    /// Loads the table, or None when the catalog does not have it.
    pub(crate) async fn load(&self, ident: &TableIdent, file_io: &FileIO) -> Result<Option<Table>> {
        match self {
            Catalog::Sql(c) => c.load(ident, file_io).await,
            Catalog::Rest(c) => c.load(ident, file_io).await,
            #[cfg(feature = "iceberg-glue")]
            Catalog::Glue(c) => c.load(ident, file_io).await,
        }
    }

    /// Creates the table, or loads it when another writer created it first.
    pub(crate) async fn create(&self, ident: &TableIdent, creation: TableCreation, file_io: &FileIO) -> Result<Table> {
        match self {
            Catalog::Sql(c) => c.create(ident, creation, file_io).await,
            Catalog::Rest(c) => c.create(ident, creation, file_io).await,
            #[cfg(feature = "iceberg-glue")]
            Catalog::Glue(c) => c.create(ident, creation, file_io).await,
        }
    }

    /// Commits `updates` on top of `base` if `requirements` still hold.
    pub(crate) async fn commit(
        &self,
        base: &Table,
        requirements: &[TableRequirement],
        updates: Vec<TableUpdate>,
    ) -> Result<Committed> {
        match self {
            Catalog::Sql(c) => c.commit(base, requirements, updates).await,
            Catalog::Rest(c) => c.commit(base, requirements, updates).await,
            #[cfg(feature = "iceberg-glue")]
            Catalog::Glue(c) => c.commit(base, requirements, updates).await,
        }
    }

    /// Where new tables go when neither the sink nor the namespace says: the SQL catalog
    /// database's directory; a REST catalog decides itself (None).
    pub(crate) fn default_warehouse(&self) -> Option<&Path> {
        match self {
            Catalog::Sql(c) => c.directory(),
            Catalog::Rest(_) => None,
            #[cfg(feature = "iceberg-glue")]
            Catalog::Glue(_) => None,
        }
    }
}

/// The first metadata of a table made from `creation`, written under its location.
pub(crate) async fn first_metadata(
    creation: TableCreation,
    file_io: &FileIO,
) -> iceberg::Result<(TableMetadata, MetadataLocation)> {
    let location = creation.location.clone().unwrap_or_default();
    let metadata = TableMetadataBuilder::from_table_creation(creation)?.build()?.metadata;
    let at = MetadataLocation::new_with_metadata(&location, &metadata);
    metadata.write_to(file_io, &at).await?;
    Ok((metadata, at))
}

/// For catalogs that only hold a pointer: checks `requirements` against `base`, applies
/// `updates` and writes the next metadata file; `Err(why)` inside when a requirement fails.
pub(crate) async fn next_metadata(
    base: &Table,
    requirements: &[TableRequirement],
    updates: Vec<TableUpdate>,
) -> iceberg::Result<std::result::Result<(TableMetadata, MetadataLocation), String>> {
    for r in requirements {
        if let Err(e) = r.check(Some(base.metadata())) {
            return Ok(Err(e.to_string()));
        }
    }
    let current = base.metadata_location_result()?.to_string();
    let mut builder = base.metadata().clone().into_builder(Some(current.clone()));
    for u in updates {
        builder = u.apply(builder)?;
    }
    let metadata = builder.build()?.metadata;
    let at = MetadataLocation::from_str(&current)?.with_next_version().with_new_metadata(&metadata);
    metadata.write_to(base.file_io(), &at).await?;
    Ok(Ok((metadata, at)))
}

/// The table at `location` with `metadata`, read and written through `file_io`.
pub(crate) fn table(ident: &TableIdent, file_io: &FileIO, metadata: TableMetadata, location: String) -> Result<Table> {
    let runtime = Runtime::try_current().map_err(|e| ConnectorError::Failed(e.to_string()))?;
    Table::builder()
        .identifier(ident.clone())
        .file_io(file_io.clone())
        .metadata(metadata)
        .metadata_location(location)
        .runtime(runtime)
        .build()
        .map_err(|e| ConnectorError::Failed(format!("Iceberg table {ident}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_uris() {
        assert_eq!(
            CatalogTarget::parse("sqlite:////tmp/x/catalog.db", None).expect("sqlite"),
            CatalogTarget::Sqlite(PathBuf::from("/tmp/x/catalog.db"))
        );
        assert_eq!(
            CatalogTarget::parse("postgresql+psycopg2://u:p@h:5433/cat", None).expect("postgres"),
            CatalogTarget::Postgres("postgresql://u:p@h:5433/cat".into())
        );
        let e = CatalogTarget::parse("sqlite:///:memory:", None).expect_err("memory").to_string();
        assert!(e.contains("needs a file"), "{e}");
        let e = CatalogTarget::parse("thrift://metastore:9083", None).expect_err("thrift").to_string();
        assert!(e.contains("'catalog.type'"), "{e}");
        let e = CatalogTarget::parse("sqlite:////tmp/c.db", Some("nessie")).expect_err("nessie").to_string();
        assert!(e.contains("not a catalog type"), "{e}");
        assert_eq!(
            CatalogTarget::parse("https://cat.example.com/api/catalog", None).expect("rest"),
            CatalogTarget::Rest("https://cat.example.com/api/catalog".into())
        );
        assert_eq!(
            CatalogTarget::parse("https://glue.us-east-1.amazonaws.com", None).expect("glue"),
            CatalogTarget::Glue("https://glue.us-east-1.amazonaws.com".into())
        );
        let e = CatalogTarget::parse("sqlite:////tmp/c.db", Some("rest")).expect_err("not http").to_string();
        assert!(e.contains("http:// or https://"), "{e}");
    }
}
