//! Where an Iceberg table's files live: local paths (`file://` or plain) and `s3://` (`s3a://`)
//! objects, through object_store's S3 client.
//!
//! S3 settings come from the environment as for the AWS tools (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` for
//! S3-compatible stores, `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint), overridden by the
//! FileIO properties Iceberg catalogs hand out (`s3.endpoint`, `s3.access-key-id`,
//! `s3.secret-access-key`, `s3.session-token`, `s3.region`, `s3.path-style-access`). Objects
//! are written whole when their writer closes (data files are bounded by the sink's
//! `target_file_size`); every file name is new, so no write replaces another.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use iceberg::io::{
    FileIO, FileIOBuilder, FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use iceberg::{Error, ErrorKind};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// A FileIO reading and writing local and S3 locations, with `props` for S3.
pub(crate) fn file_io(props: HashMap<String, String>) -> FileIO {
    FileIOBuilder::new(Arc::new(LakeStorageFactory)).with_props(props).build()
}

fn io_err(what: &str, path: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{what} {path}: {e}"))
}

/// Builds [`LakeStorage`] from a FileIO's properties.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LakeStorageFactory;

#[typetag::serde]
impl StorageFactory for LakeStorageFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(LakeStorage { props: config.props().clone(), ..LakeStorage::default() }))
    }
}

/// Local files and S3 objects, one S3 client per bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LakeStorage {
    props: HashMap<String, String>,
    #[serde(skip)]
    buckets: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
    #[serde(skip)]
    local: LocalFsStorage,
}

enum Place {
    Local,
    Object(Arc<dyn ObjectStore>, Path),
}

impl LakeStorage {
    fn place(&self, path: &str) -> iceberg::Result<Place> {
        let Some(rest) = path.strip_prefix("s3://").or_else(|| path.strip_prefix("s3a://")) else {
            if path.contains("://") && !path.starts_with("file://") {
                return Err(Error::new(
                    ErrorKind::FeatureUnsupported,
                    format!("{path}: only local paths and s3:// locations are supported"),
                ));
            }
            return Ok(Place::Local);
        };
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let mut buckets = self.buckets.lock().map_err(|_| io_err("storage", path, "poisoned"))?;
        let store = match buckets.get(bucket) {
            Some(s) => s.clone(),
            None => {
                let store: Arc<dyn ObjectStore> =
                    Arc::new(self.s3(bucket).map_err(|e| io_err("S3 bucket", bucket, e))?);
                buckets.insert(bucket.to_string(), store.clone());
                store
            }
        };
        Ok(Place::Object(store, Path::from(key)))
    }

    fn s3(&self, bucket: &str) -> object_store::Result<object_store::aws::AmazonS3> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (k, key) in [
            ("s3.endpoint", AmazonS3ConfigKey::Endpoint),
            ("s3.access-key-id", AmazonS3ConfigKey::AccessKeyId),
            ("s3.secret-access-key", AmazonS3ConfigKey::SecretAccessKey),
            ("s3.session-token", AmazonS3ConfigKey::Token),
            ("s3.region", AmazonS3ConfigKey::Region),
        ] {
            if let Some(v) = self.props.get(k) {
                b = b.with_config(key, v);
            }
        }
        if self.props.get("s3.endpoint").is_some_and(|e| e.starts_with("http://")) {
            b = b.with_allow_http(true);
        }
        if let Some(p) = self.props.get("s3.path-style-access") {
            b = b.with_virtual_hosted_style_request(p != "true");
        }
        b.build()
    }
}

struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

#[async_trait]
impl FileRead for ObjectReader {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store.get_range(&self.path, range).await.map_err(|e| io_err("cannot read", self.path.as_ref(), e))
    }
}

struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    path: Path,
    parts: Vec<Bytes>,
    closed: bool,
}

#[async_trait]
impl FileWrite for ObjectWriter {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.parts.push(bs);
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        if self.closed {
            return Err(io_err("already closed:", self.path.as_ref(), "close"));
        }
        self.closed = true;
        let payload = PutPayload::from_iter(std::mem::take(&mut self.parts));
        self.store.put(&self.path, payload).await.map_err(|e| io_err("cannot write", self.path.as_ref(), e))?;
        Ok(())
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for LakeStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        match self.place(path)? {
            Place::Local => self.local.exists(path).await,
            Place::Object(s, p) => match s.head(&p).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(io_err("cannot stat", path, e)),
            },
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        match self.place(path)? {
            Place::Local => self.local.metadata(path).await,
            Place::Object(s, p) => {
                let meta = s.head(&p).await.map_err(|e| io_err("cannot stat", path, e))?;
                Ok(FileMetadata { size: meta.size })
            }
        }
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        match self.place(path)? {
            Place::Local => self.local.read(path).await,
            Place::Object(s, p) => {
                let got = s.get(&p).await.map_err(|e| io_err("cannot read", path, e))?;
                got.bytes().await.map_err(|e| io_err("cannot read", path, e))
            }
        }
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        match self.place(path)? {
            Place::Local => self.local.reader(path).await,
            Place::Object(store, path) => Ok(Box::new(ObjectReader { store, path })),
        }
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        match self.place(path)? {
            Place::Local => self.local.write(path, bs).await,
            Place::Object(s, p) => {
                s.put(&p, PutPayload::from(bs)).await.map_err(|e| io_err("cannot write", path, e))?;
                Ok(())
            }
        }
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        match self.place(path)? {
            Place::Local => self.local.writer(path).await,
            Place::Object(store, path) => Ok(Box::new(ObjectWriter { store, path, parts: Vec::new(), closed: false })),
        }
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        match self.place(path)? {
            Place::Local => self.local.delete(path).await,
            Place::Object(s, p) => match s.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(io_err("cannot delete", path, e)),
            },
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        match self.place(path)? {
            Place::Local => self.local.delete_prefix(path).await,
            Place::Object(s, p) => {
                let mut listed = s.list(Some(&p));
                while let Some(meta) = listed.next().await {
                    let meta = meta.map_err(|e| io_err("cannot list", path, e))?;
                    match s.delete(&meta.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(io_err("cannot delete", meta.location.as_ref(), e)),
                    }
                }
                Ok(())
            }
        }
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(p) = paths.next().await {
            self.delete(&p).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}
