//! `driftwatch collector`: the central server in the foreground (systemd Type=notify).

use std::path::PathBuf;

use crate::collector::{self, Collector, config};
use crate::util::exit;

/// `driftwatch collector`.
pub fn run_collector(config_path: Option<PathBuf>, log_json: bool) -> anyhow::Result<u8> {
    super::util::init_logging(log_json);
    let path = config_path.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let cfg = super::source::load_collector_config(&path)?;
    super::util::runtime()?.block_on(async move {
        let c = Collector::bind(cfg).await?;
        tracing::info!(url = %c.url(), "driftwatch collector listening");
        eprintln!("driftwatch collector listening on {}", c.url());
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        c.serve(collector::shutdown_signal()).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("driftwatch collector stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(exit::CLEAN)
}
