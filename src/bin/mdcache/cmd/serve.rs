//! `mdcache serve --admin-addr IP:PORT`: runs the HTTP admin API (`mdcache::admin::http`) standalone against the configured Redis, until Ctrl-C; refuses to start without a bearer token.

use std::net::SocketAddr;

use mdcache::admin::http::{AdminToken, router};

use super::context::Ctx;
use crate::output::{Failure, print_line};

/// `serve` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) admin_addr: SocketAddr,
}

/// `serve`: exit 2 without a token (CACHE_ADMIN_TOKEN or CACHE_ADMIN_TOKEN_FILE, at least 32
/// bytes) or a Redis address, 3 when the address cannot be bound; 0 after Ctrl-C.
pub(crate) async fn run(ctx: &Ctx, args: ServeArgs) -> Result<(), Failure> {
    let token = AdminToken::from_env()?;
    let metrics = mdcache::metrics::install_prometheus_recorder()?;
    let cache = ctx.cache(false)?;
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(|e| Failure::unavailable(format!("cannot listen on {}: {e}", args.admin_addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::unavailable(format!("cannot read the listening address: {e}")))?;
    print_line(&format!("mdcache admin API on http://{local}"))?;
    axum::serve(listener, router(cache, token, Some(metrics)))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Failure::unavailable(format!("admin API stopped: {e}")))
}
