//! `s3://` (and `s3a://`) Delta tables through object_store's S3 client.
//!
//! Credentials, region and endpoint come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` for
//! S3-compatible stores, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint), as for the AWS tools.
//! Commits are made with S3's conditional writes (`If-None-Match: *` on the next log entry), so
//! two writers cannot both claim one table version and no lock table is needed.

use std::sync::Arc;

use deltalake::logstore::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use deltalake::logstore::{
    default_logstore, logstore_factories, object_store_factories, LogStore, LogStoreFactory, ObjectStoreFactory,
    ObjectStoreRef, StorageConfig,
};
use deltalake::{DeltaResult, DeltaTableError, Path};
use url::Url;

/// Builds S3 stores rooted at the URL's bucket.
struct S3Stores;

impl ObjectStoreFactory for S3Stores {
    fn parse_url_opts(&self, url: &Url, config: &StorageConfig) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder =
            AmazonS3Builder::from_env().with_url(url.as_str()).with_conditional_put(S3ConditionalPut::ETagMatch);
        for (k, v) in &config.raw {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, v);
            }
        }
        let store = builder.build().map_err(|e| DeltaTableError::ObjectStore { source: e })?;
        let path = Path::from_url_path(url.path())
            .map_err(|e| DeltaTableError::InvalidTableLocation(format!("{url}: {e}")))?;
        Ok((Arc::new(store), path))
    }
}

/// The default log store (conditional put of each commit) for S3 locations.
struct S3Logs;

impl LogStoreFactory for S3Logs {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}

/// Registers the S3 handlers with delta-rs (once per process).
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            if let Ok(u) = Url::parse(scheme) {
                object_store_factories().insert(u.clone(), Arc::new(S3Stores));
                logstore_factories().insert(u, Arc::new(S3Logs));
            }
        }
    });
}
