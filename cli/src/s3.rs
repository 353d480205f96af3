//! A small blocking S3 client: just what `backup`, `restore`, `export` and
//! `import` need to move bundle files to and from `s3://bucket/prefix` on
//! any S3-compatible service.
//!
//! Why this shape: requests are signed by `rusty-s3` (sans-IO, presigned
//! URLs) and sent with `ureq` (blocking, rustls), so the CLI gains no async
//! runtime and no HTTP stack beyond the one the workspace already builds.
//! Every transfer streams between a local file and the service in bounded
//! pieces: a GET is copied to disk as it arrives, an object larger than
//! [`PART_SIZE_BYTES`] is sent as a multipart upload of parts of that size,
//! so memory stays at one part whatever the object's size.
//!
//! Every object this client writes carries the BLAKE3 of its bytes as user
//! metadata (`x-amz-meta-blake3`). That is how a resumed upload knows an
//! object is already there whole (same size, same hash: skipped, not
//! re-sent) and how a download knows the bytes it got are the bytes that
//! were written (a mismatch is [`S3Error::Damaged`], naming the object).
//!
//! Configuration comes from the usual environment variables (see
//! [`S3Config::from_env`]); with an endpoint (any S3-compatible server)
//! requests are path-style, which such servers expect.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusty_s3::{actions::S3Action, Bucket, Credentials, UrlStyle};

/// Objects larger than this are sent as a multipart upload in parts of this
/// size (S3's minimum part size is 5 MiB; 8 MiB keeps memory at one part).
pub const PART_SIZE_BYTES: usize = 8 << 20;

/// Most parts in one multipart upload (S3's limit): objects up to
/// `MAX_PARTS × PART_SIZE_BYTES` (80 GiB).
pub const MAX_PARTS: u16 = 10_000;

/// Longest object key accepted (S3's limit is 1024 bytes; the prefix must
/// leave room for the bundle's own file names).
pub const MAX_PREFIX_BYTES: usize = 768;

/// How long a connection may take to open.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// How long one read or write on a connection may stall.
pub const IO_TIMEOUT_MS: u64 = 120_000;

/// Attempts per request when the service is unreachable or answers 5xx.
pub const MAX_ATTEMPTS: u32 = 3;

/// Longest error body read from the service (its XML `Code` and `Message`).
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;

/// Longest listing page body read (1000 keys of up to 1 KiB each, plus XML).
const MAX_LIST_BODY_BYTES: u64 = 4 << 20;

/// How long each signed request URL stays valid.
const SIGNATURE_VALID_MS: u64 = 3_600_000;

/// What to do about a damaged object.
const REWRITE: &str = "back up (or export) again, or restore from another copy";

/// The metadata header carrying an object's BLAKE3 (64 hex digits).
const BLAKE3_HEADER: &str = "x-amz-meta-blake3";

/// Errors of the object-storage client. Each names the URL or object and
/// says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// The `s3://` URL does not parse.
    #[error("{url}: {detail}; write it as s3://BUCKET/PREFIX (a bucket name of 3 to 63 lowercase letters, digits, dots and hyphens)")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// A credential variable is not set.
    #[error("{url}: {variable} is not set; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary credentials)")]
    MissingCredentials {
        /// The URL being opened.
        url: String,
        /// The variable missing.
        variable: &'static str,
    },
    /// `AWS_ENDPOINT_URL(_S3)` or the region does not make an endpoint.
    #[error("endpoint {endpoint:?}: {detail}; set AWS_ENDPOINT_URL to http(s)://HOST[:PORT] of the service")]
    BadEndpoint {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        detail: String,
    },
    /// The bucket does not exist.
    #[error("s3://{bucket}: no such bucket at {endpoint}; create it first, or check the name and AWS_ENDPOINT_URL")]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
        /// The endpoint asked.
        endpoint: String,
    },
    /// The service refused the credentials.
    #[error("{object}: access denied ({code}: {message}); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's policy")]
    AccessDenied {
        /// The object or bucket.
        object: String,
        /// The service's error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The service answered with another error.
    #[error("{object}: the service answered {status} {code}: {message}")]
    Service {
        /// The object or bucket.
        object: String,
        /// The HTTP status.
        status: u16,
        /// The service's error code (empty if it sent none).
        code: String,
        /// Its message.
        message: String,
    },
    /// The service could not be reached, or the connection failed.
    #[error("{object}: {detail} (after {attempts} attempt(s)); check AWS_ENDPOINT_URL and the network, then run the command again (it resumes)")]
    Transport {
        /// The object or bucket.
        object: String,
        /// What failed.
        detail: String,
        /// Attempts made.
        attempts: u32,
    },
    /// An object the operation needs is missing.
    #[error("{object}: no such object; {hint}")]
    Missing {
        /// The object.
        object: String,
        /// What it means and what to do.
        hint: String,
    },
    /// An object's bytes are not what was written (size or BLAKE3), or not
    /// what the bundle's manifest vouches for.
    #[error("{object}: damaged: {detail}")]
    Damaged {
        /// The object.
        object: String,
        /// What disagrees.
        detail: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> S3Error + '_ {
    move |source| S3Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// `s3://bucket/prefix`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Url {
    /// Whether `text` is meant as an object-storage location (starts with
    /// `s3://`), so a command takes it as one instead of a directory.
    pub fn is_s3(text: &str) -> bool {
        text.starts_with("s3://")
    }

    /// Parses `s3://bucket[/prefix]`. Errors: [`S3Error::BadUrl`] for a
    /// missing or invalid bucket name, an empty, `.` or `..` path segment,
    /// or a prefix longer than [`MAX_PREFIX_BYTES`].
    pub fn parse(text: &str) -> Result<Self, S3Error> {
        let bad = |detail: &str| S3Error::BadUrl {
            url: text.to_owned(),
            detail: detail.to_owned(),
        };
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.as_bytes()[0].is_ascii_alphanumeric()
            && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
        if !valid_bucket {
            return Err(bad(&format!("{bucket:?} is not a valid bucket name")));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.len() > MAX_PREFIX_BYTES {
            return Err(bad(&format!(
                "the prefix is {} bytes, at most {MAX_PREFIX_BYTES} are accepted",
                prefix.len()
            )));
        }
        if !prefix.is_empty()
            && prefix
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == ".." || s.chars().any(char::is_control))
        {
            return Err(bad(
                "the prefix has an empty, '.', '..' or control-character segment",
            ));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// The same bucket, `sub` appended to the prefix.
    pub fn join(&self, sub: &str) -> Self {
        Self {
            bucket: self.bucket.clone(),
            prefix: self.key(sub),
        }
    }

    /// `s3://bucket/key` of `name`, for messages.
    pub fn display_key(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Where and as whom to reach the service.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`; `None`: AWS itself
    /// (`https://s3.REGION.amazonaws.com`, virtual-hosted style).
    pub endpoint: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl S3Config {
    /// Reads the configuration from the environment. Errors:
    /// [`S3Error::MissingCredentials`] naming the variable that is unset or
    /// empty (`url` is only for the message).
    pub fn from_env(url: &S3Url) -> Result<Self, S3Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let required = |name: &'static str| {
            var(name).ok_or_else(|| S3Error::MissingCredentials {
                url: url.to_string(),
                variable: name,
            })
        };
        Ok(Self {
            endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".to_owned()),
            access_key_id: required("AWS_ACCESS_KEY_ID")?,
            secret_access_key: required("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }
}

/// What is known of an object without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its size.
    pub size_bytes: u64,
    /// The BLAKE3 its writer recorded (this client always records one).
    pub blake3: Option<String>,
}

/// A bucket on a service, with the credentials to use it. Every method is
/// blocking and retries a failed connection or a 5xx answer up to
/// [`MAX_ATTEMPTS`] times.
pub struct S3Client {
    bucket: Bucket,
    credentials: Credentials,
    agent: ureq::Agent,
    endpoint: String,
    /// Test knob (`S3_TEST_PAUSE_PER_OBJECT_MS`): a pause before each
    /// object transferred, so a test's SIGKILL lands mid-transfer.
    pause_per_object_ms: u64,
}

/// Longest pause the test knob accepts.
const MAX_PAUSE_PER_OBJECT_MS: u64 = 10_000;

impl S3Client {
    /// A client for `url`'s bucket. Sends nothing. Errors:
    /// [`S3Error::BadEndpoint`].
    pub fn new(url: &S3Url, config: &S3Config) -> Result<Self, S3Error> {
        let (endpoint, style) = match &config.endpoint {
            Some(endpoint) => (endpoint.clone(), UrlStyle::Path),
            None => (
                format!("https://s3.{}.amazonaws.com", config.region),
                UrlStyle::VirtualHost,
            ),
        };
        let bad = |detail: String| S3Error::BadEndpoint {
            endpoint: endpoint.clone(),
            detail,
        };
        let parsed = endpoint.parse().map_err(|e| bad(format!("{e}")))?;
        let bucket = Bucket::new(parsed, style, url.bucket.clone(), config.region.clone())
            .map_err(|e| bad(format!("{e:?}")))?;
        let credentials = match &config.session_token {
            Some(token) => Credentials::new_with_token(
                config.access_key_id.clone(),
                config.secret_access_key.clone(),
                token.clone(),
            ),
            None => Credentials::new(
                config.access_key_id.clone(),
                config.secret_access_key.clone(),
            ),
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .timeout_read(Duration::from_millis(IO_TIMEOUT_MS))
            .timeout_write(Duration::from_millis(IO_TIMEOUT_MS))
            .build();
        let pause_per_object_ms = std::env::var("S3_TEST_PAUSE_PER_OBJECT_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            .min(MAX_PAUSE_PER_OBJECT_MS);
        Ok(Self {
            bucket,
            credentials,
            agent,
            endpoint,
            pause_per_object_ms,
        })
    }

    /// A client for `url` configured from the environment (see
    /// [`S3Config::from_env`]).
    pub fn from_env(url: &S3Url) -> Result<Self, S3Error> {
        Self::new(url, &S3Config::from_env(url)?)
    }

    fn object_name(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    fn pause(&self) {
        if self.pause_per_object_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.pause_per_object_ms));
        }
    }

    fn sign<'a>(action: impl S3Action<'a>) -> String {
        action
            .sign(Duration::from_millis(SIGNATURE_VALID_MS))
            .to_string()
    }

    /// Sends `request` (again for each attempt), retrying transport failures and 5xx answers. A 4xx answer is
    /// returned as `Err(Status)` for the caller to name.
    fn send(&self, key: &str, request: Request<'_>) -> Result<ureq::Response, Failed> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut call = self.agent.request(request.method, request.url);
            if let Some(hash) = request.blake3 {
                call = call.set(BLAKE3_HEADER, hash);
            }
            let result = match request.body {
                None => call.call(),
                Some(body) => call.send_bytes(body),
            };
            match result {
                Ok(response) => return Ok(response),
                Err(ureq::Error::Status(status, response))
                    if status < 500 || attempt >= MAX_ATTEMPTS =>
                {
                    return Err(Failed::Status(status, Box::new(response)))
                }
                Err(ureq::Error::Transport(t)) if attempt >= MAX_ATTEMPTS => {
                    return Err(Failed::Error(S3Error::Transport {
                        object: self.object_name(key),
                        detail: transport_detail(&t),
                        attempts: attempt,
                    }))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200 << attempt)),
            }
        }
    }

    /// Turns an error answer into an [`S3Error`] naming `key`.
    fn answered(&self, key: &str, failed: Failed) -> S3Error {
        let (status, response) = match failed {
            Failed::Error(e) => return e,
            Failed::Status(status, response) => (status, response),
        };
        let mut body = String::new();
        let _ = response
            .into_reader()
            .take(MAX_ERROR_BODY_BYTES)
            .read_to_string(&mut body);
        let field = |name: &str| {
            body.split_once(&format!("<{name}>"))
                .and_then(|(_, rest)| rest.split_once(&format!("</{name}>")))
                .map(|(v, _)| v.to_owned())
                .unwrap_or_default()
        };
        let (mut code, message) = (field("Code"), field("Message"));
        if code.is_empty() {
            // A HEAD answer has no body to name the error.
            code = format!("HTTP {status}");
        }
        let object = self.object_name(key);
        match (status, code.as_str()) {
            (404, "NoSuchBucket") => S3Error::NoSuchBucket {
                bucket: self.bucket.name().to_owned(),
                endpoint: self.endpoint.clone(),
            },
            (404, _) => S3Error::Missing {
                object,
                hint: "it is not there".to_owned(),
            },
            (401 | 403, _) => S3Error::AccessDenied {
                object,
                code,
                message,
            },
            _ => S3Error::Service {
                object,
                status,
                code,
                message,
            },
        }
    }

    /// Checks that the bucket exists and the credentials reach it. Errors:
    /// [`S3Error::NoSuchBucket`], [`S3Error::AccessDenied`], transport.
    pub fn check_bucket(&self) -> Result<(), S3Error> {
        let url = Self::sign(self.bucket.head_bucket(Some(&self.credentials)));
        match self.send("", Request::new("HEAD", &url)) {
            Ok(_) => Ok(()),
            // A HEAD answer has no body: a 404 is the bucket.
            Err(Failed::Status(404, _)) => Err(S3Error::NoSuchBucket {
                bucket: self.bucket.name().to_owned(),
                endpoint: self.endpoint.clone(),
            }),
            Err(failed) => Err(self.answered("", failed)),
        }
    }

    /// Creates the bucket (for tests and first-time setup).
    pub fn create_bucket(&self) -> Result<(), S3Error> {
        let url = Self::sign(self.bucket.create_bucket(&self.credentials));
        self.send("", Request::new("PUT", &url).body(&[]))
            .map(drop)
            .map_err(|f| self.answered("", f))
    }

    /// The size and recorded BLAKE3 of `key`, or `None` when it does not
    /// exist.
    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        let url = Self::sign(self.bucket.head_object(Some(&self.credentials), key));
        match self.send(key, Request::new("HEAD", &url)) {
            Ok(response) => Ok(Some(info(&response))),
            Err(Failed::Status(404, _)) => Ok(None),
            Err(failed) => Err(self.answered(key, failed)),
        }
    }

    /// Keys under `prefix` (every page, at most `max_keys` in all).
    pub fn list(&self, prefix: &str, max_keys: usize) -> Result<Vec<(String, u64)>, S3Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(prefix);
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let url = Self::sign(action);
            let response = self
                .send(prefix, Request::new("GET", &url))
                .map_err(|f| self.answered(prefix, f))?;
            let parsed = rusty_s3::actions::ListObjectsV2::parse_response_from_reader(
                response.into_reader().take(MAX_LIST_BODY_BYTES),
            )
            .map_err(|e| S3Error::Service {
                object: self.object_name(prefix),
                status: 200,
                code: "unreadable listing".to_owned(),
                message: e.to_string(),
            })?;
            out.extend(parsed.contents.into_iter().map(|c| (c.key, c.size)));
            token = parsed.next_continuation_token;
            if token.is_none() || out.len() >= max_keys {
                out.truncate(max_keys);
                return Ok(out);
            }
        }
    }

    /// Writes `bytes` as `key` (small objects: manifests, indexes), with
    /// their BLAKE3 recorded.
    pub fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), S3Error> {
        self.pause();
        let hash = blake3::hash(bytes).to_hex().to_string();
        let mut action = self.bucket.put_object(Some(&self.credentials), key);
        action.headers_mut().insert(BLAKE3_HEADER, hash.clone());
        let url = Self::sign(action);
        self.send(key, Request::new("PUT", &url).blake3(&hash).body(bytes))
            .map(drop)
            .map_err(|f| self.answered(key, f))
    }

    /// Uploads the local file `path` as `key`, unless `key` holds it already
    /// (same size, same recorded BLAKE3). Returns whether it was sent.
    ///
    /// Streaming: a file of up to [`PART_SIZE_BYTES`] is sent in one PUT,
    /// a larger one as a multipart upload, one part in memory at a time.
    /// The object appears whole or not at all (S3 semantics), so a kill
    /// mid-upload leaves the previous state (an unfinished multipart upload
    /// is never visible; a bucket lifecycle rule removes its parts).
    pub fn put_file(&self, key: &str, path: &Path) -> Result<bool, S3Error> {
        let (size_bytes, hash) = hash_file(path)?;
        if let Some(existing) = self.head(key)? {
            if existing.size_bytes == size_bytes && existing.blake3.as_deref() == Some(&hash) {
                return Ok(false);
            }
        }
        self.pause();
        let mut file = fs::File::open(path).map_err(io_error(path))?;
        if size_bytes <= PART_SIZE_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size_bytes as usize);
            file.read_to_end(&mut bytes).map_err(io_error(path))?;
            let mut action = self.bucket.put_object(Some(&self.credentials), key);
            action.headers_mut().insert(BLAKE3_HEADER, hash.clone());
            let url = Self::sign(action);
            self.send(key, Request::new("PUT", &url).blake3(&hash).body(&bytes))
                .map_err(|f| self.answered(key, f))?;
            return Ok(true);
        }
        self.put_multipart(key, path, &mut file, &hash)?;
        Ok(true)
    }

    fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        file: &mut fs::File,
        hash: &str,
    ) -> Result<(), S3Error> {
        let mut create = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key);
        create.headers_mut().insert(BLAKE3_HEADER, hash.to_owned());
        let url = Self::sign(create);
        let response = self
            .send(key, Request::new("POST", &url).blake3(hash).body(&[]))
            .map_err(|f| self.answered(key, f))?;
        let mut body = String::new();
        response
            .into_reader()
            .take(MAX_ERROR_BODY_BYTES)
            .read_to_string(&mut body)
            .map_err(|e| S3Error::Transport {
                object: self.object_name(key),
                detail: e.to_string(),
                attempts: 1,
            })?;
        let created =
            rusty_s3::actions::CreateMultipartUpload::parse_response(&body).map_err(|e| {
                S3Error::Service {
                    object: self.object_name(key),
                    status: 200,
                    code: "unreadable CreateMultipartUpload answer".to_owned(),
                    message: e.to_string(),
                }
            })?;
        let upload_id = created.upload_id().to_owned();
        let mut etags: Vec<String> = Vec::new();
        let mut part = vec![0u8; PART_SIZE_BYTES];
        loop {
            let filled = read_full(file, &mut part).map_err(io_error(path))?;
            if filled == 0 {
                break;
            }
            let number = u16::try_from(etags.len() + 1)
                .ok()
                .filter(|n| *n <= MAX_PARTS)
                .ok_or_else(|| S3Error::Service {
                    object: self.object_name(key),
                    status: 0,
                    code: "too many parts".to_owned(),
                    message: format!(
                        "{} is more than {MAX_PARTS} parts of {PART_SIZE_BYTES} bytes",
                        path.display()
                    ),
                })?;
            let url = Self::sign(self.bucket.upload_part(
                Some(&self.credentials),
                key,
                number,
                &upload_id,
            ));
            let chunk = &part[..filled];
            let response = self
                .send(key, Request::new("PUT", &url).body(chunk))
                .map_err(|f| self.answered(key, f))?;
            etags.push(response.header("etag").unwrap_or_default().to_owned());
            if filled < PART_SIZE_BYTES {
                break;
            }
        }
        let complete = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            key,
            &upload_id,
            etags.iter().map(String::as_str),
        );
        let url = Self::sign(complete.clone());
        let body = complete.body();
        let response = self
            .send(key, Request::new("POST", &url).body(body.as_bytes()))
            .map_err(|f| self.answered(key, f))?;
        // S3 may answer 200 with an error in the body.
        let mut answer = String::new();
        let _ = response
            .into_reader()
            .take(MAX_ERROR_BODY_BYTES)
            .read_to_string(&mut answer);
        if answer.contains("<Error>") {
            return Err(S3Error::Service {
                object: self.object_name(key),
                status: 200,
                code: "CompleteMultipartUpload failed".to_owned(),
                message: answer,
            });
        }
        Ok(())
    }

    /// Reads a small object whole (at most `max_bytes`): `None` when it
    /// does not exist. Checks its recorded BLAKE3 when it has one.
    pub fn get_bytes(&self, key: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, S3Error> {
        let url = Self::sign(self.bucket.get_object(Some(&self.credentials), key));
        let response = match self.send(key, Request::new("GET", &url)) {
            Ok(response) => response,
            Err(Failed::Status(404, response)) => {
                // Name a missing bucket as such, a missing key as `None`.
                return match self.answered(key, Failed::Status(404, response)) {
                    S3Error::Missing { .. } => Ok(None),
                    other => Err(other),
                };
            }
            Err(failed) => return Err(self.answered(key, failed)),
        };
        let recorded = info(&response).blake3;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| S3Error::Transport {
                object: self.object_name(key),
                detail: e.to_string(),
                attempts: 1,
            })?;
        if bytes.len() as u64 > max_bytes {
            return Err(S3Error::Damaged {
                object: self.object_name(key),
                detail: format!(
                    "larger than the {max_bytes} bytes such a file may have; {REWRITE}"
                ),
            });
        }
        let found = blake3::hash(&bytes).to_hex().to_string();
        if let Some(recorded) = recorded.filter(|r| *r != found) {
            return Err(S3Error::Damaged {
                object: self.object_name(key),
                detail: format!("its BLAKE3 is {found}, it was written as {recorded}; {REWRITE}"),
            });
        }
        Ok(Some(bytes))
    }

    /// Downloads `key` into the local file `path`: streamed to
    /// `path.partial` while hashed, checked (its size against
    /// `expected_bytes` and the object's recorded BLAKE3), synced, then
    /// renamed, so `path` exists only whole and checked. Errors:
    /// [`S3Error::Missing`] (with `missing_hint`), [`S3Error::Damaged`].
    pub fn get_file(
        &self,
        key: &str,
        path: &Path,
        expected_bytes: u64,
        missing_hint: &str,
    ) -> Result<(), S3Error> {
        self.pause();
        let url = Self::sign(self.bucket.get_object(Some(&self.credentials), key));
        let response = match self.send(key, Request::new("GET", &url)) {
            Ok(response) => response,
            Err(failed) => {
                return Err(match self.answered(key, failed) {
                    S3Error::Missing { object, .. } => S3Error::Missing {
                        object,
                        hint: missing_hint.to_owned(),
                    },
                    other => other,
                })
            }
        };
        let recorded = info(&response).blake3;
        let temp = path.with_extension("partial");
        let mut out = fs::File::create(&temp).map_err(io_error(&temp))?;
        let mut hasher = blake3::Hasher::new();
        let mut reader = response.into_reader().take(expected_bytes + 1);
        let mut buffer = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = reader.read(&mut buffer).map_err(|e| S3Error::Transport {
                object: self.object_name(key),
                detail: e.to_string(),
                attempts: 1,
            })?;
            if n == 0 {
                break;
            }
            got += n as u64;
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n]).map_err(io_error(&temp))?;
        }
        let damaged = |detail: String| S3Error::Damaged {
            object: self.object_name(key),
            detail,
        };
        if got != expected_bytes {
            let _ = fs::remove_file(&temp);
            return Err(damaged(format!(
                "{} bytes, the manifest lists {expected_bytes}; {REWRITE}",
                if got > expected_bytes {
                    format!("more than {expected_bytes}")
                } else {
                    got.to_string()
                }
            )));
        }
        let found = hasher.finalize().to_hex().to_string();
        if let Some(recorded) = recorded.filter(|r| *r != found) {
            let _ = fs::remove_file(&temp);
            return Err(damaged(format!(
                "its BLAKE3 is {found}, it was written as {recorded}; {REWRITE}"
            )));
        }
        out.sync_all().map_err(io_error(&temp))?;
        drop(out);
        fs::rename(&temp, path).map_err(io_error(path))?;
        Ok(())
    }
}

/// One request, sent again as is for each attempt.
#[derive(Clone, Copy)]
struct Request<'a> {
    method: &'a str,
    url: &'a str,
    /// The BLAKE3 to record as metadata (signed as a header).
    blake3: Option<&'a str>,
    /// `None`: no body (no Content-Length); `Some(&[])`: an empty one.
    body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    fn new(method: &'a str, url: &'a str) -> Self {
        Self {
            method,
            url,
            blake3: None,
            body: None,
        }
    }

    fn blake3(self, hash: &'a str) -> Self {
        Self {
            blake3: Some(hash),
            ..self
        }
    }

    fn body(self, body: &'a [u8]) -> Self {
        Self {
            body: Some(body),
            ..self
        }
    }
}

/// A request that failed: an error answer (for the caller to name), or an
/// error already named.
enum Failed {
    Status(u16, Box<ureq::Response>),
    Error(S3Error),
}

/// What a transport failure was, without its URL: a signed URL carries
/// the access key id, the signature and any session token, none of which
/// belongs in a message or a log.
fn transport_detail(t: &ureq::Transport) -> String {
    let mut out = t.kind().to_string();
    if let Some(message) = t.message() {
        out.push_str(": ");
        out.push_str(message);
    }
    if let Some(source) = std::error::Error::source(t) {
        out.push_str(": ");
        out.push_str(&source.to_string());
    }
    out
}

fn info(response: &ureq::Response) -> ObjectInfo {
    ObjectInfo {
        size_bytes: response
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        blake3: response.header(BLAKE3_HEADER).map(str::to_owned),
    }
}

/// The size and BLAKE3 of a local file, read in pieces.
pub fn hash_file(path: &Path) -> Result<(u64, String), S3Error> {
    let mut file = fs::File::open(path).map_err(io_error(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
fn read_full(file: &mut fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = file.read(&mut buffer[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    //! URL parsing, with no service: a bad URL must be refused before any
    //! request is sent.

    use super::*;

    #[test]
    fn s3_urls_parse_into_bucket_and_prefix() {
        // The forms an operator writes: with or without a prefix or a
        // trailing slash.
        let url = S3Url::parse("s3://my-bucket/backups/nightly/").unwrap();
        assert_eq!(url.bucket, "my-bucket");
        assert_eq!(url.prefix, "backups/nightly");
        assert_eq!(url.key("backup.json"), "backups/nightly/backup.json");
        assert_eq!(url.to_string(), "s3://my-bucket/backups/nightly");
        let bare = S3Url::parse("s3://my-bucket").unwrap();
        assert_eq!(bare.key("backup.json"), "backup.json");
        assert_eq!(
            bare.join("notes").key("manifest.json"),
            "notes/manifest.json"
        );
    }

    #[test]
    fn an_unreachable_service_is_named_without_the_signed_url() {
        // A presigned URL holds the access key id, the signature and the
        // session token: a connection error must not print it.
        let url = S3Url::parse("s3://bucket/p").unwrap();
        let config = S3Config {
            endpoint: Some("http://127.0.0.1:1".to_owned()),
            region: "us-east-1".to_owned(),
            access_key_id: "AKIDSECRETISH".to_owned(),
            secret_access_key: "secret".to_owned(),
            session_token: Some("SESSIONTOKEN".to_owned()),
        };
        let client = S3Client::new(&url, &config).unwrap();
        match client.check_bucket() {
            Err(err @ S3Error::Transport { attempts, .. }) => {
                assert_eq!(attempts, MAX_ATTEMPTS);
                let text = err.to_string();
                for secret in ["AKIDSECRETISH", "SESSIONTOKEN", "Signature", "127.0.0.1:1/"] {
                    assert!(!text.contains(secret), "{text}");
                }
                assert!(text.contains("AWS_ENDPOINT_URL"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_s3_urls_are_refused_with_the_form_to_use() {
        // Each of these would send requests to a wrong or invalid key.
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper/x",
            "s3://-bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
            "http://bucket/x",
        ] {
            match S3Url::parse(bad) {
                Err(err @ S3Error::BadUrl { .. }) => {
                    assert!(err.to_string().contains("s3://BUCKET/PREFIX"), "{err}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let long = format!("s3://bucket/{}", "a".repeat(MAX_PREFIX_BYTES + 1));
        assert!(matches!(S3Url::parse(&long), Err(S3Error::BadUrl { .. })));
    }
}
