//! Polling 1,000 pod `/metrics` endpoints on loopback, as the operator does in
//! one collection cycle: `Scraper::fetch_all` (one shared pool, the global
//! concurrency bound) -> the parser's borrowing visitor (`parse_with`) with the collector's `FamilyFilter` ->
//! `CounterWindow::observe`.
//!
//! The pods are played by a child process (this same binary, re-executed with
//! `MODELDEPLOY_POLLING_SERVER` set), so its CPU is not counted as the
//! operator's: one listener on `0.0.0.0:PORT` answers for every `127.0.a.b`,
//! so the 1,000 targets are 1,000 distinct addresses with their own
//! connections. The server counts accepted connections, requests, bytes,
//! distinct local addresses and the peak number of requests in flight (read,
//! not yet answered), and reports them on request over a pipe.
//!
//! Each pod serves the `/metrics` text of `modeldeploy_demo` after 2,000
//! predictions and 500 feedback labels (4 feature histograms, latency and
//! prediction histograms, request and outcome counters).
//!
//! Run: `cargo bench --bench polling` (`-- --quick` for fewer cycles).
//! Results: docs/benchmarks.md, `## Polling`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use modeldeploy::analysis::window::CounterWindow;
use modeldeploy::api::presets::Names;
use modeldeploy::exposition::{FamilyFilter, Options, parse_owned, parse_with};
use modeldeploy::metrics::scrape::{ScrapeConfig, Scraper, Target};

/// Counts live heap bytes, to size the windows the collector keeps.
struct CountingAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the
// counter only records sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const PODS: usize = 1_000;
const SERVER_ENV: &str = "MODELDEPLOY_POLLING_SERVER";
/// Same cap as `controller::collect::MAX_SERIES_PER_POD`.
const MAX_SERIES_PER_POD: usize = 4_000;

fn main() {
    if let Some(payload) = std::env::var_os(SERVER_ENV) {
        server::run(std::path::Path::new(&payload));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    // `cargo test --benches` runs bench targets with no `--bench` flag: do
    // nothing there, the measurement is for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("polling: run with `cargo bench --bench polling`");
        return;
    }
    client::run(quick);
}

/// CPU time (user + system) of this whole process: the operator side only.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

mod client {
    use super::*;

    /// Counters the server reports for one period.
    #[derive(Debug, Default, Clone, Copy)]
    struct ServerStats {
        accepted: u64,
        requests: u64,
        bytes_in: u64,
        bytes_out: u64,
        peak_inflight: u64,
        distinct_addrs: u64,
    }

    struct PodServer {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
        port: u16,
    }

    impl PodServer {
        fn start(payload_file: &std::path::Path) -> Self {
            let mut child = Command::new(std::env::current_exe().expect("own path"))
                .env(SERVER_ENV, payload_file)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the pod server");
            let stdin = child.stdin.take().expect("stdin");
            let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            stdout.read_line(&mut line).expect("port line");
            let port = line.trim().parse().expect("port");
            Self {
                child,
                stdin,
                stdout,
                port,
            }
        }

        fn command(&mut self, cmd: &str) -> String {
            writeln!(self.stdin, "{cmd}").expect("server pipe");
            self.stdin.flush().expect("server pipe");
            let mut line = String::new();
            self.stdout.read_line(&mut line).expect("server answer");
            line.trim().to_string()
        }

        /// Counters since the last call (the peak since the last call, too).
        fn stats(&mut self) -> ServerStats {
            let line = self.command("stats");
            let v: Vec<u64> = line
                .split_whitespace()
                .map(|x| x.parse().expect("number"))
                .collect();
            ServerStats {
                accepted: v[0],
                requests: v[1],
                bytes_in: v[2],
                bytes_out: v[3],
                peak_inflight: v[4],
                distinct_addrs: v[5],
            }
        }

        fn set_delay(&mut self, ms: u64) {
            assert_eq!(self.command(&format!("delay {ms}")), "ok");
        }
    }

    impl Drop for PodServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The demo model server's `/metrics` after some traffic.
    async fn demo_payload() -> String {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;

        let app = modeldeploy_demo::router(modeldeploy_demo::Behaviour {
            error_rate: 0.01,
            ..Default::default()
        });
        let mut x: u64 = 7;
        let mut unit = || {
            // xorshift: deterministic features in [-3, 3)
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0
        };
        for i in 0..2_000 {
            let features: Vec<f64> = (0..4).map(|_| unit()).collect();
            let body = serde_json::json!({ "features": features }).to_string();
            let req = Request::post("/predict")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("request");
            app.clone().oneshot(req).await.expect("predict");
            if i % 4 == 0 {
                let (a, p) = if i % 3 == 0 { ("1", "0") } else { ("1", "1") };
                let body = serde_json::json!({ "actual": a, "predicted": p }).to_string();
                let req = Request::post("/feedback")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .expect("request");
                app.clone().oneshot(req).await.expect("feedback");
            }
        }
        let res = app
            .oneshot(Request::get("/metrics").body(Body::empty()).expect("req"))
            .await
            .expect("metrics");
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("text")
    }

    /// The filter `collect::from_pods` builds for a default-preset spec with no custom checks.
    fn collector_filter() -> FamilyFilter {
        let names = Names::resolve(Default::default(), &Default::default()).expect("names");
        FamilyFilter::new(names.families())
    }

    fn targets(port: u16) -> Vec<Target> {
        (0..PODS)
            .map(|i| {
                // 127.0.a.b with b in 1..=250: distinct addresses, no .0/.255.
                let ip = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
                Target::new(format!("pod-{i}"), IpAddr::V4(ip), port, "/metrics").expect("target")
            })
            .collect()
    }

    struct Cycle {
        wall: Duration,
        fetch: Duration,
        /// parsing alone; the rest of `wall - fetch` is observe and bookkeeping.
        parse: Duration,
        cpu: Duration,
        body_bytes: usize,
        samples: usize,
        errors: usize,
        server: ServerStats,
    }

    /// One collection cycle, the way `collect::scrape_into` does it.
    async fn cycle(
        scraper: &Scraper,
        targets: &[Target],
        filter: &FamilyFilter,
        window: &mut CounterWindow,
    ) -> (Duration, Duration, usize, usize, usize) {
        let started = Instant::now();
        let results = scraper.fetch_all(targets).await;
        let fetch = started.elapsed();
        let mut seen_samples = 0usize;
        let (mut bytes, mut errors) = (0, 0);
        let mut parse = Duration::ZERO;
        for (target, result) in targets.iter().zip(results) {
            let Ok(text) = result.map_err(|e| {
                if errors == 0 {
                    eprintln!("pod {}: {e}", target.url());
                }
            }) else {
                errors += 1;
                continue;
            };
            bytes += text.len();
            let t = Instant::now();
            let mut samples = Vec::new();
            let parsed = parse_with(&text, filter, &Options::default(), |s| samples.push(s))
                .map_err(|e| e.to_string());
            parse += t.elapsed();
            match parsed {
                Ok(_) => {
                    window.observe(&target.pod_uid, None, &samples);
                    seen_samples += samples.len();
                }
                Err(e) => {
                    if errors == 0 {
                        eprintln!("pod {}: {e}", target.url());
                    }
                    errors += 1;
                }
            }
        }
        (fetch, parse, bytes, seen_samples, errors)
    }

    /// The same 1,000 pods as 334 objects of 3 pods, each reconciled in its
    /// own task at the same time (as after a resync): many `fetch_all` calls
    /// share the one Scraper, so only its semaphore bounds the total.
    async fn cycle_objects(
        scraper: &Scraper,
        targets: &[Target],
        filter: &FamilyFilter,
        windows: &mut Vec<CounterWindow>,
    ) -> (Duration, Duration, usize, usize, usize) {
        let started = Instant::now();
        let tasks: Vec<_> = targets
            .chunks(3)
            .zip(windows.drain(..))
            .map(|(chunk, mut window)| {
                let (scraper, chunk, filter) = (scraper.clone(), chunk.to_vec(), filter.clone());
                tokio::spawn(async move {
                    let out = cycle(&scraper, &chunk, &filter, &mut window).await;
                    (out, window)
                })
            })
            .collect();
        let (mut bytes, mut samples, mut errors) = (0, 0, 0);
        for task in tasks {
            let ((_, _, b, s, e), window) = task.await.expect("task");
            bytes += b;
            samples += s;
            errors += e;
            windows.push(window);
        }
        // Fetching, parsing and observing overlap here: all of it counts as fetch.
        (started.elapsed(), Duration::ZERO, bytes, samples, errors)
    }

    fn measure(
        rt: &tokio::runtime::Runtime,
        server: &mut PodServer,
        scraper: &Scraper,
        targets: &[Target],
        filter: &FamilyFilter,
        window: &mut CounterWindow,
    ) -> Cycle {
        server.stats();
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        let (fetch, parse, body_bytes, samples, errors) =
            rt.block_on(cycle(scraper, targets, filter, window));
        let wall = t0.elapsed();
        let cpu = cpu_time() - cpu0;
        Cycle {
            wall,
            fetch,
            parse,
            cpu,
            body_bytes,
            samples,
            errors,
            server: server.stats(),
        }
    }

    fn measure_objects(
        rt: &tokio::runtime::Runtime,
        server: &mut PodServer,
        scraper: &Scraper,
        targets: &[Target],
        filter: &FamilyFilter,
        windows: &mut Vec<CounterWindow>,
    ) -> Cycle {
        server.stats();
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        let (fetch, parse, body_bytes, samples, errors) =
            rt.block_on(cycle_objects(scraper, targets, filter, windows));
        let wall = t0.elapsed();
        let cpu = cpu_time() - cpu0;
        Cycle {
            wall,
            fetch,
            parse,
            cpu,
            body_bytes,
            samples,
            errors,
            server: server.stats(),
        }
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn row(label: &str, concurrency: usize, delay_ms: u64, cycles: &[Cycle]) {
        let wall: Vec<f64> = cycles.iter().map(|c| ms(c.wall)).collect();
        let max_wall = wall.iter().copied().fold(0.0, f64::max);
        let fetch = median(cycles.iter().map(|c| ms(c.fetch)).collect());
        let parse = median(cycles.iter().map(|c| ms(c.parse)).collect());
        let rest = median(
            cycles
                .iter()
                .map(|c| ms(c.wall - c.fetch - c.parse))
                .collect(),
        );
        let cpu = median(cycles.iter().map(|c| ms(c.cpu)).collect());
        let peak = cycles
            .iter()
            .map(|c| c.server.peak_inflight)
            .max()
            .unwrap_or(0);
        let accepted = median(cycles.iter().map(|c| c.server.accepted as f64).collect());
        let s = cycles[0].server;
        let errors: usize = cycles.iter().map(|c| c.errors).sum();
        println!(
            "| {label} | {concurrency} | {delay_ms} | {n} | {wall:.0} / {max_wall:.0} | {fetch:.0} | {parse:.0} | {rest:.0} | {cpu:.0} | {peak} | {accepted:.0} | {req} | {addrs} | {inb:.0} / {outb:.0} | {body:.0} | {samples} | {errors} |",
            n = cycles.len(),
            wall = median(wall.clone()),
            req = s.requests,
            addrs = s.distinct_addrs,
            inb = s.bytes_in as f64 / 1024.0,
            outb = s.bytes_out as f64 / 1024.0,
            body = cycles[0].body_bytes as f64 / 1024.0,
            samples = cycles[0].samples,
        );
    }

    pub fn run(quick: bool) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let payload = rt.block_on(demo_payload());
        let file = std::env::temp_dir().join(format!("polling-payload-{}.txt", std::process::id()));
        std::fs::write(&file, &payload).expect("payload file");
        let filter = collector_filter();
        let wanted = parse_owned(&payload, &filter, &Options::default())
            .expect("payload parses")
            .len();
        println!(
            "payload: modeldeploy_demo /metrics, {} bytes, {} lines, {} samples kept by the collector's filter",
            payload.len(),
            payload.lines().count(),
            wanted
        );
        let mut server = PodServer::start(&file);
        let targets = targets(server.port);
        let cycles = if quick { 3 } else { 7 };
        println!(
            "pods: {PODS} targets 127.0.1.1 .. 127.0.4.250 port {}, {cycles} measured cycles per row; load average before: {}",
            server.port,
            load_average()
        );
        println!();
        println!(
            "| mode | concurrency | pod delay ms | cycles | wall ms median / max | fetch_all ms | parse ms | observe ms | operator CPU ms | peak in flight at pods | new connections | requests | distinct pod addresses | KiB in / out at pods | body KiB | samples | errors |"
        );
        println!(
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for concurrency in [16, 64, 256] {
            let config = ScrapeConfig {
                concurrency,
                ..Default::default()
            };
            // Cold: a new Scraper (an empty connection pool) every cycle.
            let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
            server.set_delay(0);
            let cold: Vec<Cycle> = (0..cycles)
                .map(|_| {
                    let scraper = Scraper::new(config.clone());
                    let c = measure(&rt, &mut server, &scraper, &targets, &filter, &mut window);
                    drop(scraper);
                    // Let the closed connections go before the next cycle.
                    std::thread::sleep(Duration::from_millis(200));
                    c
                })
                .collect();
            row("cold", concurrency, 0, &cold);
            // Warm: one Scraper, connections kept alive from a first cycle.
            let scraper = Scraper::new(config.clone());
            measure(&rt, &mut server, &scraper, &targets, &filter, &mut window);
            let warm: Vec<Cycle> = (0..cycles)
                .map(|_| measure(&rt, &mut server, &scraper, &targets, &filter, &mut window))
                .collect();
            row("warm", concurrency, 0, &warm);
            // Slow pods (10 ms to answer) make every permit visible at the
            // pods: the peak in flight must equal the bound, never exceed it.
            server.set_delay(10);
            let held: Vec<Cycle> = (0..cycles.min(3))
                .map(|_| measure(&rt, &mut server, &scraper, &targets, &filter, &mut window))
                .collect();
            row("warm, slow pods", concurrency, 10, &held);
            assert!(
                held.iter()
                    .all(|c| c.server.peak_inflight <= concurrency as u64),
                "the concurrency bound was exceeded"
            );
            // 334 objects reconciled at once, slow pods: the global bound.
            let mut windows: Vec<CounterWindow> = (0..PODS.div_ceil(3))
                .map(|_| CounterWindow::new(0, MAX_SERIES_PER_POD))
                .collect();
            let objects: Vec<Cycle> = (0..cycles.min(3))
                .map(|_| {
                    measure_objects(&rt, &mut server, &scraper, &targets, &filter, &mut windows)
                })
                .collect();
            row(
                "warm, slow pods, 334 objects at once",
                concurrency,
                10,
                &objects,
            );
            assert!(
                objects
                    .iter()
                    .all(|c| c.server.peak_inflight <= concurrency as u64),
                "the concurrency bound was exceeded across objects"
            );
            server.set_delay(0);
        }
        // Heap held by what the collector keeps: a window over 1,000 pods
        // (one cycle observed), and one pod's parsed samples.
        let before = LIVE_BYTES.load(Ordering::SeqCst);
        let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
        for t in &targets {
            let samples = parse_owned(&payload, &filter, &Options::default()).expect("parses");
            window.observe(&t.pod_uid, None, &samples);
        }
        let window_bytes = LIVE_BYTES.load(Ordering::SeqCst) - before;
        let before = LIVE_BYTES.load(Ordering::SeqCst);
        let samples = parse_owned(&payload, &filter, &Options::default()).expect("parses");
        let samples_bytes = LIVE_BYTES.load(Ordering::SeqCst) - before;
        println!();
        println!(
            "heap: CounterWindow over {PODS} pods x {} series: {:.1} MiB ({:.0} bytes per series); one pod's parse_owned output: {:.1} KiB ({} samples, payload {:.1} KiB)",
            samples.len(),
            window_bytes as f64 / 1048576.0,
            window_bytes as f64 / (PODS * samples.len()) as f64,
            samples_bytes as f64 / 1024.0,
            samples.len(),
            payload.len() as f64 / 1024.0
        );
        drop((window, samples));
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let mem = |field: &str| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
                .unwrap_or_default()
        };
        println!(
            "operator-side process memory (window of {PODS} pods kept across cycles): VmRSS {} KiB, VmHWM {} KiB",
            mem("VmRSS:"),
            mem("VmHWM:")
        );
        println!("load average after: {}", load_average());
        let _ = std::fs::remove_file(&file);
    }
}

/// The pods: a minimal HTTP/1.1 server with keep-alive that serves one
/// payload on `/metrics` and counts what it sees.
mod server {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU64;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Default)]
    struct Counters {
        accepted: AtomicU64,
        requests: AtomicU64,
        bytes_in: AtomicU64,
        bytes_out: AtomicU64,
        inflight: AtomicU64,
        peak: AtomicU64,
        delay_ms: AtomicU64,
        addrs: Mutex<HashSet<IpAddr>>,
    }

    pub fn run(payload_file: &std::path::Path) {
        let payload = std::fs::read(payload_file).expect("payload");
        let mut ok = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        ok.extend_from_slice(&payload);
        let ok: &'static [u8] = Box::leak(ok.into_boxed_slice());
        let counters: &'static Counters = Box::leak(Box::default());
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("0.0.0.0:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        println!("{port}");
        std::io::stdout().flush().expect("stdout");
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                if let Ok(local) = stream.local_addr() {
                    counters.addrs.lock().expect("lock").insert(local.ip());
                }
                tokio::spawn(connection(stream, ok, counters));
            }
        });
        // Control: one command per line on stdin, one answer line on stdout.
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let answer = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["stats"] => {
                    let take = |c: &AtomicU64| c.swap(0, Ordering::SeqCst);
                    let inflight = counters.inflight.load(Ordering::SeqCst);
                    let addrs = std::mem::take(&mut *counters.addrs.lock().expect("lock"));
                    format!(
                        "{} {} {} {} {} {}",
                        take(&counters.accepted),
                        take(&counters.requests),
                        take(&counters.bytes_in),
                        take(&counters.bytes_out),
                        counters.peak.swap(inflight, Ordering::SeqCst),
                        addrs.len()
                    )
                }
                ["delay", ms] => {
                    counters
                        .delay_ms
                        .store(ms.parse().unwrap_or(0), Ordering::SeqCst);
                    "ok".to_string()
                }
                _ => "?".to_string(),
            };
            println!("{answer}");
            std::io::stdout().flush().expect("stdout");
        }
    }

    async fn connection(
        mut stream: tokio::net::TcpStream,
        ok: &'static [u8],
        counters: &'static Counters,
    ) {
        let _ = stream.set_nodelay(true);
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 2048];
        loop {
            // Read one request head (GET: no body).
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end);
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let now = counters.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            counters.peak.fetch_max(now, Ordering::SeqCst);
            let delay = counters.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let response: &[u8] = if head.starts_with("get /metrics ") {
                ok
            } else {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
            };
            // Answered from here on: the client holds its permit from before
            // it sends until after it has read this, so this window lies
            // inside the client's and the peak is a fair check of the bound.
            counters.inflight.fetch_sub(1, Ordering::SeqCst);
            let written = stream.write_all(response).await;
            if written.is_err() {
                return;
            }
            counters
                .bytes_out
                .fetch_add(response.len() as u64, Ordering::Relaxed);
            if head.contains("connection: close") {
                return;
            }
        }
    }
}
