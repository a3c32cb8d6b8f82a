//! Durability under a crash: clients post batches to `c360 serve` from several threads while
//! it is killed with SIGKILL at a random moment. After a restart every event that got a 200
//! is in `events` exactly once, including when clients resend what was in flight (the
//! commit may have landed without its 200: deduplication must catch the resend).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use common::http::request;

const CLIENTS: usize = 6;
const BATCH: usize = 25;

fn batch_body(client: usize, seq: usize) -> (Vec<String>, String) {
    let ids: Vec<String> = (0..BATCH).map(|i| format!("c{client}-{seq}-{i}")).collect();
    let messages: Vec<String> = ids
        .iter()
        .map(|id| {
            format!(
                r#"{{"type":"track","anonymousId":"crash-{client}","event":"Load","messageId":"{id}","properties":{{"n":{seq}}}}}"#
            )
        })
        .collect();
    (ids, format!(r#"{{"batch":[{}]}}"#, messages.join(",")))
}

fn post(addr: &str, body: &str) -> Option<u16> {
    request(
        addr,
        "POST",
        "/v1/batch",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .ok()
    .map(|r| r.status)
}

/// A pseudo-random kill delay without a random crate: the clock's nanoseconds.
fn kill_delay(iteration: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(300 + (nanos ^ (iteration * 7919)) % 1200)
}

#[test]
fn every_acknowledged_event_survives_sigkill_exactly_once() {
    let mut data = tempfile::tempdir().unwrap();
    let mut acked_total = 0;
    for iteration in 0..3u64 {
        let server = Server::start_in(data, &[]);
        let addr = server.http_addr.clone();
        let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let unacked: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (addr, acked, unacked, stop) =
                    (addr.clone(), acked.clone(), unacked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut seq = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let (ids, body) = batch_body(client + 100 * iteration as usize, seq);
                        seq += 1;
                        match post(&addr, &body) {
                            Some(200) => acked.lock().unwrap().extend(ids),
                            // 503s and dropped connections: the SDK would resend later.
                            _ => {
                                unacked.lock().unwrap().insert(body, ids);
                                if stop.load(Ordering::Relaxed) {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(kill_delay(iteration));
        data = server.kill_keeping_data();
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.join().unwrap();
        }
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        assert!(
            !acked.is_empty(),
            "iteration {iteration}: nothing was acknowledged before the kill"
        );
        acked_total += acked.len();

        // Restart on the same root; resend what never got its 200, as SDKs do.
        let server = Server::start_in(data, &[]);
        let mut expected: BTreeSet<String> = acked;
        let started = Instant::now();
        for (body, ids) in std::mem::take(&mut *unacked.lock().unwrap()) {
            loop {
                match post(&server.http_addr, &body) {
                    Some(200) => break,
                    other => {
                        assert!(
                            started.elapsed() < Duration::from_secs(60),
                            "resend: {other:?}"
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            expected.extend(ids);
        }
        let out = server.psql(&[
            "-At",
            "-c",
            "SELECT message_id, count(*) FROM landed.events GROUP BY 1",
        ]);
        assert!(out.status.success(), "{}", common::stderr_of(&out));
        let stored: HashMap<String, u64> = common::stdout_of(&out)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(id, n)| (id.to_string(), n.parse().unwrap()))
            .collect();
        let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "iteration {iteration}: stored more than once: {twice:?}"
        );
        let missing: Vec<_> = expected
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "iteration {iteration}: {} acknowledged events lost, e.g. {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        data = server.kill_keeping_data();
    }
    eprintln!("crash test: {acked_total} events acknowledged before 3 SIGKILLs, none lost");
}
