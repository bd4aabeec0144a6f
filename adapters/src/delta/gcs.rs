//! Google Cloud Storage Delta tables (`gs://bucket/path`) through object_store's GCS client.
//!
//! Credentials come from the environment as for Google's tools
//! (`GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_SERVICE_ACCOUNT_PATH` naming a service-account key file,
//! `GOOGLE_SERVICE_ACCOUNT_KEY` holding one, or application default credentials);
//! `GOOGLE_BASE_URL` points at another endpoint (an emulator) and `GOOGLE_SKIP_SIGNATURE=true`
//! sends requests unauthenticated. Commits create the next log entry only if it does not exist
//! (`ifGenerationMatch=0`), so concurrent writers never overwrite each other's versions.

use std::sync::Arc;

use deltalake::logstore::object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use deltalake::{DeltaResult, DeltaTableError, Path};
use url::Url;

/// Builds GCS stores rooted at the URL's bucket.
struct GcsStores;

impl ObjectStoreFactory for GcsStores {
    fn parse_url_opts(&self, url: &Url, config: &StorageConfig) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut builder = GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
        for (k, v) in &config.raw {
            if let Ok(key) = k.to_ascii_lowercase().parse::<GoogleConfigKey>() {
                builder = builder.with_config(key, v);
            }
        }
        let store = builder.build().map_err(|e| DeltaTableError::ObjectStore { source: e })?;
        Ok((Arc::new(store), super::cloud::path_of(url)?))
    }
}

/// Registers the GCS handler with delta-rs (once per process).
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| super::cloud::register(&["gs"], Arc::new(GcsStores)));
}
