//! `cistern prewarm IMAGE... [-f FILE]`: asks a running mirror to fetch images now, through
//! its admin action on the debug listener (`POST /api/admin/prewarm`, with `admin.token` from
//! the same configuration), and prints each image's outcome as it comes.

use std::time::Duration;

use futures::StreamExt;
use secrecy::ExposeSecret;

use crate::config::Config;

/// Sends `list` (one image per line) to the mirror at `url` (default: the configuration's
/// debug listener on this host), printing progress; true when every image was warmed.
pub async fn warm_now(config: &Config, list: String, url: Option<&str>) -> Result<bool, String> {
    let base = match url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => debug_url(config).ok_or(
            "the configuration has no debug listener (http.debug.addr): pass --url http://HOST:PORT of the mirror's debug listener",
        )?,
    };
    let token = config.admin.token.as_ref().ok_or(
        "admin.token is not set in the configuration (or REGISTRY_ADMIN_TOKEN): the mirror only takes warm-now requests with it",
    )?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = format!("{base}/api/admin/prewarm");
    let response = client
        .post(&endpoint)
        .bearer_auth(token.expose_secret())
        .body(list)
        .send()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{endpoint} answered {status}: {}", body.trim()));
    }
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    let mut all_warmed = true;
    let mut finished = false;
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.map_err(|e| format!("{endpoint}: {e}"))?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(item) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            all_warmed &= item["result"] != "error";
            finished |= item["result"] == "done";
            println!("{}", describe(&item));
        }
    }
    if !finished {
        return Err(format!("{endpoint}: the answer ended before the summary"));
    }
    Ok(all_warmed)
}

/// One progress line, as a person reads it.
fn describe(item: &serde_json::Value) -> String {
    let text = |key: &str| item[key].as_str().unwrap_or("-").to_owned();
    match item["result"].as_str() {
        Some("ok") => format!(
            "ok       {} {} {}{} manifests, {} blobs, {} bytes fetched",
            text("image"),
            text("digest"),
            if item["moved"] == true {
                "(moved) "
            } else {
                ""
            },
            item["manifests_fetched"],
            item["blobs_fetched"],
            item["bytes"],
        ),
        Some("error") => format!("error    {}: {}", text("image"), text("error")),
        Some("skipped") => format!("skipped  {}: {}", text("image"), text("reason")),
        Some("done") => {
            let s = &item["summary"];
            format!(
                "done: {} checked, {} moved, {} fetched, {} bytes, {} errors",
                s["checked"], s["moved"], s["fetched"], s["bytes"], s["errors"]
            )
        }
        _ => item.to_string(),
    }
}

/// `http.debug.addr` as a URL on this host (`:5001` and `0.0.0.0:5001` mean 127.0.0.1).
fn debug_url(config: &Config) -> Option<String> {
    let addr = &config.http.debug.as_ref()?.addr;
    let (host, port) = addr.rsplit_once(':')?;
    let host = match host {
        "" | "0.0.0.0" | "[::]" => "127.0.0.1",
        other => other,
    };
    Some(format!("http://{host}:{port}"))
}
