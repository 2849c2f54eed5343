//! Hostile and broken `/metrics` endpoints, served by local listeners that
//! speak raw HTTP, read through the operator's scraper (`Scraper::fetch_all`,
//! the one entry point the collector calls) and then along the collector's
//! path: the parser with the operator's family filter, the per-pod counter
//! window, the variant data and the checks.
//!
//! Every case must end bounded in time (the scrape timeout plus slack), in
//! memory (the body cap stops reading: the listener counts what it managed to
//! send), with an error or an Inconclusive (never a Pass) whose message names
//! the cause.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use modeldeploy::analysis::AnalysisRun;
use modeldeploy::analysis::checks::{self, Judge};
use modeldeploy::analysis::collect_plan;
use modeldeploy::analysis::error_rate::SequentialConfig;
use modeldeploy::analysis::window::{CounterWindow, VariantData};
use modeldeploy::api::presets::Names;
use modeldeploy::api::{
    Check, CheckVerdict, MetricNames, MetricsPreset, MultipleTestingCorrection,
};
use modeldeploy::controller::collect::MAX_SERIES_PER_POD;
use modeldeploy::exposition::{FamilyFilter, Options, parse_with};
use modeldeploy::metrics::scrape::{ScrapeConfig, ScrapeError, Scraper, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The scrape timeout of the cases about timeouts: short, to keep the suite quick.
const TIMEOUT: Duration = Duration::from_millis(1_500);
/// The scrape timeout of every other case: a loaded machine must not turn
/// them into timeouts. Each still has to end well before it.
const PATIENT: Duration = Duration::from_secs(60);
/// What a case may take beyond its bound before it counts as a hang.
const SLACK: Duration = Duration::from_secs(5);

fn config() -> ScrapeConfig {
    ScrapeConfig {
        timeout: PATIENT,
        ..ScrapeConfig::default()
    }
}

fn impatient() -> ScrapeConfig {
    ScrapeConfig {
        timeout: TIMEOUT,
        ..ScrapeConfig::default()
    }
}

// ---------------------------------------------------------------- listeners

/// What a listener saw: connections accepted and body bytes it wrote.
#[derive(Clone, Default)]
struct Seen {
    connections: Arc<AtomicUsize>,
    written: Arc<AtomicUsize>,
}

impl Seen {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }
    /// Body bytes written since the last call.
    fn take_written(&self) -> usize {
        self.written.swap(0, Ordering::SeqCst)
    }
}

/// The most a listener can have written to a scraper that holds at most
/// `cap` bytes and then stops reading: the cap, what the loopback socket
/// buffers take (the kernel's maxima for TCP receive and send buffers), and
/// the HTTP client's read buffer (under 1 MiB).
fn in_flight_bound(cap: usize) -> usize {
    let max_of = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().last()?.parse::<usize>().ok())
            .unwrap_or(32 << 20)
    };
    cap + max_of("/proc/sys/net/ipv4/tcp_rmem") + max_of("/proc/sys/net/ipv4/tcp_wmem") + (1 << 20)
}

/// Waits until the listener's writes stop growing (the peer is gone and the
/// socket buffers are full), then takes the count.
async fn settled_written(seen: &Seen) -> usize {
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = seen.written();
        if now == last {
            return seen.take_written();
        }
        last = now;
    }
}

/// A listener on `ip` whose every connection, once its request head is
/// read, is handed to `respond` with the connection's 0-based number.
async fn listen_on<F, Fut>(ip: &str, respond: F) -> (SocketAddr, Seen)
where
    F: Fn(TcpStream, usize, Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((ip, 0)).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let seen = Seen::default();
    let handle = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = handle.connections.fetch_add(1, Ordering::SeqCst);
            let seen = handle.clone();
            let reply = respond_after_head(&mut stream).await;
            if reply {
                tokio::spawn(respond(stream, n, seen));
            }
        }
    });
    (addr, seen)
}

async fn listen<F, Fut>(respond: F) -> (SocketAddr, Seen)
where
    F: Fn(TcpStream, usize, Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    listen_on("127.0.0.1", respond).await
}

/// Reads up to the end of the request head; false if the peer went away.
async fn respond_after_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Writes `bytes`, counting them as body bytes; false once the peer is gone.
async fn send(stream: &mut TcpStream, seen: &Seen, bytes: &[u8]) -> bool {
    if stream.write_all(bytes).await.is_err() {
        return false;
    }
    seen.written.fetch_add(bytes.len(), Ordering::SeqCst);
    true
}

async fn ok_text(mut stream: TcpStream, body: String) {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ntransfer-encoding: chunked\r\n\r\n";

/// Writes one HTTP chunk; false once the peer is gone.
async fn chunk(stream: &mut TcpStream, seen: &Seen, data: &[u8]) -> bool {
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    send(stream, seen, &framed).await
}

fn target(uid: &str, addr: SocketAddr) -> Target {
    Target::new(uid, addr.ip(), addr.port(), "/metrics").expect("a plain path")
}

// --------------------------------------------- the collector's path, in short

fn names() -> Names {
    Names::resolve(MetricsPreset::Default, &MetricNames::default()).expect("default names")
}

fn example_checks() -> Vec<Check> {
    serde_json::from_value(serde_json::json!([
        {"name": "errors", "errorRate": {"max": 0.01}},
        {"name": "vs-stable", "errorRate": {"maxRatioToStable": 1.5}},
        {"name": "p99", "latency": {"quantile": 0.99, "max": "300ms"}},
    ]))
    .expect("checks")
}

/// One analysis read of a revision's pods, step for step what
/// `controller::collect` does with each scrape (its `scrape_into` is
/// private): fetch every pod at once, parse a body with the operator's
/// filter and default options, feed the pod's window, name each pod's
/// problem with its URL.
async fn read_pods(scraper: &Scraper, pods: &[Target], window: &mut CounterWindow) -> VariantData {
    read_pods_started(scraper, pods, None, window).await
}

/// [`read_pods`] of pods that started at `started` (Unix seconds, from
/// their status), with the collector's check of whose process answers.
async fn read_pods_started(
    scraper: &Scraper,
    pods: &[Target],
    started: Option<i64>,
    window: &mut CounterWindow,
) -> VariantData {
    let names = names();
    let mut families = names.families();
    families.push(collect_plan::PROCESS_START.to_string());
    let filter = FamilyFilter::new(families);
    let mut problems = Vec::new();
    for (pod, result) in pods.iter().zip(scraper.fetch_all(pods).await) {
        let text = match result {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!("pod {}: {e}", pod.url()));
                continue;
            }
        };
        let mut samples = Vec::new();
        match parse_with(&text, &filter, &Options::default(), |s| samples.push(s)) {
            Ok(_) => {
                if let Some(why) = collect_plan::answered_by_another(started, &samples) {
                    problems.push(format!("pod {}: {why}", pod.url()));
                    continue;
                }
                if let Err(why) = window.observe_whole(&pod.pod_uid, started, &samples) {
                    problems.push(format!("pod {}: {why}", pod.url()));
                }
            }
            Err(e) => problems.push(format!("pod {}: cannot parse metrics: {e}", pod.url())),
        }
    }
    let mut data = VariantData::from_totals(&names, &window.totals());
    data.problems = problems;
    data
}

/// The example checks on the canary against a healthy stable.
fn judge(canary: &VariantData) -> AnalysisRun {
    let stable = VariantData {
        requests: Some(10_000.0),
        errors: Some(1.0),
        ..VariantData::default()
    };
    checks::evaluate(
        &example_checks(),
        &Judge {
            canary,
            stable: &stable,
            reference: None,
            correction: MultipleTestingCorrection::default(),
            min_samples: 200,
            sequential: SequentialConfig::default(),
        },
        Default::default(),
    )
}

/// Reads one pod through a fresh window and asserts the run is not a Pass
/// and every check's message names `cause`. Returns the run's messages.
async fn not_a_pass(scraper: &Scraper, pod: &Target, cause: &str) -> String {
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    let data = read_pods(scraper, std::slice::from_ref(pod), &mut window).await;
    let run = judge(&data);
    assert_ne!(run.verdict(), CheckVerdict::Pass, "{run:?}");
    let messages: Vec<&str> = run
        .checks
        .iter()
        .map(|c| c.message.as_deref().unwrap_or_default())
        .collect();
    for m in &messages {
        assert!(m.contains(cause), "{cause:?} not in {m:?}");
    }
    messages.join("\n")
}

/// Runs `fut`, failing the test if it outlives `bound` by the slack.
async fn bounded<T>(what: &str, bound: Duration, fut: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(bound + SLACK, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {:?}", bound + SLACK));
    (out, started.elapsed())
}

fn scrape_error(e: &Result<String, ScrapeError>) -> &ScrapeError {
    e.as_ref().expect_err("the scrape must fail")
}

// -------------------------------------------------------------------- cases

#[tokio::test]
async fn slow_past_the_timeout_before_and_during_the_body() {
    let (silent, _) = listen(|stream, _, _| async move {
        let _open = stream;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let (stalls, _) = listen(|mut stream, _, seen| async move {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
        send(&mut stream, &seen, head).await;
        send(&mut stream, &seen, b"model_requests_total{code=\"200\"} 1").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let scraper = Scraper::new(impatient());
    for addr in [silent, stalls] {
        let pod = target("slow", addr);
        let (result, took) =
            bounded("slow pod", scraper.config().timeout, scraper.fetch(&pod)).await;
        assert_eq!(result, Err(ScrapeError::Timeout(TIMEOUT)), "{addr}");
        assert!(took >= TIMEOUT, "gave up early: {took:?}");
        let (messages, _) = bounded(
            "slow pod",
            scraper.config().timeout,
            not_a_pass(&scraper, &pod, "timed out after 1.5s"),
        )
        .await;
        assert!(messages.contains(&pod.url()), "{messages}");
    }
}

#[tokio::test]
async fn huge_bodies_stop_at_the_size_cap() {
    let cap = 64 * 1024;
    let offered = 1 << 30;
    // Says how large it is: refused from the head.
    let (declared, declared_seen) = listen(move |mut stream, _, seen| async move {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {offered}\r\n\r\n");
        send(&mut stream, &seen, head.as_bytes()).await;
        let line = b"model_requests_total{code=\"200\"} 1\n".repeat(1024);
        while send(&mut stream, &seen, &line).await && seen.written() < offered {}
    })
    .await;
    // Does not say: chunked until the reader stops.
    let (chunked, chunked_seen) = listen(move |mut stream, _, seen| async move {
        send(&mut stream, &seen, CHUNKED_HEAD).await;
        let lines = b"model_requests_total{code=\"200\"} 1\n".repeat(1024);
        while chunk(&mut stream, &seen, &lines).await && seen.written() < offered {}
    })
    .await;
    let scraper = Scraper::new(ScrapeConfig {
        max_bytes: cap,
        ..config()
    });
    for (addr, seen) in [(declared, declared_seen), (chunked, chunked_seen)] {
        let pod = target("huge", addr);
        let (result, _) = bounded("huge pod", scraper.config().timeout, scraper.fetch(&pod)).await;
        assert_eq!(result, Err(ScrapeError::TooLarge(cap)), "{addr}");
        // The scraper holds at most the cap and stops reading there.
        let written = settled_written(&seen).await;
        assert!(written <= in_flight_bound(cap), "{written} bytes sent");
        not_a_pass(&scraper, &pod, &format!("larger than {cap} bytes")).await;
    }
}

#[tokio::test]
async fn endless_bodies_end_at_the_cap_or_the_timeout() {
    // Fast and forever: the cap ends it.
    let (flood, flood_seen) = listen(|mut stream, _, seen| async move {
        send(&mut stream, &seen, CHUNKED_HEAD).await;
        let mut n = 0u64;
        loop {
            let line = format!("model_requests_total{{code=\"200\",n=\"{n}\"}} 1\n");
            if !chunk(&mut stream, &seen, line.as_bytes()).await {
                break;
            }
            n += 1;
        }
    })
    .await;
    // A line every 20 ms, forever, well under the cap: the timeout ends it.
    let (drip, _) = listen(|mut stream, _, seen| async move {
        send(&mut stream, &seen, CHUNKED_HEAD).await;
        while chunk(
            &mut stream,
            &seen,
            b"model_requests_total{code=\"200\"} 1\n",
        )
        .await
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let scraper = Scraper::new(ScrapeConfig {
        max_bytes: 256 * 1024,
        ..config()
    });
    let pod = target("flood", flood);
    let (result, _) = bounded("endless pod", scraper.config().timeout, scraper.fetch(&pod)).await;
    assert_eq!(result, Err(ScrapeError::TooLarge(256 * 1024)));
    let written = settled_written(&flood_seen).await;
    assert!(
        written <= in_flight_bound(256 * 1024),
        "{written} bytes sent"
    );
    let scraper = Scraper::new(ScrapeConfig {
        max_bytes: 256 * 1024,
        ..impatient()
    });
    let pod = target("drip", drip);
    let (result, took) =
        bounded("endless pod", scraper.config().timeout, scraper.fetch(&pod)).await;
    assert_eq!(result, Err(ScrapeError::Timeout(TIMEOUT)));
    assert!(took >= TIMEOUT, "{took:?}");
    bounded(
        "endless pod",
        scraper.config().timeout,
        not_a_pass(&scraper, &pod, "timed out"),
    )
    .await;
}

#[tokio::test]
async fn garbage_bodies_and_garbage_responses_are_refused_by_name() {
    let (binary, _) = listen(|stream, _, _| async move {
        let bytes: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut s = stream;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", bytes.len());
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&bytes).await;
    })
    .await;
    let (html, _) =
        listen(|stream, _, _| ok_text(stream, "<html><body>It works!</body></html>\n".into()))
            .await;
    let (broken_line, _) = listen(|stream, _, _| {
        ok_text(
            stream,
            "# TYPE model_requests_total counter\nmodel_requests_total{code=\"200\" 12\n".into(),
        )
    })
    .await;
    let (not_http, _) = listen(|mut stream, _, _| async move {
        let _ = stream.write_all(b"\x00\xffSSH-2.0-OpenSSH_9.2\r\n").await;
    })
    .await;
    let scraper = Scraper::new(config());

    let (r, _) = bounded(
        "binary",
        scraper.config().timeout,
        scraper.fetch(&target("bin", binary)),
    )
    .await;
    assert_eq!(r, Err(ScrapeError::NotText));
    not_a_pass(&scraper, &target("bin", binary), "not UTF-8 text").await;

    not_a_pass(
        &scraper,
        &target("html", html),
        "cannot parse metrics: line 1: invalid metric name",
    )
    .await;
    not_a_pass(
        &scraper,
        &target("broken", broken_line),
        "cannot parse metrics: line 2: expected ',' or '}' after the label value",
    )
    .await;

    let (r, _) = bounded(
        "not HTTP",
        scraper.config().timeout,
        scraper.fetch(&target("nothttp", not_http)),
    )
    .await;
    let e = scrape_error(&r);
    assert_eq!(e.reason(), "other", "{e:?}");
    // The message carries the cause, not only "error sending request".
    assert!(e.to_string().contains("invalid HTTP"), "{e}");
}

#[tokio::test]
async fn millions_of_series_hit_the_size_cap() {
    let (addr, seen) = listen(|mut stream, _, seen| async move {
        send(&mut stream, &seen, CHUNKED_HEAD).await;
        send(&mut stream, &seen, &{
            let mut c = Vec::new();
            let line = b"# TYPE model_requests_total counter\n";
            c.extend_from_slice(format!("{:x}\r\n", line.len()).as_bytes());
            c.extend_from_slice(line);
            c.extend_from_slice(b"\r\n");
            c
        })
        .await;
        let mut batch = String::new();
        for n in 0..6_000_000u32 {
            batch.push_str(&format!(
                "model_requests_total{{code=\"200\",series=\"{n}\"}} 1\n"
            ));
            if batch.len() > 32 * 1024 {
                if !chunk(&mut stream, &seen, batch.as_bytes()).await {
                    return;
                }
                batch.clear();
            }
        }
    })
    .await;
    // The operator's own cap (4 MiB), not a test-sized one.
    let scraper = Scraper::new(config());
    let cap = ScrapeConfig::default().max_bytes;
    let pod = target("many", addr);
    let (result, _) = bounded(
        "millions of series",
        scraper.config().timeout,
        scraper.fetch(&pod),
    )
    .await;
    assert_eq!(result, Err(ScrapeError::TooLarge(cap)));
    // All of them would be about 330 MB.
    let written = settled_written(&seen).await;
    assert!(written <= in_flight_bound(cap), "{written} bytes sent");
    not_a_pass(&scraper, &pod, "larger than 4194304 bytes").await;
}

/// Fewer series than fill the size cap but more than a window keeps per pod:
/// none of the pod's series is taken (the window stays empty, not a part of
/// the pod), and the pod is named with the reason.
#[tokio::test]
async fn more_series_than_a_window_keeps_stay_bounded() {
    let series = 3 * MAX_SERIES_PER_POD;
    let (addr, _) = listen(move |stream, _, _| {
        let mut body = String::from("# TYPE model_requests_total counter\n");
        for n in 0..series {
            let code = if n % 2 == 0 { 200 } else { 500 };
            body.push_str(&format!(
                "model_requests_total{{code=\"{code}\",series=\"{n}\"}} 1000\n"
            ));
        }
        ok_text(stream, body)
    })
    .await;
    let scraper = Scraper::new(config());
    let pod = target("wide", addr);
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    let mut data = VariantData::default();
    for _ in 0..3 {
        data = read_pods(&scraper, std::slice::from_ref(&pod), &mut window).await;
    }
    assert!(window.totals().is_empty());
    assert!(
        data.problems[0].contains("none of them is judged"),
        "{:?}",
        data.problems
    );
}

/// A pod that lists more series than the window keeps is not judged on the
/// series that came first: here the first `MAX_SERIES_PER_POD` series are
/// successes and the errors come after, and the canary, failing half its
/// requests, must not pass.
#[tokio::test]
async fn more_series_than_a_window_keeps_are_not_judged_on_a_part() {
    let kept = MAX_SERIES_PER_POD;
    let (addr, _) = listen(move |stream, scrape, _| {
        let value = 1_000 * (scrape + 1);
        let mut body = String::from("# TYPE model_requests_total counter\n");
        for n in 0..2 * kept {
            let code = if n < kept { 200 } else { 500 };
            body.push_str(&format!(
                "model_requests_total{{code=\"{code}\",series=\"{n}\"}} {value}\n"
            ));
        }
        ok_text(stream, body)
    })
    .await;
    let scraper = Scraper::new(config());
    let pod = target("wide", addr);
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    read_pods(&scraper, std::slice::from_ref(&pod), &mut window).await;
    let data = read_pods(&scraper, std::slice::from_ref(&pod), &mut window).await;
    let errors = &judge(&data).checks[0];
    assert_ne!(errors.verdict, CheckVerdict::Pass, "{data:?}\n{errors:?}");
}

#[tokio::test]
async fn a_counter_that_goes_backwards_is_a_restart_never_a_negative_count() {
    // Scrape 1: 1000 requests, 10 errors. Scrape 2: the counters went down
    // (a restart): 300 and 3. Scrape 3: 500 and 200.
    let (addr, _) = listen(|stream, n, _| {
        let (ok, err) = [(990, 10), (297, 3), (300, 200)][n.min(2)];
        ok_text(
            stream,
            format!(
                "# TYPE model_requests_total counter\nmodel_requests_total{{code=\"200\"}} {ok}\nmodel_requests_total{{code=\"500\"}} {err}\n"
            ),
        )
    })
    .await;
    let scraper = Scraper::new(config());
    let pod = target("restarts", addr);
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    // A pod of unknown start counts from its first scrape.
    let first = read_pods(&scraper, std::slice::from_ref(&pod), &mut window).await;
    assert_eq!((first.requests, first.errors), (Some(0.0), Some(0.0)));
    let run = judge(&first);
    assert_eq!(run.verdict(), CheckVerdict::Inconclusive);
    assert!(
        run.checks[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("0 requests in the window, 200 needed")),
        "{run:?}"
    );
    // After the drop, counting goes on from zero: what came after the restart.
    let second = read_pods(&scraper, std::slice::from_ref(&pod), &mut window).await;
    assert_eq!((second.requests, second.errors), (Some(300.0), Some(3.0)));
    let third = read_pods(&scraper, std::slice::from_ref(&pod), &mut window).await;
    assert_eq!((third.requests, third.errors), (Some(500.0), Some(200.0)));
    // 40% errors: a Fail, not a Pass hidden by the reset.
    let run = judge(&third);
    assert_eq!(run.verdict(), CheckVerdict::Fail, "{run:?}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (elsewhere, elsewhere_seen) = listen(|stream, _, _| {
        ok_text(
            stream,
            "# TYPE model_requests_total counter\nmodel_requests_total{code=\"200\"} 100000\n"
                .into(),
        )
    })
    .await;
    let scraper = Scraper::new(config());
    for status in [301u16, 302, 303, 307, 308] {
        let location = format!("http://{elsewhere}/metrics");
        let (addr, _) = listen(move |mut stream, _, _| {
            let location = location.clone();
            async move {
                let head = format!(
                    "HTTP/1.1 {status} Moved\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
            }
        })
        .await;
        let pod = target("redirects", addr);
        let (result, _) = bounded("redirect", scraper.config().timeout, scraper.fetch(&pod)).await;
        assert_eq!(result, Err(ScrapeError::Status(status)));
        not_a_pass(&scraper, &pod, &format!("HTTP status {status}")).await;
    }
    assert_eq!(elsewhere_seen.connections(), 0, "a redirect was followed");
}

#[tokio::test]
async fn only_the_pod_ip_and_declared_port_are_asked() {
    let healthy = "# TYPE model_requests_total counter\nmodel_requests_total{code=\"200\"} 5\n";
    // The model server listens on 127.0.0.1 only.
    let (served, seen) = listen(move |stream, _, _| ok_text(stream, healthy.into())).await;
    let scraper = Scraper::new(config());

    // The pod's IP (from its status) differs from where something listens:
    // the scraper asks the pod's IP and nothing else.
    let other_ip: IpAddr = "127.0.0.2".parse().unwrap();
    let pod = Target::new("ip-changed", other_ip, served.port(), "/metrics").unwrap();
    let (result, _) = bounded("pod IP", scraper.config().timeout, scraper.fetch(&pod)).await;
    let e = scrape_error(&result);
    assert_eq!(e.reason(), "connect", "{e:?}");
    assert!(e.to_string().contains("refused"), "{e}");
    not_a_pass(&scraper, &pod, "127.0.0.2").await;

    // The pod declares a metrics port that is not the one served (and the
    // served one as its http port): only the declared metrics port is asked.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let declaring: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "declaring"},
        "spec": {"containers": [{"name": "model", "ports": [
            {"name": "http", "containerPort": served.port()},
            {"name": "metrics", "containerPort": closed.port()}]}]}
    }))
    .unwrap();
    let port = modeldeploy::resources::declared_metrics_port(&declaring).unwrap();
    assert_eq!(port, closed.port());
    let pod = Target::new("port", closed.ip(), port, "/metrics").unwrap();
    let (result, _) = bounded("pod port", scraper.config().timeout, scraper.fetch(&pod)).await;
    assert_eq!(scrape_error(&result).reason(), "connect");
    not_a_pass(&scraper, &pod, &format!(":{}/metrics", closed.port())).await;
    assert_eq!(seen.connections(), 0);

    // A metrics path cannot carry a host, a query or a scheme.
    for path in [
        "//127.0.0.1/metrics",
        "/metrics?target=x",
        "http://x/metrics",
    ] {
        assert_eq!(
            Target::new("p", served.ip(), served.port(), path),
            Err(ScrapeError::BadPath)
        );
    }
    assert_eq!(seen.connections(), 0);
}

#[tokio::test]
async fn a_pod_whose_ip_changes_keeps_its_window_consistent() {
    let body = |ok: u32| {
        format!("# TYPE model_requests_total counter\nmodel_requests_total{{code=\"200\"}} {ok}\n")
    };
    let (old, _) = listen(move |stream, _, _| ok_text(stream, body(1_000))).await;
    let (new, _) = listen(move |stream, _, _| ok_text(stream, body(40))).await;
    let scraper = Scraper::new(config());
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    read_pods(&scraper, &[target("pod-1", old)], &mut window).await;
    // The same pod (uid) at a new address, serving lower counters: a restart.
    let data = read_pods(&scraper, &[target("pod-1", new)], &mut window).await;
    assert_eq!(data.requests, Some(40.0));
}

#[tokio::test]
async fn a_pod_answered_by_an_older_process_is_not_read() {
    let pod_started: i64 = 1_800_000_000;
    let body = |process_started: i64| {
        format!(
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {process_started}\n\
             # TYPE model_requests_total counter\nmodel_requests_total{{code=\"200\"}} 5000\n"
        )
    };
    // What answers at the pod's address started an hour before the pod:
    // another pod's process (an address reused, a proxy answering for others).
    let (older, _) = listen(move |stream, _, _| ok_text(stream, body(pod_started - 3600))).await;
    let scraper = Scraper::new(config());
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    let pod = target("pod-1", older);
    let data = read_pods_started(&scraper, &[pod], Some(pod_started), &mut window).await;
    assert_eq!(data.requests, None, "{data:?}");
    let run = judge(&data);
    assert_eq!(run.verdict(), CheckVerdict::Inconclusive, "{run:?}");
    for c in &run.checks {
        let m = c.message.as_deref().unwrap_or_default();
        assert!(
            m.contains("3600 s before the pod") && m.contains(&older.to_string()),
            "{m}"
        );
    }

    // The pod's own process, started after the pod: read and counted.
    let (own, _) = listen(move |stream, _, _| ok_text(stream, body(pod_started + 2))).await;
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    let pod = target("pod-2", own);
    let data = read_pods_started(&scraper, &[pod], Some(pod_started), &mut window).await;
    assert!(data.problems.is_empty(), "{:?}", data.problems);
    assert_eq!(data.requests, Some(5000.0));
}

#[tokio::test]
async fn two_pods_at_one_address_are_refused_not_counted_twice() {
    let (addr, seen) = listen(|stream, _, _| {
        ok_text(
            stream,
            "# TYPE model_requests_total counter\nmodel_requests_total{code=\"200\"} 5000\n".into(),
        )
    })
    .await;
    let scraper = Scraper::new(config());
    let pods = [target("pod-a", addr), target("pod-b", addr)];
    let results = scraper.fetch_all(&pods).await;
    for r in &results {
        let e = scrape_error(r);
        assert_eq!(e.reason(), "shared_address", "{e:?}");
    }
    assert!(
        results[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("pod-b")
    );
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("pod-a")
    );
    assert_eq!(seen.connections(), 0);
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    let data = read_pods(&scraper, &pods, &mut window).await;
    let run = judge(&data);
    assert_eq!(run.verdict(), CheckVerdict::Inconclusive);
    let message = run.checks[0].message.clone().unwrap_or_default();
    assert!(message.contains("share the address"), "{message}");
}
