//! `s3://` (and `s3a://`) Delta tables through object_store's S3 client.
//!
//! Credentials, region and endpoint come from the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` for
//! S3-compatible stores, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint), as for the AWS tools.
//! Commits are made with S3's conditional writes (`If-None-Match: *` on the next log entry), so
//! two writers cannot both claim one table version and no lock table is needed.

use std::sync::Arc;

use deltalake::logstore::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
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
        Ok((Arc::new(store), super::cloud::path_of(url)?))
    }
}

/// Registers the S3 handlers with delta-rs (once per process).
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| super::cloud::register(&["s3", "s3a"], Arc::new(S3Stores)));
}
