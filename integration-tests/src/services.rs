//! Where the real services of `deploy/services.sh` listen, and a loud
//! failure when one is not running (tests never skip silently).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The S3 emulator's endpoint (`LIFEBOAT_TEST_S3_ENDPOINT`, default
/// `http://127.0.0.1:9000`); panics with what to run if nothing answers.
pub fn s3_endpoint() -> String {
    let endpoint = std::env::var("LIFEBOAT_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into());
    require(&endpoint, "the S3 emulator");
    endpoint
}

fn require(endpoint: &str, what: &str) {
    let hostport = endpoint.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/');
    let reachable = hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    assert!(reachable, "{what} is not running at {endpoint}: start it with `deploy/services.sh start`");
}

/// Where `deploy/services.sh` keeps state, logs and PID files
/// (`LIFEBOAT_SERVICES_DIR`, default `/var/tmp/lifeboat-services`).
pub fn services_dir() -> std::path::PathBuf {
    std::env::var_os("LIFEBOAT_SERVICES_DIR").map_or_else(|| "/var/tmp/lifeboat-services".into(), Into::into)
}

/// Credentials the emulator accepts, set for this process and its children.
pub fn s3_test_credentials() {
    // SAFETY (edition 2024 marks set_var unsafe): tests set these once, to
    // the same values, before starting any thread that reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "lifeboat-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "lifeboat-test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
}

/// A bucket name unique to this test run.
pub fn unique_bucket(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("lb-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// The S3 emulator's endpoint and a fresh bucket in it named after `tag`,
/// with the test credentials set.
pub fn s3_test_bucket(rt: &tokio::runtime::Runtime, tag: &str) -> (String, String) {
    let endpoint = s3_endpoint();
    s3_test_credentials();
    let bucket = unique_bucket(tag);
    rt.block_on(create_bucket(&endpoint, &bucket));
    (endpoint, bucket)
}

/// Creates `bucket` in the emulator at `endpoint`.
pub async fn create_bucket(endpoint: &str, bucket: &str) {
    let client = s3_client(endpoint).await;
    client.create_bucket().bucket(bucket).send().await.expect("creating a test bucket");
}

/// Deletes `bucket` and everything in it (best effort: a benchmark's clean-up).
pub async fn delete_bucket(endpoint: &str, bucket: &str) {
    let client = s3_client(endpoint).await;
    let mut pages = client.list_objects_v2().bucket(bucket).into_paginator().send();
    while let Some(Ok(page)) = pages.next().await {
        for obj in page.contents() {
            if let Some(key) = obj.key() {
                let _ = client.delete_object().bucket(bucket).key(key).send().await;
            }
        }
    }
    let _ = client.delete_bucket().bucket(bucket).send().await;
}

/// A plain SDK client for the emulator, for tests that look behind the store.
pub async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    s3_test_credentials();
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let conf = aws_sdk_s3::config::Builder::from(&shared).endpoint_url(endpoint).force_path_style(true).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Azurite's blob endpoint (`LIFEBOAT_TEST_AZURE_ENDPOINT`, default
/// `http://127.0.0.1:10000/devstoreaccount1`); panics with what to run if
/// nothing answers.
pub fn azure_endpoint() -> String {
    let endpoint = std::env::var("LIFEBOAT_TEST_AZURE_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:10000/devstoreaccount1".into());
    let hostport = endpoint.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
    require(&hostport, "Azurite (the Azure Blob emulator)");
    endpoint
}

/// Azurite's published development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (public, not a secret).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The connection string of Azurite's development account at `endpoint`.
pub fn azurite_connection_string(endpoint: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
    )
}

/// Deletes a container of Azurite at `endpoint` (best effort).
pub async fn delete_container(endpoint: &str, container: &str) {
    let mut url = url::Url::parse(endpoint).expect("Azurite endpoint");
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(container);
    }
    let sas = lifeboat_common::store::account_sas(AZURITE_ACCOUNT, AZURITE_KEY, 1).expect("signing a SAS");
    url.set_query(Some(&sas));
    if let Ok(client) = azure_storage_blob::BlobContainerClient::new(url, None, None) {
        let _ = client.delete(None).await;
    }
}

/// Creates a fresh container in Azurite at `endpoint` and returns its name.
pub async fn azure_container(endpoint: &str, tag: &str) -> String {
    use lifeboat_common::store::{AzureCredential, AzureLocation, AzureStore, ObjectStore};
    let container = unique_bucket(tag);
    let location = AzureLocation {
        account: AZURITE_ACCOUNT.into(),
        container: container.clone(),
        prefix: String::new(),
        endpoint: Some(endpoint.into()),
        data_tier: None,
    };
    let admin = AzureStore::connect(location, AzureCredential::AccountKey(AZURITE_KEY.into())).expect("Azurite client");
    admin.create_container().await.expect("creating a test container");
    container
}

/// An Azurite of one test's own, on its own port and data directory, that
/// the test can kill (SIGKILL) and start again with its data intact. Azurite
/// saves its metadata every 5 s, so a test waits [`AZURITE_SAVE_INTERVAL`]
/// before a kill whose survivors it checks.
pub struct OwnAzurite {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

/// How long Azurite may hold metadata in memory before saving it.
pub const AZURITE_SAVE_INTERVAL: Duration = Duration::from_secs(8);

impl OwnAzurite {
    /// A port that nothing listens on yet, and the data directory; not started.
    pub fn new(dir: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("finding a free port");
        OwnAzurite { port, dir: dir.to_owned(), child: None }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The blob endpoint (answers only while started).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// Starts it and waits until it answers.
    pub fn start(&mut self) {
        let bin = services_dir().join("azurite/node_modules/.bin/azurite-blob");
        assert!(bin.exists(), "Azurite is not installed at {}: run `deploy/services.sh install`", bin.display());
        let child = std::process::Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &self.port.to_string(), "--location"])
            .arg(&self.dir)
            .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting Azurite");
        self.child = Some(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..200 {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("Azurite did not start on port {}", self.port);
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Azurite's launcher is node itself: the pid is the server.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnAzurite {
    fn drop(&mut self) {
        self.kill();
    }
}
