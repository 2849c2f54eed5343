//! Prometheus behind authentication and TLS, for real: Debian's `prometheus`
//! with a web config (TLS, a required client certificate, basic auth), and a
//! bearer-checking HTTPS listener here (Prometheus cannot check bearer
//! tokens), all with certificates `openssl` makes for the test. The operator
//! reads through the same client and `read_revision` a reconcile uses, and
//! judges through the same checks. Skips with a message when prometheus or
//! openssl is missing (`MODELDEPLOY_REQUIRE_TOOLS=1` makes that a failure).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modeldeploy::analysis::checks::{Judge, evaluate_one};
use modeldeploy::analysis::window::VariantData;
use modeldeploy::api::{CheckStatus, CheckVerdict};
use modeldeploy::metrics::prometheus::{PromClient, PromError, RevisionSelector};
use modeldeploy::metrics::prometheus_auth::PromAuthFlags;
use support::{free_port, tools};

/// bcrypt (cost 4) of `right-password`; a fixed test password needs no tool to hash it.
const PASSWORD_HASH: &str = "$2b$04$WgkctYAI.chUccFVUyQ/Zexz6sxwgs3IyCo84KdjzRwvW.ctcXoBG";

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("modeldeploy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.file(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate it signed, and an unrelated CA. None when openssl is missing.
fn make_pki(dir: &Scratch) -> Option<()> {
    if !tools::available("openssl", &["version"], "openssl") {
        return None;
    }
    let d = &dir.0;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subj) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN={ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        openssl(d, &args);
    }
    dir.write(
        "server.ext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );
    dir.write("client.ext", "extendedKeyUsage=clientAuth\n");
    for leaf in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{leaf}.key"),
            format!("{leaf}.csr"),
            format!("{leaf}.pem"),
            format!("{leaf}.ext"),
        );
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
        openssl(d, &args);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
    }
    Some(())
}

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus serving TLS only to clients with a certificate from `ca.pem`,
/// and only with basic auth.
fn start_prometheus(dir: &Scratch) -> Option<Prometheus> {
    if !tools::available("prometheus", &["--version"], "prometheus") {
        return None;
    }
    let d = dir.0.display();
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {d}/ca.pem\n\
             basic_auth_users:\n  operator: \"{PASSWORD_HASH}\"\n"
        ),
    );
    // Nothing to scrape: what is tested is the way in, not the data.
    let config = dir.write("prometheus.yml", "global: {evaluation_interval: 1s}\n");
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.config.file={}", web.display()))
        .arg(format!("--storage.tsdb.path={d}/data"))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    Some(Prometheus {
        child,
        url: format!("https://127.0.0.1:{port}"),
    })
}

/// The client the operator builds from these flags at start.
fn client(url: &str, flags: PromAuthFlags) -> Result<PromClient, String> {
    let auth = flags.check()?;
    let tls = auth.load()?;
    PromClient::with_auth(url, Duration::from_secs(10), &auth, tls).map_err(|e| e.to_string())
}

fn flags(dir: &Scratch, ca: &str, password_file: &str, client_cert: bool) -> PromAuthFlags {
    PromAuthFlags {
        basic_auth_username: Some("operator".into()),
        basic_auth_password_file: Some(dir.file(password_file)),
        ca_file: Some(dir.file(ca)),
        client_cert: client_cert.then(|| dir.file("client.pem")),
        client_key: client_cert.then(|| dir.file("client.key")),
        ..Default::default()
    }
}

/// Polls until `f` is true; panics with `what` after `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) {
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

const SPEC: &str = r#"
model: {version: "1", image: "demo:1", port: 8080}
replicas: 1
resources: {requests: {cpu: 100m}, limits: {cpu: "1"}}
metrics: {source: prometheus}
rollout:
  strategy: canary
  steps: [{setWeight: 50}]
  analysis:
    checks:
      - {name: errors, errorRate: {max: 0.5}}
"#;

/// The canary's data as a reconcile reads it, and the `errors` check's verdict on it.
async fn read_and_judge(client: &PromClient) -> (VariantData, CheckStatus) {
    let spec: modeldeploy::api::ModelDeploymentSpec = serde_yaml::from_str(SPEC).unwrap();
    let valid = modeldeploy::api::validate::validate(&spec).unwrap();
    let sel = RevisionSelector {
        namespace: "risk".into(),
        deployment: "scorer-canary0000".into(),
    };
    let metrics = modeldeploy::telemetry::Metrics::new();
    let data = modeldeploy::controller::collect::read_revision(
        client,
        &metrics,
        &valid,
        sel,
        Duration::from_secs(120),
    )
    .await;
    let check = &spec.rollout.as_ref().unwrap().analysis.checks[0];
    let judge = Judge {
        canary: &data,
        stable: &data,
        reference: None,
        correction: Default::default(),
        min_samples: 1,
        sequential: Default::default(),
    };
    let status = evaluate_one(check, &judge).status;
    (data, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_tls_and_client_certificates_through_real_prometheus() {
    let dir = Scratch::new("promauth");
    if make_pki(&dir).is_none() {
        return;
    }
    dir.write("right", "right-password\n");
    dir.write("wrong", "wrong-password\n");
    let Some(prom) = start_prometheus(&dir) else {
        return;
    };
    let good = client(&prom.url, flags(&dir, "ca.pem", "right", true)).unwrap();
    eventually(
        "prometheus to answer over TLS",
        Duration::from_secs(90),
        || async { good.query("1").await.is_ok() },
    )
    .await;

    // The right password, CA and client certificate: answers are read, and
    // the reconcile's own reading of a revision meets no error.
    let samples = good.query("vector(42)").await.unwrap();
    assert_eq!(samples[0].value, 42.0);
    let (data, status) = read_and_judge(&good).await;
    assert!(data.problems.is_empty(), "{:?}", data.problems);
    // No series (nothing is scraped): Inconclusive for want of requests, not for access.
    let message = status.message.unwrap_or_default();
    assert!(!message.contains("Prometheus"), "{message}");

    // A wrong password: Inconclusive, naming the 401, never a pass.
    let wrong = client(&prom.url, flags(&dir, "ca.pem", "wrong", true)).unwrap();
    let err = wrong.query("1").await.unwrap_err();
    assert!(matches!(err, PromError::Denied(_)), "{err}");
    let (_, status) = read_and_judge(&wrong).await;
    assert_eq!(status.verdict, CheckVerdict::Inconclusive, "{status:?}");
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("prometheus answered 401 Unauthorized"),
        "{message}"
    );

    // A CA that did not sign the server's certificate: a TLS error that says so.
    let other = client(&prom.url, flags(&dir, "other-ca.pem", "right", true)).unwrap();
    let err = other.query("1").await.unwrap_err();
    assert_eq!(err.reason(), "prometheus_tls", "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let (_, status) = read_and_judge(&other).await;
    assert_eq!(status.verdict, CheckVerdict::Inconclusive, "{status:?}");
    assert!(
        status
            .message
            .unwrap_or_default()
            .contains("TLS with Prometheus failed")
    );

    // No client certificate where one is required: the server's refusal is named.
    let anonymous = client(&prom.url, flags(&dir, "ca.pem", "right", false)).unwrap();
    let err = anonymous.query("1").await.unwrap_err();
    println!("without a client certificate: {err}");
    assert_eq!(err.reason(), "prometheus_tls", "{err}");
    assert!(
        err.to_string()
            .contains("received fatal alert: BadCertificate"),
        "{err}"
    );
}

/// Answers like the Prometheus query API over TLS, only to `Authorization: Bearer <accepted>`.
struct BearerServer {
    url: String,
    accepted: Arc<Mutex<String>>,
    seen: Arc<Mutex<Vec<String>>>,
}

async fn bearer_server(dir: &Scratch) -> BearerServer {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = CertificateDer::pem_file_iter(dir.file("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.file("server.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let accepted = Arc::new(Mutex::new(String::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (a, s) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, a, s) = (acceptor.clone(), a.clone(), s.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = answer(tls, &a, &s).await;
                }
            });
        }
    });
    BearerServer {
        url,
        accepted,
        seen,
    }
}

/// One HTTP/1.1 exchange per connection: read the head and body, answer, close.
async fn answer(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    accepted: &Mutex<String>,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.trim().to_string())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let authorization = header("authorization").unwrap_or_default();
    seen.lock().unwrap().push(authorization.clone());
    let expected = format!("Bearer {}", accepted.lock().unwrap());
    let (status, body) = if authorization == expected {
        (
            "200 OK",
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"42"]}]}}"#,
        )
    } else {
        ("401 Unauthorized", "Unauthorized\n")
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_bearer_token_file_is_used_from_the_next_query() {
    let dir = Scratch::new("prombearer");
    if make_pki(&dir).is_none() {
        return;
    }
    let server = bearer_server(&dir).await;
    *server.accepted.lock().unwrap() = "first-token".into();
    let token = dir.write("token", "first-token\n");
    let flags = PromAuthFlags {
        bearer_token_file: Some(token.clone()),
        ca_file: Some(dir.file("ca.pem")),
        ..Default::default()
    };
    let prom = client(&server.url, flags).unwrap();
    let samples = prom.query("up").await.unwrap();
    assert_eq!(samples[0].value, 42.0);

    // The server moves on to a new token before the file is rewritten: refused, and said so.
    *server.accepted.lock().unwrap() = "second-token".into();
    let err = prom.query("up").await.unwrap_err();
    assert_eq!(
        err.to_string().split(';').next(),
        Some("prometheus answered 401 Unauthorized")
    );
    // The kubelet writes the rotated token; the same client sends it with its next query.
    std::fs::write(&token, "second-token\n").unwrap();
    assert_eq!(prom.query("up").await.unwrap()[0].value, 42.0);
    assert_eq!(
        *server.seen.lock().unwrap(),
        [
            "Bearer first-token",
            "Bearer first-token",
            "Bearer second-token"
        ]
    );

    // An emptied token file is an error named after the file, never a query without credentials.
    std::fs::write(&token, "\n").unwrap();
    let err = prom.query("up").await.unwrap_err();
    assert_eq!(err.reason(), "prometheus_credentials", "{err}");
    assert_eq!(server.seen.lock().unwrap().len(), 3, "nothing was sent");
}

/// The operator binary refuses bad Prometheus flags at start with one line
/// naming the flag (and file), and a non-zero exit.
#[test]
fn the_operator_stops_at_start_on_bad_prometheus_flags() {
    let dir = Scratch::new("promflags");
    let kubeconfig = dir.write(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
         current-context: x\n",
    );
    dir.write("token", "t\n");
    dir.write("not-pem", "hello\n");
    let token = dir.file("token").display().to_string();
    let not_pem = dir.file("not-pem").display().to_string();
    let missing = dir.file("missing.pem").display().to_string();
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &[
                "--prometheus-url",
                "http://prometheus.example:9090",
                "--prometheus-bearer-token-file",
                &token,
            ],
            &["--prometheus-url", "need an https:// address"],
        ),
        (
            &["--prometheus-ca-file", &missing],
            &["--prometheus-ca-file", &missing, "cannot read"],
        ),
        (
            &["--prometheus-ca-file", &not_pem],
            &["--prometheus-ca-file", &not_pem, "no PEM CERTIFICATE"],
        ),
        (
            &[
                "--prometheus-bearer-token-file",
                &token,
                "--prometheus-basic-auth-username",
                "u",
            ],
            &[
                "--prometheus-bearer-token-file",
                "--prometheus-basic-auth-username",
            ],
        ),
        (
            &["--prometheus-client-cert", &token],
            &["--prometheus-client-cert needs --prometheus-client-key"],
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_modeldeploy"))
            .args([
                "operator",
                "--leader-election=false",
                "--metrics-addr=127.0.0.1:0",
            ])
            .args(if args[0] == "--prometheus-url" {
                &[][..]
            } else {
                &["--prometheus-url", "https://prometheus.example:9090"][..]
            })
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("modeldeploy: "))
            .unwrap_or_default();
        for e in expected {
            assert!(line.contains(e), "{args:?}: {e:?} not in {stderr}");
        }
    }
}
