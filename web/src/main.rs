//! `switchboard web`: a browser terminal for every container of a runtime directory, and
//! their attach over the Kubernetes streaming protocol (`v5.channel.k8s.io` on a
//! WebSocket), for programs that already speak it. A client of the switchboards'
//! sockets, as the Mesos agent is: the per-container servers do not change.
//!
//! Routes (every one needs the token, see [`auth`]):
//! * `GET /`: the page (`/?token=T` sets the token's cookie, then sends to `/`);
//! * `GET /assets/NAME`: the page's scripts and styles, and the vendored xterm.js;
//! * `GET /api/v1/containers`: the containers, as JSON;
//! * `GET /api/v1/containers/{id}/attach?stdin=1&stdout=1&stderr=1&tty=1`: the WebSocket.

mod attach;
mod auth;
mod containers;
mod k8s;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;

/// A browser terminal for the containers under the runtime directory, and their attach
/// over the Kubernetes streaming protocol (WebSocket subprotocols v5.channel.k8s.io,
/// v4.channel.k8s.io, channel.k8s.io and base64.channel.k8s.io). It prints the URL to
/// open, with the token every request must carry.
#[derive(Debug, Parser)]
#[command(name = "switchboard web", bin_name = "switchboard web", version)]
struct Args {
    /// The address to serve HTTP on. It gives a shell in every container to whoever has
    /// the token: keep it on loopback unless the network between is yours (there is no
    /// TLS here; put a TLS proxy in front).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The runtime directory whose containers are served (default: as for `run`).
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// The token requests must carry (default: a random one). At least 16 letters,
    /// digits or `-._~`.
    #[arg(long, value_name = "TOKEN", env = "SWITCHBOARD_WEB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Diagnostics to stderr at this level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    log_level: tracing::Level,
}

struct Gateway {
    runtime: PathBuf,
    token: String,
    /// The name of the token's cookie (this port's).
    cookie: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(args.log_level)
        .with_target(false)
        .init();
    let token = match args.token {
        Some(t) => match auth::check_token(&t) {
            Ok(()) => t,
            Err(e) => {
                eprintln!("switchboard web: --token: {e}");
                return ExitCode::from(2);
            }
        },
        None => match auth::random_token() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("switchboard web: no random token: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime_dir = args.runtime_dir.unwrap_or_else(switchboard::agent::default_runtime_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match runtime.map(|r| r.block_on(serve(args.listen, runtime_dir, token))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) | Err(e) => {
            eprintln!("switchboard web: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, runtime: PathBuf, token: String) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{listen}: {e}")))?;
    let at = listener.local_addr()?;
    let gateway = Arc::new(Gateway {
        runtime,
        token,
        cookie: auth::cookie_name(at.port()),
    });
    if !at.ip().is_loopback() {
        eprintln!(
            "switchboard web: warning: listening on {at}, beyond this host, over plain HTTP: whoever sees the \
             token has a shell in every container"
        );
    }
    // The one line a person (or a test) reads: where to go.
    println!("switchboard web: open http://{at}/?token={}", gateway.token);
    let app = Router::new()
        .route("/", get(page))
        .route("/assets/{name}", get(asset))
        .route("/api/v1/containers", get(list))
        .route("/api/v1/containers/{id}/attach", get(attach))
        .layer(middleware::from_fn_with_state(gateway.clone(), authorize))
        .with_state(gateway);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

/// Lets a request through only with the token; `/?token=T` sets the page's cookie and
/// sends the browser on to `/`, so that the token leaves its address bar and history.
async fn authorize(State(gw): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let query = request.uri().query();
    if !auth::allowed(&gw.token, &gw.cookie, request.headers(), query) {
        let body = "401 Unauthorized: this needs the token switchboard web printed at start: open the URL it \
                    printed (/?token=...), or send Authorization: Bearer <token>\n";
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
    }
    if request.uri().path() == "/" && auth::query_values(query, "token").next().is_some() {
        let cookie = format!("{}={}; Path=/; HttpOnly; SameSite=Strict", gw.cookie, gw.token);
        return (
            StatusCode::SEE_OTHER,
            [(header::SET_COOKIE, cookie), (header::LOCATION, "/".to_string())],
        )
            .into_response();
    }
    next.run(request).await
}

/// The page's files, built in (`assets/`): the vendored xterm.js is in `assets/vendor/`.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    ("app.js", "text/javascript", include_bytes!("../assets/app.js")),
    ("app.css", "text/css", include_bytes!("../assets/app.css")),
    (
        "xterm.js",
        "text/javascript",
        include_bytes!("../assets/vendor/xterm.js"),
    ),
    ("xterm.css", "text/css", include_bytes!("../assets/vendor/xterm.css")),
    (
        "addon-fit.js",
        "text/javascript",
        include_bytes!("../assets/vendor/addon-fit.js"),
    ),
];

/// Scripts only from here; the WebSocket only to here; no framing, no forms elsewhere.
const POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

async fn page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, POLICY),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, &include_bytes!("../assets/index.html")[..]).into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => {
            let headers = [
                (header::CONTENT_TYPE, *kind),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ];
            (headers, *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "404 Not Found\n").into_response(),
    }
}

async fn list(State(gw): State<Arc<Gateway>>) -> Response {
    let runtime = gw.runtime.clone();
    match tokio::task::spawn_blocking(move || containers::list(&runtime)).await {
        Ok(Ok(list)) => json(StatusCode::OK, serde_json::Value::Array(list)),
        Ok(Err(e)) => json(StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({ "error": e })),
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response {
    let mut r = (status, value.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The WebSocket attach: refused before the upgrade when the page is another site's,
/// the container unknown, or the query wrong.
async fn attach(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if !auth::same_origin(&headers) {
        let body = "403 Forbidden: a WebSocket from another site's page (its Origin is not this host)\n";
        return (StatusCode::FORBIDDEN, body).into_response();
    }
    let request = match attach::Request::parse(uri.query()) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("400 Bad Request: {e}\n")).into_response(),
    };
    let runtime = gw.runtime.clone();
    let found = tokio::task::spawn_blocking(move || containers::find(&runtime, &id).ok_or(id)).await;
    let container = match found {
        Ok(Ok(c)) => c,
        Ok(Err(id)) => {
            return (StatusCode::NOT_FOUND, format!("404 Not Found: no container '{id}'\n")).into_response();
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => return rejection.into_response(),
    };
    // The first of the client's list that we speak, as the kubelet chooses; none of
    // them is refused (a browser would fail a socket that answers none it offered).
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let chosen = offered.iter().find_map(|o| k8s::PROTOCOLS.into_iter().find(|p| p == o));
    if chosen.is_none() && !offered.is_empty() {
        let body = format!(
            "400 Bad Request: none of the subprotocols {offered:?} is one of {:?}\n",
            k8s::PROTOCOLS
        );
        return (StatusCode::BAD_REQUEST, body).into_response();
    }
    upgrade
        .protocols(chosen)
        .max_message_size(1 << 20)
        .on_upgrade(move |ws| {
            let protocol = k8s::Protocol::named(ws.protocol().and_then(|p| p.to_str().ok()));
            attach::session(ws, protocol, container, request)
        })
}
