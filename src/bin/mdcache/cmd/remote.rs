//! `--admin URL` for `stats` and `health`: a running instance's figures, fetched from its HTTP admin API (`mdcache::admin::http`) instead of measured by this process.

use std::time::Duration;

use serde_json::Value;

use crate::output::Failure;

/// The admin API's token as the operator holds it: `CACHE_ADMIN_TOKEN`, or the file
/// `CACHE_ADMIN_TOKEN_FILE` names (one trailing newline ignored). `None` when neither is set.
fn token_from_env() -> Result<Option<String>, Failure> {
    match (
        std::env::var("CACHE_ADMIN_TOKEN").ok(),
        std::env::var("CACHE_ADMIN_TOKEN_FILE").ok(),
    ) {
        (Some(_), Some(_)) => Err(Failure::invalid(
            "set CACHE_ADMIN_TOKEN or CACHE_ADMIN_TOKEN_FILE, not both",
        )),
        (Some(t), None) => Ok(Some(t)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Failure::invalid(format!("cannot read CACHE_ADMIN_TOKEN_FILE {path}: {e}"))
            })?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// `GET base + path` within `timeout`, with the bearer token when `with_token`: the JSON
/// answer and whether it was a success. 401 is exit 2 (the token), an unreachable API or a
/// non-JSON answer exit 3.
pub(crate) async fn fetch(
    base: &str,
    path: &str,
    with_token: bool,
    timeout: Duration,
) -> Result<(bool, Value), Failure> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| Failure::unavailable(format!("cannot build an HTTP client: {e}")))?;
    let mut request = client.get(&url);
    if with_token {
        let Some(token) = token_from_env()? else {
            return Err(Failure::invalid(
                "--admin needs the admin token: set CACHE_ADMIN_TOKEN or CACHE_ADMIN_TOKEN_FILE",
            ));
        };
        request = request.bearer_auth(token);
    }
    let answer = request
        .send()
        .await
        .map_err(|e| Failure::unavailable(format!("admin API at {base} unreachable: {e}")))?;
    let status = answer.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(Failure::invalid(format!(
            "the admin API at {base} refused the token (CACHE_ADMIN_TOKEN)"
        )));
    }
    let body: Value = answer.json().await.map_err(|e| {
        Failure::unavailable(format!(
            "admin API at {base} answered {status} without JSON: {e}"
        ))
    })?;
    Ok((status.is_success(), body))
}
