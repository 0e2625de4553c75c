//! airlock's web page: imports, runs and the registry, for people who are not at a terminal.
//!
//! Served at `/ui/` beside `/v2/` by `airlock serve` (with `ui: {gate_file: airlock.yaml}` in
//! serve.yaml for the imports and runs) and by `airlock watch --listen` (imports and runs).
//! Pages are rendered on the server (minijinja, auto-escaped) and read well without script;
//! one small script (`/ui/static/app.js`) swaps in the parts marked `data-live` (the runs
//! table, the imports) when a server-sent event says a run started or ended. Assets are compiled into the binary; nothing comes from a CDN.
//!
//! Access follows the registry's users and rules: a signed-in user (a form checked against
//! the htpasswd users, then an HMAC-signed, `HttpOnly`, `SameSite=Strict` cookie) or anonymous
//! sees an import or a repository when the rules let them pull its repository, and may run an
//! import now or roll it back when they let them push there. Every form carries a token
//! derived from the session (and cross-site requests are refused by `Sec-Fetch-Site`/`Origin`
//! as well). A strict Content-Security-Policy allows no inline script and nothing from
//! elsewhere.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use airlock_gate::runs::{status_of, Run, RunFilter, Status};
use airlock_gate::{Import, Pipeline, Trigger};
use airlock_oci::{ManifestKind, Reference};
use airlock_registry::auth::{Action, BasicCheck, Caller};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::{Deserialize, Serialize};

mod timeline;

/// How long a sign-in lasts.
const SESSION: Duration = Duration::from_secs(8 * 3600);
/// Rows per page of the runs table.
pub const PAGE_SIZE: usize = 50;
/// The session cookie.
const COOKIE: &str = "airlock_ui";

/// Maps a run's import name to the repository the registry's rules apply to.
pub type RepositoryOf = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// What the pages read.
pub struct Ui {
    /// The registry (storage and users) when this is `airlock serve`.
    pub registry: Option<Arc<airlock_registry::Registry>>,
    /// The imports and their runs (and the pipeline behind the actions), when configured.
    pub pipeline: Option<Arc<Pipeline>>,
    /// No actions (run now, roll back): the page of `airlock watch`, which has no users.
    read_only: bool,
    /// The repository the rules apply to for a run of an import that is not configured (the
    /// gated mirror's, one per tag), when there is a mirror.
    mirror_repository: Option<RepositoryOf>,
    /// Signs sessions and form tokens; made at start, so signing in again after a restart.
    key: ring::hmac::Key,
    templates: minijinja::Environment<'static>,
}

impl Ui {
    /// The web page over `registry` and/or `pipeline`; `read_only` offers no actions. Sessions
    /// are signed with a key made now.
    pub fn new(registry: Option<Arc<airlock_registry::Registry>>, pipeline: Option<Arc<Pipeline>>, read_only: bool) -> Arc<Ui> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng).expect("the system's randomness");
        Arc::new(Ui { registry, pipeline, read_only, mirror_repository: None, key, templates: templates() })
    }

    /// The same page, also showing runs of the gated mirror's imports to callers the rules let
    /// pull the repository `repository_of` names for them.
    pub fn with_mirror(self: Arc<Ui>, repository_of: RepositoryOf) -> Arc<Ui> {
        let mut ui = Arc::into_inner(self).expect("set up before it is shared");
        ui.mirror_repository = Some(repository_of);
        Arc::new(ui)
    }

    /// [`Ui::new`] signing sessions with `secret` (from configuration: every replica given the
    /// same one accepts the others' sign-ins, and a restart keeps them).
    pub fn with_key(registry: Option<Arc<airlock_registry::Registry>>, pipeline: Option<Arc<Pipeline>>, read_only: bool, secret: &[u8]) -> Arc<Ui> {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        Arc::new(Ui { registry, pipeline, read_only, mirror_repository: None, key, templates: templates() })
    }

    /// Whether `caller` may change what `import` promotes (push on its target).
    fn may_change(&self, caller: &Caller, import: &Import) -> bool {
        !self.read_only && self.allows(caller, &repository_of(&import.target), Action::Push)
    }

    fn auth(&self) -> Option<&airlock_registry::auth::Auth> {
        self.registry.as_ref().and_then(|r| r.auth.as_ref())
    }

    /// Whether `caller` may do `action` on `repository` (anyone may, without users configured).
    fn allows(&self, caller: &Caller, repository: &str, action: Action) -> bool {
        self.auth().is_none_or(|auth| auth.allows(caller, repository, action))
    }

    fn sign(&self, text: &str) -> String {
        hex::encode(ring::hmac::sign(&self.key, text.as_bytes()).as_ref())
    }

    /// The caller behind a request's session cookie.
    fn caller(&self, headers: &HeaderMap) -> Caller {
        let Some(value) = cookie(headers, COOKIE) else { return Caller::Anonymous };
        let mut parts = value.splitn(3, '.');
        let (Some(user), Some(expiry), Some(mac)) = (parts.next(), parts.next(), parts.next()) else { return Caller::Anonymous };
        let Ok(mac) = hex::decode(mac) else { return Caller::Anonymous };
        if ring::hmac::verify(&self.key, format!("session|{user}|{expiry}").as_bytes(), &mac).is_err() {
            return Caller::Anonymous;
        }
        let fresh = expiry.parse::<u64>().is_ok_and(|e| e > airlock_oci::time::now());
        match (fresh, hex::decode(user).ok().and_then(|u| String::from_utf8(u).ok())) {
            (true, Some(user)) => Caller::User(user),
            _ => Caller::Anonymous,
        }
    }

    /// The form token of a caller's session.
    fn csrf(&self, caller: &Caller) -> String {
        let who = match caller {
            Caller::User(user) => user.as_str(),
            _ => "",
        };
        self.sign(&format!("csrf|{who}"))
    }

    fn render(&self, name: &str, caller: &Caller, context: serde_json::Value) -> Response {
        let mut context = context;
        let user = match caller {
            Caller::User(user) => Some(user.clone()),
            _ => None,
        };
        context["user"] = serde_json::json!(user);
        context["auth"] = serde_json::json!(self.auth().is_some());
        context["has_gates"] = serde_json::json!(self.pipeline.is_some());
        context["has_registry"] = serde_json::json!(self.registry.is_some());
        context["csrf"] = serde_json::json!(self.csrf(caller));
        match self.templates.get_template(name).and_then(|t| t.render(&context)) {
            Ok(html) => html_response(StatusCode::OK, html),
            Err(e) => {
                tracing::error!("rendering {name}: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "cannot render the page").into_response()
            }
        }
    }

    fn message(&self, status: StatusCode, caller: &Caller, heading: &str, message: &str) -> Response {
        let mut response = self.render("message.html", caller, serde_json::json!({"heading": heading, "message": message}));
        *response.status_mut() = status;
        response
    }

    /// The imports `caller` may see (pull on their target).
    fn visible_imports(&self, caller: &Caller) -> Vec<&Import> {
        match &self.pipeline {
            Some(pipeline) => pipeline.config.imports.iter().filter(|i| self.allows(caller, &repository_of(&i.target), Action::Pull)).collect(),
            None => Vec::new(),
        }
    }
}

fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, text) in [
        ("base.html", include_str!("../templates/base.html")),
        ("message.html", include_str!("../templates/message.html")),
        ("login.html", include_str!("../templates/login.html")),
        ("imports.html", include_str!("../templates/imports.html")),
        ("runs.html", include_str!("../templates/runs.html")),
        ("runs_rows.html", include_str!("../templates/runs_rows.html")),
        ("run.html", include_str!("../templates/run.html")),
        ("repositories.html", include_str!("../templates/repositories.html")),
        ("tags.html", include_str!("../templates/tags.html")),
        ("manifest.html", include_str!("../templates/manifest.html")),
    ] {
        env.add_template(name, text).expect("the page templates parse");
    }
    env
}

/// The repository path a reference names in its registry (what the rules are written for).
fn repository_of(reference: &Reference) -> String {
    match reference {
        Reference::Registry(r) => r.repository.clone(),
        Reference::Root(r) => r.repository.clone(),
        Reference::Layout(l) => l.path.clone(),
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// The headers every page carries: no inline script, nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn html_response(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A time as the pages show it: `2026-12-07 05:06:01 UTC`.
fn when(secs: u64) -> String {
    airlock_oci::time::rfc3339(secs).replace('T', " ").replace('Z', " UTC")
}

fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "–".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
    }
}

/// `300s` → `5m`, as airlock.yaml writes durations.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The web page's routes, to merge beside `/v2/`.
pub fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(imports))
        .route("/ui/static/style.css", get(|| async { static_asset("text/css; charset=utf-8", include_str!("../assets/style.css")) }))
        .route("/ui/static/app.js", get(|| async { static_asset("text/javascript; charset=utf-8", include_str!("../assets/app.js")) }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/runs/{id}/rollback", post(rollback))
        .route("/ui/imports/{name}/run", post(run_now))
        .route("/ui/events", get(events))
        .route("/ui/registry", get(repositories))
        .route("/ui/registry/{*path}", get(registry_path))
        .with_state(ui)
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    next: String,
}

#[derive(Deserialize, Default)]
struct Next {
    #[serde(default)]
    next: String,
}

/// Only a path of this page to go back to after signing in (never another site).
fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui/") && !next.starts_with("/ui//") && !next.contains(['\\', '\r', '\n']) {
        next
    } else {
        "/ui/"
    }
}

async fn login_page(State(ui): State<Arc<Ui>>, headers: HeaderMap, Query(next): Query<Next>) -> Response {
    let caller = ui.caller(&headers);
    ui.render("login.html", &caller, serde_json::json!({"next": safe_next(&next.next), "failed": null}))
}

async fn login(State(ui): State<Arc<Ui>>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Some(auth) = ui.auth() else {
        return Redirect::to(safe_next(&form.next)).into_response();
    };
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{}:{}", form.username, form.password));
    match auth.check_basic(&encoded, None) {
        BasicCheck::User(user) => {
            let expiry = airlock_oci::time::now() + SESSION.as_secs();
            let user_hex = hex::encode(user.as_bytes());
            let mac = ui.sign(&format!("session|{user_hex}|{expiry}"));
            let mut response = Redirect::to(safe_next(&form.next)).into_response();
            // Over HTTPS (serve's TLS marks its connections as a proxy would) the cookie is never
            // sent in the clear.
            let https = headers.get("x-forwarded-proto").is_some_and(|v| v == "https");
            let secure = if https { "; Secure" } else { "" };
            let cookie = format!("{COOKIE}={user_hex}.{expiry}.{mac}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION.as_secs());
            response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a cookie of hex digits"));
            response
        }
        BasicCheck::Wrong => {
            let mut response = ui.render("login.html", &Caller::Anonymous, serde_json::json!({"next": safe_next(&form.next), "failed": "Wrong user or password."}));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
        BasicCheck::Throttled(wait) => {
            let text = format!("Too many failed sign-ins: try again in {} s.", wait.as_secs().max(1));
            let mut response = ui.render("login.html", &Caller::Anonymous, serde_json::json!({"next": safe_next(&form.next), "failed": text}));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
        }
    }
}

async fn logout(State(ui): State<Arc<Ui>>, headers: HeaderMap, Form(form): Form<ActionForm>) -> Response {
    let caller = ui.caller(&headers);
    if let Some(refused) = check_action(&ui, &caller, &headers, &form) {
        return refused;
    }
    let mut response = Redirect::to("/ui/").into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")).expect("ascii"));
    response
}

/// A `403` for a form sent from another site: browsers say so in `Sec-Fetch-Site`, and an
/// `Origin` naming another host says the same.
fn cross_site(headers: &HeaderMap) -> Option<Response> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let foreign_origin = origin.is_some_and(|o| o != "null" && o.split_once("://").map(|(_, h)| h) != Some(host));
    if site.is_some_and(|s| s != "same-origin" && s != "none") || foreign_origin {
        return Some((StatusCode::FORBIDDEN, "cross-site request refused").into_response());
    }
    None
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// Refuses an action whose form token is not the session's, or that came from another site.
fn check_action(ui: &Ui, caller: &Caller, headers: &HeaderMap, form: &ActionForm) -> Option<Response> {
    if let Some(refused) = cross_site(headers) {
        return Some(refused);
    }
    // Checked as a MAC (in constant time), not compared as text.
    let who = match caller {
        Caller::User(user) => user.as_str(),
        _ => "",
    };
    let valid = hex::decode(&form.csrf).is_ok_and(|mac| ring::hmac::verify(&ui.key, format!("csrf|{who}").as_bytes(), &mac).is_ok());
    (!valid).then(|| ui.message(StatusCode::FORBIDDEN, caller, "Refused", "The form is out of date or came from elsewhere: load the page again."))
}

#[derive(Serialize)]
struct TagView {
    tag: String,
    promoted: Option<String>,
    since: Option<String>,
    last_run: Option<String>,
    last_status: Option<String>,
    timeline: String,
}

async fn imports(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let caller = ui.caller(&headers);
    let Some(pipeline) = &ui.pipeline else { return Redirect::to("/ui/registry").into_response() };
    let next_looks = pipeline.runs.next_looks().await.unwrap_or_default();
    let mut views = Vec::new();
    for import in ui.visible_imports(&caller) {
        let runs = pipeline.runs.list(Some(&import.name), 200).await.unwrap_or_default();
        let mut tags: Vec<String> = runs.iter().map(|r| r.tag.clone()).collect();
        tags.sort();
        tags.dedup();
        let mut tag_views = Vec::new();
        for tag in tags {
            let of_tag: Vec<&Run> = runs.iter().filter(|r| r.tag == tag).collect();
            let promotion = of_tag.iter().find(|r| status_of(r) == Status::Succeeded && r.promoted_digest.is_some());
            let last = of_tag.first();
            tag_views.push(TagView {
                promoted: promotion.and_then(|r| r.promoted_digest.clone()),
                since: promotion.map(|r| when(r.started)),
                last_run: last.map(|r| r.run_id.clone()),
                last_status: last.map(|r| r.status.clone()),
                timeline: timeline::svg(&of_tag),
                tag,
            });
        }
        let interval = import.interval.unwrap_or(pipeline.config.interval);
        // The watch loop records its next look in the run database; without one running, the
        // interval is all there is to say.
        let mut schedule = match next_looks.get(&import.name) {
            Some(at) if *at + 60 >= airlock_oci::time::now() => format!("{} (every {})", when(*at), human(interval)),
            _ => format!("every {} while airlock watch runs", human(interval)),
        };
        if let Some(timer) = import.timer {
            schedule.push_str(&format!("; the gates again every {}", human(timer)));
        }
        views.push(serde_json::json!({
            "name": import.name,
            "source": import.source.repository_key(),
            "target": import.target.repository_key(),
            "schedule": schedule,
            "tags": tag_views,
            "may_run": ui.may_change(&caller, import),
        }));
    }
    ui.render("imports.html", &caller, serde_json::json!({"imports": views, "csrf": ui.csrf(&caller)}))
}

#[derive(Deserialize, Default)]
struct RunsQuery {
    #[serde(default)]
    import: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    trigger: String,
    #[serde(default)]
    page: Option<usize>,
}

fn run_rows(runs: &[Run]) -> Vec<serde_json::Value> {
    runs.iter()
        .map(|r| {
            serde_json::json!({
                "run_id": r.run_id, "import": r.import, "platform": r.platform, "status": r.status, "trigger": r.trigger,
                "started": when(r.started), "duration": duration(r.duration_ms),
            })
        })
        .collect()
}

/// The runs `caller` may see: all without users configured, else those of visible imports.
/// (With a mirror, also the runs of its imports whose repository the caller may pull.)
async fn visible_filter(ui: &Ui, caller: &Caller) -> RunFilter {
    if ui.auth().is_none() {
        return RunFilter::default();
    }
    let mut names: Vec<String> = ui.visible_imports(caller).iter().map(|i| i.name.clone()).collect();
    if let (Some(repository_of), Some(pipeline)) = (&ui.mirror_repository, &ui.pipeline) {
        for name in pipeline.runs.import_names().await.unwrap_or_default() {
            if repository_of(&name).is_some_and(|repository| ui.allows(caller, &repository, Action::Pull)) {
                names.push(name);
            }
        }
    }
    RunFilter { imports: Some(names), ..RunFilter::default() }
}

async fn runs(State(ui): State<Arc<Ui>>, headers: HeaderMap, Query(query): Query<RunsQuery>) -> Response {
    let caller = ui.caller(&headers);
    let Some(pipeline) = &ui.pipeline else { return ui.message(StatusCode::NOT_FOUND, &caller, "No runs here", "This airlock has no imports configured.") };
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let filter = RunFilter { import: nonempty(&query.import), status: nonempty(&query.status), trigger: nonempty(&query.trigger), ..visible_filter(&ui, &caller).await };
    let page = query.page.unwrap_or(1).max(1);
    let (rows, total) = match pipeline.runs.page(&filter, (page - 1) * PAGE_SIZE, PAGE_SIZE).await {
        Ok(found) => found,
        Err(e) => return ui.message(StatusCode::SERVICE_UNAVAILABLE, &caller, "Run database unavailable", &e.to_string()),
    };
    let rows = run_rows(&rows);
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let link = |p: usize| {
        let mut pairs: Vec<String> = Vec::new();
        for (key, value) in [("import", &query.import), ("status", &query.status), ("trigger", &query.trigger)] {
            if !value.is_empty() {
                pairs.push(format!("{key}={}", urlencode(value)));
            }
        }
        pairs.push(format!("page={p}"));
        format!("/ui/runs?{}", pairs.join("&"))
    };
    let import_names: Vec<&str> = ui.visible_imports(&caller).iter().map(|i| i.name.as_str()).collect();
    ui.render(
        "runs.html",
        &caller,
        serde_json::json!({
            "runs": rows, "total": total, "page": page, "pages": pages,
            "previous": (page > 1).then(|| link(page - 1)), "next": (page < pages).then(|| link(page + 1)),
            "filter": {"import": query.import, "status": query.status, "trigger": query.trigger},
            "import_names": import_names,
        }),
    )
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A run `caller` may see, with its import when it is configured.
async fn visible_run<'a>(ui: &'a Ui, caller: &Caller, id: &str) -> Result<(Run, Option<&'a Import>), Response> {
    let Some(pipeline) = &ui.pipeline else { return Err(ui.message(StatusCode::NOT_FOUND, caller, "No runs here", "This airlock has no imports configured.")) };
    let run = match pipeline.runs.get(id).await {
        Ok(Some(run)) => run,
        Ok(None) => return Err(ui.message(StatusCode::NOT_FOUND, caller, "No such run", &format!("There is no run `{id}`."))),
        Err(e) => return Err(ui.message(StatusCode::SERVICE_UNAVAILABLE, caller, "Run database unavailable", &e.to_string())),
    };
    let import = pipeline.config.import(&run.import);
    let visible = match import {
        Some(import) => ui.allows(caller, &repository_of(&import.target), Action::Pull),
        None => match &ui.mirror_repository {
            _ if ui.auth().is_none() => true,
            Some(repository_of) => repository_of(&run.import).is_some_and(|repository| ui.allows(caller, &repository, Action::Pull)),
            None => false,
        },
    };
    if !visible {
        return Err(ui.message(StatusCode::NOT_FOUND, caller, "No such run", &format!("There is no run `{id}` you may see.")));
    }
    Ok((run, import))
}

async fn run(State(ui): State<Arc<Ui>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = ui.caller(&headers);
    let (run, import) = match visible_run(&ui, &caller, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let pipeline = ui.pipeline.as_ref().expect("checked by visible_run");
    let (log, gates) = pipeline.runs.logs(&run.run_id).await.unwrap_or_default();
    let report = match (import, &run.promoted_digest) {
        (Some(import), Some(digest)) => gate_report(pipeline, import, digest, &run.run_id).await,
        _ => None,
    };
    let may_roll_back = import.is_some_and(|i| ui.may_change(&caller, i))
        && status_of(&run) == Status::Succeeded
        && run.promoted_digest.is_some();
    let manifest_link = match (import, &run.promoted_digest, &ui.registry) {
        (Some(import), Some(digest), Some(_)) => Some(format!("/ui/registry/{}/manifests/{digest}", repository_of(&import.target))),
        _ => None,
    };
    ui.render(
        "run.html",
        &caller,
        serde_json::json!({
            "status": run.status, "trigger": run.trigger,
            "run": run, "started": when(run.started), "duration": duration(run.duration_ms), "log": log, "gates": gates,
            "report": report, "report_type": airlock_gate::pipeline::REPORT_ARTIFACT_TYPE,
            "may_roll_back": may_roll_back, "csrf": ui.csrf(&caller), "target": import.map(|i| i.target.repository_key()),
            "manifest_link": manifest_link,
        }),
    )
}

/// The gate report a run attached to the digest it promoted, pretty JSON.
async fn gate_report(pipeline: &Pipeline, import: &Import, digest: &str, run_id: &str) -> Option<String> {
    use futures::StreamExt as _;
    let digest = airlock_oci::parse_digest(digest).ok()?;
    let target = airlock_gate::open_store(&pipeline.registries, &import.target, airlock_store::remote::Access::Pull).await;
    let referrers = target.referrers(&digest, Some(airlock_gate::pipeline::REPORT_ARTIFACT_TYPE)).await.ok()?;
    for referrer in referrers {
        let of_run = referrer.annotations().as_ref().and_then(|a| a.get("dev.airlock.run-id")).is_none_or(|r| r == run_id);
        if !of_run {
            continue;
        }
        let manifest = target.get_manifest(referrer.digest().as_ref()).await.ok()?;
        let ManifestKind::Image { layers, .. } = manifest.kind() else { continue };
        let layer = layers.first()?;
        if layer.size() > 1 << 20 {
            return None;
        }
        let mut stream = target.get_blob(layer, 0).await.ok()?;
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk.ok()?);
        }
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        return serde_json::to_string_pretty(&value).ok();
    }
    None
}

async fn rollback(State(ui): State<Arc<Ui>>, headers: HeaderMap, Path(id): Path<String>, Form(form): Form<ActionForm>) -> Response {
    let caller = ui.caller(&headers);
    if let Some(refused) = check_action(&ui, &caller, &headers, &form) {
        return refused;
    }
    let (run, import) = match visible_run(&ui, &caller, &id).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(import) = import else { return ui.message(StatusCode::NOT_FOUND, &caller, "Not an import", "This run's import is not in the configuration.") };
    if !ui.may_change(&caller, import) {
        return ui.message(StatusCode::FORBIDDEN, &caller, "Not allowed", &format!("Rolling back needs push on `{}`.", repository_of(&import.target)));
    }
    let pipeline = ui.pipeline.as_ref().expect("checked by visible_run");
    match pipeline.rollback(import, &run.tag, Some(&run.run_id)).await {
        Ok(outcome) => Redirect::to(&format!("/ui/runs/{}", outcome.run_id.unwrap_or(run.run_id))).into_response(),
        Err(e) => ui.message(StatusCode::CONFLICT, &caller, "Rollback refused", &e),
    }
}

async fn run_now(State(ui): State<Arc<Ui>>, headers: HeaderMap, Path(name): Path<String>, Form(form): Form<ActionForm>) -> Response {
    let caller = ui.caller(&headers);
    if let Some(refused) = check_action(&ui, &caller, &headers, &form) {
        return refused;
    }
    let Some(pipeline) = ui.pipeline.clone() else { return ui.message(StatusCode::NOT_FOUND, &caller, "No imports", "This airlock has no imports configured.") };
    let Some(import) = ui.visible_imports(&caller).into_iter().find(|i| i.name == name).cloned() else {
        return ui.message(StatusCode::NOT_FOUND, &caller, "No such import", &format!("There is no import `{name}` you may see."));
    };
    if !ui.may_change(&caller, &import) {
        return ui.message(StatusCode::FORBIDDEN, &caller, "Not allowed", &format!("Running an import needs push on `{}`.", repository_of(&import.target)));
    }
    // Runs on in the background (the page follows it live); `--force`, as a human asked.
    tokio::spawn(async move {
        for outcome in pipeline.import(&import, Trigger::Manual, true).await {
            tracing::info!(import = %outcome.import, tag = %outcome.tag, action = outcome.action, "run from the web page");
        }
    });
    Redirect::to(&format!("/ui/runs?import={}", urlencode(&name))).into_response()
}

/// Server-sent events: `runs` whenever the newest run or the set of running runs changes.
async fn events(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let caller = ui.caller(&headers);
    let Some(pipeline) = ui.pipeline.clone() else { return StatusCode::NOT_FOUND.into_response() };
    let filter = visible_filter(&ui, &caller).await;
    let stream = futures::stream::unfold((pipeline, filter, String::new(), true), |(pipeline, filter, last, first)| async move {
        loop {
            if !first {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let newest = pipeline.runs.page(&filter, 0, 1).await.ok().and_then(|(runs, _)| runs.into_iter().next());
            let running = pipeline.runs.page(&RunFilter { status: Some("Running".into()), ..filter.clone() }, 0, 100).await.map(|(runs, _)| runs).unwrap_or_default();
            let state = format!(
                "{}|{}|{}",
                newest.as_ref().map(|r| r.run_id.as_str()).unwrap_or(""),
                newest.as_ref().map(|r| r.status.as_str()).unwrap_or(""),
                running.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>().join(",")
            );
            if state != last {
                let event = Event::default().event("runs").data(state.clone());
                return Some((Ok::<_, std::convert::Infallible>(event), (pipeline, filter, state, false)));
            }
            if first {
                // Nothing to say yet: wait before the next look.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut response = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn repositories(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    let caller = ui.caller(&headers);
    let Some(registry) = &ui.registry else { return ui.message(StatusCode::NOT_FOUND, &caller, "No registry here", "This airlock serves no registry.") };
    let all = registry.storage.repositories().await.unwrap_or_default();
    let visible: Vec<String> = all.into_iter().filter(|r| ui.allows(&caller, r, Action::Pull)).collect();
    ui.render("repositories.html", &caller, serde_json::json!({"repositories": visible}))
}

async fn registry_path(State(ui): State<Arc<Ui>>, headers: HeaderMap, Path(path): Path<String>) -> Response {
    let caller = ui.caller(&headers);
    let Some(registry) = &ui.registry else { return ui.message(StatusCode::NOT_FOUND, &caller, "No registry here", "This airlock serves no registry.") };
    let (repository, reference) = match path.split_once("/manifests/") {
        Some((repository, reference)) => (repository.to_owned(), Some(reference.to_owned())),
        None => (path.trim_end_matches('/').to_owned(), None),
    };
    let unknown = || ui.message(StatusCode::NOT_FOUND, &caller, "Not found", &format!("There is no repository `{repository}` you may pull."));
    if airlock_oci::validate_repository(&repository).is_err() || !ui.allows(&caller, &repository, Action::Pull) {
        return unknown();
    }
    let storage = &registry.storage;
    let Some(reference) = reference else {
        let Ok(tags) = storage.tags(&repository).await else { return unknown() };
        let mut rows = Vec::new();
        for tag in tags {
            let digest = storage.resolve(&repository, &tag).await.map(|(d, _)| d.to_string()).unwrap_or_default();
            rows.push(serde_json::json!({"name": tag, "digest": digest}));
        }
        return ui.render("tags.html", &caller, serde_json::json!({"repository": repository, "tags": rows}));
    };
    let Ok((digest, media_type, body)) = storage.get_manifest(&repository, &reference).await else {
        return ui.message(StatusCode::NOT_FOUND, &caller, "Not found", &format!("`{repository}` has no manifest `{reference}`."));
    };
    let manifest = match airlock_oci::Manifest::parse(body, Some(&media_type)) {
        Ok(manifest) => manifest,
        Err(e) => return ui.message(StatusCode::UNPROCESSABLE_ENTITY, &caller, "Unreadable manifest", &e.to_string()),
    };
    let describe = |d: &airlock_oci::Descriptor| serde_json::json!({"digest": d.digest().to_string(), "media_type": d.media_type().to_string(), "size": bytes(d.size())});
    let (mut platforms, mut layers, mut config, mut total) = (Vec::new(), Vec::new(), None, 0u64);
    let artifact = match manifest.kind() {
        ManifestKind::Index { manifests, artifact_type, .. } => {
            for child in manifests {
                let platform = child.platform().as_ref().map(|p| {
                    let mut text = format!("{}/{}", p.os(), p.architecture());
                    if let Some(variant) = p.variant() {
                        text.push_str(&format!("/{variant}"));
                    }
                    text
                });
                platforms.push(serde_json::json!({"platform": platform.unwrap_or_else(|| "–".into()), "digest": child.digest().to_string(), "size": bytes(child.size())}));
            }
            artifact_type.clone()
        }
        ManifestKind::Image { config: c, layers: l, artifact_type, .. } => {
            config = Some(describe(c));
            total = l.iter().map(|d| d.size()).sum();
            layers = l.iter().map(describe).collect();
            artifact_type.clone()
        }
    };
    let referrers: Vec<serde_json::Value> = storage
        .referrers(&repository, &digest)
        .await
        .unwrap_or_default()
        .iter()
        .map(|d| serde_json::json!({"digest": d.digest().to_string(), "artifact_type": d.artifact_type().as_ref().map(|t| t.to_string()).unwrap_or_default()}))
        .collect();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    ui.render(
        "manifest.html",
        &caller,
        serde_json::json!({
            "repository": repository, "reference": reference, "digest": digest.to_string(), "media_type": media_type,
            "pull": format!("{host}/{repository}@{digest}"), "artifact_type": artifact,
            "platforms": platforms, "layers": layers, "config": config, "total": bytes(total), "referrers": referrers,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_parse_and_escape() {
        let env = templates();
        let html = env.get_template("message.html").unwrap().render(serde_json::json!({"heading": "<b>", "message": "<script>x</script>"})).unwrap();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>x"), "{html}");
    }

    #[test]
    fn only_paths_of_this_page_are_gone_back_to() {
        assert_eq!(safe_next("/ui/runs?import=node"), "/ui/runs?import=node");
        for bad in ["https://evil.example/", "//evil.example/", "/ui//evil.example", "/v2/", "javascript:alert(1)", ""] {
            assert_eq!(safe_next(bad), "/ui/", "{bad}");
        }
    }

    #[test]
    fn sessions_are_signed_and_expire() {
        let ui = Ui::new(None, None, false);
        let user = hex::encode("alice");
        let expiry = airlock_oci::time::now() + 60;
        let good = format!("{COOKIE}={user}.{expiry}.{}", ui.sign(&format!("session|{user}|{expiry}")));
        let headers = |cookie: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
            headers
        };
        assert_eq!(ui.caller(&headers(&good)), Caller::User("alice".into()));
        let forged = format!("{COOKIE}={}.{expiry}.{}", hex::encode("root"), ui.sign(&format!("session|{user}|{expiry}")));
        assert_eq!(ui.caller(&headers(&forged)), Caller::Anonymous);
        let past = airlock_oci::time::now() - 1;
        let expired = format!("{COOKIE}={user}.{past}.{}", ui.sign(&format!("session|{user}|{past}")));
        assert_eq!(ui.caller(&headers(&expired)), Caller::Anonymous);
        assert_ne!(ui.csrf(&Caller::User("alice".into())), ui.csrf(&Caller::Anonymous));
    }

    proptest::proptest! {
        /// A cookie header and a `next` parameter are the client's: any bytes give anonymous or
        /// a signed user, and a path of this page, never a panic or another site.
        #[test]
        fn any_cookie_or_next_is_harmless(cookie in "[ -~]{0,200}", next in "[ -~]{0,80}") {
            let ui = Ui::new(None, None, false);
            let mut headers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.insert(header::COOKIE, value);
            }
            proptest::prop_assert_eq!(ui.caller(&headers), Caller::Anonymous);
            let target = safe_next(&next);
            proptest::prop_assert!(target.starts_with("/ui/") && !target.starts_with("/ui//"));
        }
    }

    #[test]
    fn cross_site_forms_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.insert(*k, HeaderValue::from_static(v));
            }
            headers
        };
        assert!(cross_site(&headers(&[("host", "a:5000"), ("origin", "http://a:5000"), ("sec-fetch-site", "same-origin")])).is_none());
        assert!(cross_site(&headers(&[("host", "a:5000"), ("origin", "http://evil.example")])).is_some());
        assert!(cross_site(&headers(&[("host", "a:5000"), ("sec-fetch-site", "cross-site")])).is_some());
    }
}
