//! The `source: prometheus` path against a real Prometheus server (Debian's
//! `prometheus`, installed by `.ci/install-deps`), scraping demo model servers
//! on loopback. Skips with a message when the binary is missing.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modeldeploy::metrics::prometheus::{
    PromClient, RevisionSelector, bucket_increase, counter_increase,
};
use modeldeploy_demo::{self as demo, Behaviour, Load};
use support::{free_port, tools};

struct Prometheus {
    child: Child,
    _dir: tempdir::Dir,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod tempdir {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("modeldeploy-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("scratch dir");
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Start Prometheus scraping each (address, pod name) every second.
async fn start_prometheus(targets: &[(SocketAddr, &str)]) -> Option<Prometheus> {
    if !tools::available("prometheus", &["--version"], "prometheus") {
        return None;
    }
    let dir = tempdir::Dir::new("prom");
    let mut config = String::from(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n  - job_name: models\n    static_configs:\n",
    );
    for (addr, pod) in targets {
        config.push_str(&format!(
            "      - targets: [\"{addr}\"]\n        labels: {{namespace: \"risk\", pod: \"{pod}\"}}\n"
        ));
    }
    let config_path = dir.0.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let mut prom = Prometheus {
        child: Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
        _dir: dir,
        url: format!("http://127.0.0.1:{port}"),
    };
    let url = prom.url.clone();
    let http = modeldeploy::http_client_builder().build().unwrap();
    for _ in 0..100 {
        if http
            .get(format!("{url}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Some(prom);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = prom.child.kill();
    panic!("prometheus did not become ready");
}

fn seconds_since_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until Prometheus holds a successful scrape of each of its `targets`
/// that began after `since` (seconds since the epoch, the same clock).
async fn scraped_since(client: &PromClient, targets: usize, since: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stamps: Vec<f64> = client
            .query(r#"timestamp(up{job="models"} == 1)"#)
            .await
            .unwrap_or_default()
            .iter()
            .map(|s| s.value)
            .collect();
        if stamps.len() == targets && stamps.iter().all(|&at| at > since) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scrape of all {targets} pods after {since}: last scrapes at {stamps:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_queries_read_the_right_pods_through_real_prometheus() {
    let good = demo::spawn("127.0.0.1:0".parse().unwrap(), Behaviour::default())
        .await
        .unwrap();
    let bad = demo::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour {
            error_rate: 0.3,
            latency: Duration::from_millis(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Counter series appear with their first request; make them exist before
    // Prometheus starts, so its first sample is a baseline, not the load.
    let warm = |addr: SocketAddr| Load {
        target: format!("http://{addr}"),
        rps: 50.0,
        duration: Some(Duration::from_millis(300)),
        feature_shift: 0.0,
        features: 4,
        feedback: true,
        seed: 5,
    };
    tokio::join!(demo::load(warm(good.addr)), demo::load(warm(bad.addr)));
    let Some(prom) = start_prometheus(&[
        (good.addr, "scorer-stable0000-abc12"),
        (bad.addr, "scorer-canary0000-def34"),
    ])
    .await
    else {
        return;
    };
    let client = PromClient::new(&prom.url, Duration::from_secs(5)).unwrap();
    // A baseline sample of each pod before the load.
    scraped_since(&client, 2, 0.0).await;
    let load = |addr: SocketAddr| Load {
        target: format!("http://{addr}"),
        rps: 100.0,
        duration: Some(Duration::from_secs(6)),
        feature_shift: 0.0,
        features: 4,
        feedback: true,
        seed: 11,
    };
    let (a, b) = tokio::join!(demo::load(load(good.addr)), demo::load(load(bad.addr)));
    // Sequential requests: fewer on a loaded machine, still plenty.
    assert!(a.0 > 20 && b.0 > 20, "sent {} and {}", a.0, b.0);
    // A scrape of each pod that began after the last answer.
    scraped_since(&client, 2, seconds_since_epoch()).await;

    let window = Duration::from_secs(60);
    let sel = |deployment: &str| RevisionSelector {
        namespace: "risk".into(),
        deployment: deployment.into(),
    };
    let value = |samples: Vec<modeldeploy::metrics::prometheus::PromSample>| {
        samples.first().map_or(0.0, |s| s.value)
    };

    let canary = sel("scorer-canary0000");
    let stable = sel("scorer-stable0000");
    let canary_requests = value(
        client
            .query(&counter_increase(
                "model_requests_total",
                &canary,
                &[],
                window,
            ))
            .await
            .unwrap(),
    );
    let canary_errors = value(
        client
            .query(&counter_increase(
                "model_requests_total",
                &canary,
                &[("code", "=~", "5..")],
                window,
            ))
            .await
            .unwrap(),
    );
    let stable_errors = value(
        client
            .query(&counter_increase(
                "model_requests_total",
                &stable,
                &[("code", "=~", "5..")],
                window,
            ))
            .await
            .unwrap(),
    );
    // Scrapes a loaded machine misses shrink the count, never the ratio.
    assert!(
        canary_requests > 20.0 && canary_requests <= b.0 as f64 * 1.1 + 20.0,
        "canary requests {canary_requests} of {} sent",
        b.0
    );
    let rate = canary_errors / canary_requests;
    assert!((0.15..0.45).contains(&rate), "canary error rate {rate}");
    assert_eq!(
        stable_errors, 0.0,
        "the stable pod's series are not mixed in"
    );

    // Latency buckets come back per `le`, ready for histogram_quantile.
    let buckets = client
        .query(&bucket_increase(
            "model_request_duration_seconds",
            &canary,
            &[],
            window,
        ))
        .await
        .unwrap();
    assert!(buckets.len() >= 5, "{buckets:?}");
    let mut pairs: Vec<(f64, f64)> = buckets
        .iter()
        .map(|s| {
            let le = s.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY);
            (le, s.value)
        })
        .collect();
    pairs.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (bounds, counts): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let hist = modeldeploy::analysis::histogram::Histogram::from_scrape(bounds, counts).unwrap();
    let p50 = modeldeploy::analysis::histogram::histogram_quantile(0.5, &hist).unwrap();
    assert!(
        (0.025..=0.1).contains(&p50),
        "canary p50 {p50} with 30 ms added latency"
    );

    // A bad query is a clear error, not a panic.
    let err = client.query("sum(").await.unwrap_err();
    assert_eq!(err.reason(), "prometheus_query", "{err}");
}
