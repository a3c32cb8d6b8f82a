//! `c360 serve`: open the engine, bind every door, announce how to connect, run until a
//! signal, then stop cleanly.

use std::future::Future;
use std::io::Write;

use tokio::sync::watch;

use crate::collect::HttpServer;
use crate::error::{C360Error, Result};
use crate::pg::PgServer;
use crate::{Engine, Settings};

/// Serves until `stop` resolves (the CLI passes Ctrl-C or SIGTERM).
///
/// Everything that can fail at start-up (storage, workspace, ports) fails before the banner
/// is printed, so a printed banner means the server is really up.
pub async fn serve(settings: Settings, stop: impl Future<Output = ()>) -> Result<()> {
    let pg_addr = settings.pg.listen;
    let http_addr = settings.http.listen;
    let engine = std::sync::Arc::new(Engine::open(settings).await?);
    let pg = PgServer::bind(&engine, pg_addr).await?;
    let http = HttpServer::bind(&engine, http_addr).await?;
    print_banner(&engine, &pg, &http)?;
    let destinations = resolve_destinations(&engine, http.local_addr()?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // An Err means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let pg_task = tokio::spawn(pg.run(stopped(stop_rx.clone())));
    let http_task = tokio::spawn(http.run(stopped(stop_rx.clone())));
    let delivery = tokio::spawn(crate::actions::delivery::run(
        engine.refresh_engine().queue(),
        destinations,
        engine.refresh_engine().visibility_micros(),
        stop_rx.clone(),
    ));
    let scheduler = tokio::spawn(run_schedules(
        std::sync::Arc::clone(&engine),
        stopped(stop_rx.clone()),
    ));
    let upkeep = tokio::spawn(run_upkeep(std::sync::Arc::clone(&engine), stopped(stop_rx)));

    stop.await;
    tracing::info!("stopping: no new connections, closing sessions");
    let _ = stop_tx.send(true);
    let joined = |e: tokio::task::JoinError| C360Error::io("server task", std::io::Error::other(e));
    pg_task.await.map_err(joined)?;
    scheduler.await.map_err(joined)?;
    delivery.await.map_err(joined)?;
    upkeep.await.map_err(joined)?;
    http_task.await.map_err(joined)??;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The configured destinations, with those given as a path (`/sink`) pointed at this
/// server's own HTTP listener.
fn resolve_destinations(
    engine: &Engine,
    http_addr: std::net::SocketAddr,
) -> Vec<crate::config::Destination> {
    let mut own = http_addr;
    if own.ip().is_unspecified() {
        own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    engine
        .settings()
        .actions
        .destinations
        .iter()
        .cloned()
        .map(|mut destination| {
            if destination.url.starts_with('/') {
                destination.url = format!("http://{own}{}", destination.url);
            }
            destination
        })
        .collect()
}

/// Runs the refreshes whose schedule has come (see [`Engine::refresh_due`]), until `stop`.
async fn run_schedules(engine: std::sync::Arc<Engine>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    // Checking is cheap and ticks finer than the shortest schedule (one second), so that an
    // `EVERY '1 second'` trigger runs every second rather than every other one.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        engine.refresh_due().await;
    }
}

/// Compacts landed tables every `[maintenance] compact_interval_secs` (group commits make
/// many small files) and vacuums them hourly, until `stop`. A round that leaves a backlog
/// (more small files than its byte budget) is followed by the next one at once: under a
/// sustained load, group commits add files faster than one budget per interval merges, and
/// a table whose files pile up makes every commit and scan slower. Its own task, so a long
/// compaction never delays a scheduled refresh; the merging itself runs on a thread of its
/// own at a lower priority (see `storage::maintenance`), so it never delays a group commit.
async fn run_upkeep(engine: std::sync::Arc<Engine>, stop: impl Future<Output = ()>) {
    use crate::storage::maintenance::VACUUM_RETENTION;
    tokio::pin!(stop);
    let settings = engine.settings().maintenance.clone();
    let compact_max_bytes =
        (settings.compact_interval_secs > 0).then(|| settings.compact_max_mb.max(1) << 20);
    // Without compaction, the tick only paces the hourly vacuum.
    let every = match settings.compact_interval_secs {
        0 => 60,
        secs => secs,
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_vacuum = std::time::Instant::now();
    let mut backlog = false;
    loop {
        if !backlog {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
        }
        let vacuum = last_vacuum.elapsed() >= std::time::Duration::from_secs(3600);
        if vacuum {
            last_vacuum = std::time::Instant::now();
            match engine.refresh_engine().expire_actions().await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "expired finished actions"),
                Err(e) => tracing::warn!(error = %e, "cannot expire finished actions"),
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            more = engine.landed().maintain(compact_max_bytes, vacuum, VACUUM_RETENTION) => {
                backlog = more;
            }
        }
    }
}

fn print_banner(engine: &Engine, pg: &PgServer, http: &HttpServer) -> Result<()> {
    let pg_addr = pg.local_addr()?;
    let http_addr = http.local_addr()?;
    let applied = engine.workspace();
    let mut out = std::io::stdout().lock();
    let text = format!(
        "c360 is up: workspace {} ({} statements in {} files), storage {}\n\
         \x20 connect:  psql -h {} -p {} -d {}\n\
         \x20 health:   http://{}/health\n\
         \x20 events:   POST http://{}/v1/batch (Segment HTTP tracking API)\n\
         {}Press Ctrl-C to stop.\n",
        engine.settings().workspace.display(),
        applied.statements,
        applied.files,
        engine.storage().url(),
        pg_addr.ip(),
        pg_addr.port(),
        engine.database_name(),
        http_addr,
        http_addr,
        if engine
            .settings()
            .actions
            .destinations
            .iter()
            .any(|d| d.url.starts_with('/'))
        {
            format!("  messages: http://{http_addr}/sink (the built-in webhook receiver)\n")
        } else {
            String::new()
        },
    );
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| C360Error::io("stdout", e))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (what service managers send).
///
/// The handlers are installed when this is called, not when the future is first polled, so
/// that a signal arriving right after the banner still stops the server cleanly.
#[cfg(unix)]
pub fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind| signal(kind).map_err(|e| C360Error::io("signal handler", e));
    let mut terminate = install(SignalKind::terminate())?;
    let mut interrupt = install(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    })
}

#[cfg(not(unix))]
pub fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
