//! Start-up and a first scan: how long until an analyst gets an answer from the demo.
//!
//! `cargo bench --bench startup` prints criterion's median for opening the engine (storage
//! probe + applying the workspace) and for a scan-and-aggregate over the demo events.

use std::path::Path;

use c360::{Engine, Settings};
use criterion::{Criterion, criterion_group, criterion_main};

fn demo_settings(data: &Path) -> Settings {
    Settings {
        data: data.display().to_string(),
        workspace: Path::new(env!("CARGO_MANIFEST_DIR")).join("sql"),
        ..Settings::default()
    }
}

fn startup_and_scan(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let data = tempfile::tempdir().expect("tempdir");
    let settings = demo_settings(data.path());

    c.bench_function("engine_open_demo_workspace", |b| {
        b.to_async(&runtime)
            .iter(|| async { Engine::open(settings.clone()).await.expect("engine opens") });
    });

    let engine = runtime
        .block_on(Engine::open(settings.clone()))
        .expect("engine opens");
    c.bench_function("scan_events_by_type", |b| {
        b.to_async(&runtime).iter(|| async {
            engine
                .query(
                    "SELECT type, count(*), count(DISTINCT anonymous_id) FROM events GROUP BY type",
                )
                .await
                .expect("query runs")
        });
    });
}

criterion_group!(benches, startup_and_scan);
criterion_main!(benches);
