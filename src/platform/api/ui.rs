//! `/ui`: a small server-rendered page for the people who write the messages: list, create,
//! edit and delete messages and their localizations, look up a user's devices and a
//! notification's result, see live counts. No JavaScript and no build step: plain HTML forms.
//!
//! Protected like the API: the same keys. A browser cannot send a bearer header from a form,
//! so `POST /ui/login` takes the key once and answers a session (`Keys::open_session`: the
//! app, an expiry 12 h on, a random nonce, and an HMAC of them under the key; never the key
//! itself; a sign-out is recorded, so a copy of the cookie ends with it) in an
//! `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui` (other sites' pages cannot make the
//! browser send it, and the JSON API never reads it), `Secure` when the request came over HTTPS
//! (`X-Forwarded-Proto`, from the proxy that ends TLS). `SameSite` trusts the whole registrable
//! domain, so every form that changes something also carries a token derived from the session
//! (an HMAC under the key), which a sibling subdomain's page cannot know. Pages are
//! `Cache-Control: no-store` (they list device tokens) and not to be framed. The HTML is
//! written with `format!`, every value through `escape` (html-escape): a page this size does
//! not need a template engine.

use super::auth::SESSION_LIFETIME;
use super::error::ApiError;
use super::{read_error, store_error, ApiState, Caller};
use crate::platform::messages::{valid_name, Localization, Message, Priority};
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

const COOKIE: &str = "pusher_ui";

/// How far back the live counts look.
const RECENT_SECONDS: f64 = 10.0;

/// Text safe inside HTML elements and quoted attributes.
fn escape(text: &str) -> String {
    html_escape::encode_safe(text).into_owned()
}

/// A refusal of a `/ui` route: the API's error, with its status and headers (`Retry-After`),
/// shown to the browser as a page rather than as the JSON API's body.
pub(super) struct UiError(ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> UiError {
        UiError(e)
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (title, said) = match &self.0 {
            // A form posted after its session ended (expired, signed out, its key taken out).
            ApiError::Unauthorized => (
                "signed out",
                "Your session has ended: sign in again.".to_owned(),
            ),
            e => ("error", e.to_string()),
        };
        let body = page(
            title,
            &format!(
                r#"<p class="error">{}</p><p><a href="/ui">Back to the page</a></p>"#,
                escape(&said)
            ),
        );
        let (mut parts, _) = self.0.into_response().into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        Response::from_parts(parts, axum::body::Body::from(body))
    }
}

/// A signed-in browser: the caller whose key signed the cookie's session, and the token its
/// forms carry. An extractor, so that a form's sender is known before its body is read: the
/// body of an unknown one is never waited for.
pub(super) struct Session {
    caller: Caller,
    csrf: String,
    /// The SHA-256 of its cookie: how a sign-out names it.
    digest: Vec<u8>,
    expiry: u64,
}

impl FromRequestParts<ApiState> for Session {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Session, UiError> {
        let cookie = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value)
            .ok_or(ApiError::Unauthorized)?;
        let session = state.keys.session(cookie, SystemTime::now())?;
        let digest = ring::digest::digest(&ring::digest::SHA256, session.cookie.as_bytes());
        let digest = digest.as_ref().to_vec();
        if state.store.signed_out(&digest).await.map_err(read_error)? {
            return Err(ApiError::Unauthorized.into());
        }
        Ok(Session {
            caller: session.caller,
            csrf: session.csrf,
            digest,
            expiry: session.expiry,
        })
    }
}

/// A form's token is the session's, compared in constant time.
fn check_csrf(session: &Session, given: &str) -> Result<(), ApiError> {
    use subtle::ConstantTimeEq;
    if bool::from(session.csrf.as_bytes().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            message: "the form's token is not this session's: reload the page and try again"
                .to_owned(),
        })
    }
}

/// The hidden input of a form that changes something.
fn csrf_input(session: &Session) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        escape(&session.csrf)
    )
}

/// A form's body, or why it cannot be read (as the JSON routes' bodies: 408, 413, 400).
fn form<T>(form: Result<Form<T>, FormRejection>, limit: usize) -> Result<T, ApiError> {
    match form {
        Ok(Form(form)) => Ok(form),
        Err(FormRejection::BytesRejection(e)) => Err(super::body_error(e, limit)),
        Err(e) => Err(ApiError::BadRequest {
            field: None,
            message: e.body_text(),
        }),
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · pusher</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1.5rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }}
h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.1rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #eee; padding: .3rem .5rem; text-align: left; vertical-align: top; }}
label {{ display: block; margin: .4rem 0; }} input, select, textarea {{ font: inherit; }}
textarea {{ width: 100%; }} .error {{ color: #a00; font-weight: bold; }} .ok {{ color: #060; }}
.counts td {{ font-size: 1.3rem; }} form.inline {{ display: inline; }}
</style></head><body>
<h1>pusher: {title}</h1>
{body}
</body></html>"#,
        title = escape(title),
    )
}

fn login_page(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error">{}</p>"#, escape(e)))
        .unwrap_or_default();
    page(
        "sign in",
        &format!(
            r#"{error}<form method="post" action="/ui/login">
<label>API key <input type="password" name="key" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form>"#
        ),
    )
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct View {
    /// A message to load into the form.
    edit: Option<String>,
    /// A user whose devices to show.
    user: Option<String>,
    /// A notification whose result to show.
    notif: Option<String>,
    /// What the last action did.
    saved: Option<String>,
    deleted: Option<String>,
}

/// `GET /ui`: the sign-in form, or the page.
pub(super) async fn index(
    State(state): State<ApiState>,
    session: Result<Session, UiError>,
    view: Result<Query<View>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    let session = match session {
        Ok(session) => session,
        Err(UiError(ApiError::Unauthorized)) => return Ok(Html(login_page(None)).into_response()),
        // PostgreSQL could not say whether it was signed out: not the sign-in form, which
        // would only lead back here.
        Err(e) => return Err(e),
    };
    let view = view.map(|Query(v)| v).unwrap_or_default();
    let editing = match &view.edit {
        Some(name) => state
            .messages
            .get(&session.caller.app, name)
            .await
            .map_err(read_error)?,
        None => None,
    };
    let editing = editing.as_ref().map(MessageForm::from);
    let body = render(&state, &session, &view, editing.as_ref(), None).await?;
    Ok(Html(body).into_response())
}

/// Every `/ui` answer: never stored by a cache (the page lists device tokens), never framed.
pub(super) async fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The page: status line, live counts, messages, the message form, the lookups.
async fn render(
    state: &ApiState,
    session: &Session,
    view: &View,
    editing: Option<&MessageForm>,
    error: Option<&str>,
) -> Result<String, ApiError> {
    let caller = &session.caller;
    let app: &str = &caller.app;
    let csrf = csrf_input(session);
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<p>App <b>{}</b> (key {}). <form class="inline" method="post" action="/ui/logout">{csrf}<button>Sign out</button></form></p>"#,
        escape(app),
        escape(&caller.name)
    );
    if let Some(e) = error {
        let _ = write!(b, r#"<p class="error" id="error">{}</p>"#, escape(e));
    }
    if let Some(name) = &view.saved {
        let _ = write!(b, r#"<p class="ok" id="saved">Saved {}.</p>"#, escape(name));
    }
    if let Some(name) = &view.deleted {
        let _ = write!(b, r#"<p class="ok">Deleted {}.</p>"#, escape(name));
    }

    // Live counts: from PostgreSQL (accepted, verdicts) and the router group's progress.
    let [accepted, delivered, failed] = state
        .store
        .recent_counts(app, RECENT_SECONDS)
        .await
        .map_err(read_error)?;
    let routed = routed_per_second(state, app).await;
    let per_second = |n: i64| format!("{:.1}", n as f64 / RECENT_SECONDS);
    let _ = write!(
        b,
        r#"<h2>Live (per second, last {RECENT_SECONDS} s; <a href="/ui">refresh</a>)</h2>
<table class="counts"><tr><th>accepted</th><th>routed</th><th>delivered</th><th>failed</th></tr>
<tr><td id="accepted">{}</td><td id="routed">{}</td><td id="delivered">{}</td><td id="failed">{}</td></tr></table>"#,
        per_second(accepted),
        routed.map_or_else(|| "–".to_owned(), |r| format!("{r:.1}")),
        per_second(delivered),
        per_second(failed),
    );

    let messages = state.messages.list(app).await.map_err(read_error)?;
    b.push_str(
        "<h2>Messages</h2><table id=\"messages\"><tr><th>name</th><th>id</th><th>event</th>\
         <th>cooldown</th><th>languages</th><th></th></tr>",
    );
    for m in &messages {
        let languages: Vec<String> = m
            .localizations
            .iter()
            .map(|l| l.language_id.to_string())
            .collect();
        let name = escape(&m.name);
        let _ = write!(
            b,
            r#"<tr><td><a href="/ui?edit={name}">{name}</a></td><td>{}</td><td>{}</td><td>{} s</td><td>{}</td>
<td><form class="inline" method="post" action="/ui/messages/delete">{csrf}<input type="hidden" name="name" value="{name}"><button>Delete</button></form></td></tr>"#,
            m.id,
            m.event_id,
            m.cooldown_s,
            languages.join(", ")
        );
    }
    if messages.is_empty() {
        b.push_str("<tr><td colspan=\"6\">None yet.</td></tr>");
    }
    b.push_str("</table>");
    b.push_str(&message_form(editing, &csrf));

    // Lookups.
    let _ = write!(
        b,
        r#"<h2>Look up</h2>
<form method="get" action="/ui"><label>User id <input name="user" value="{}"></label><button>Devices</button></form>
<form method="get" action="/ui"><label>Notification id <input name="notif" value="{}" size="50"></label><button>Result</button></form>"#,
        escape(view.user.as_deref().unwrap_or_default()),
        escape(view.notif.as_deref().unwrap_or_default()),
    );
    if let Some(user) = &view.user {
        match user.trim().parse::<i64>() {
            Ok(user) => {
                let devices = state
                    .registry
                    .devices_of(app, &[user])
                    .await
                    .map_err(read_error)?;
                let _ = write!(
                    b,
                    "<table id=\"devices\"><tr><th>platform</th><th>token</th><th>device</th><th>version</th></tr>"
                );
                for d in &devices {
                    let _ = write!(
                        b,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        d.platform,
                        escape(&d.token),
                        escape(&d.device_id),
                        escape(&d.app_version)
                    );
                }
                if devices.is_empty() {
                    b.push_str("<tr><td colspan=\"4\">No devices.</td></tr>");
                }
                b.push_str("</table>");
            }
            Err(_) => b.push_str(r#"<p class="error">A user id is a number.</p>"#),
        }
    }
    if let Some(id) = &view.notif {
        let counts = state
            .store
            .result_counts(app, id.trim())
            .await
            .map_err(read_error)?;
        b.push_str("<table id=\"result\"><tr><th>outcome</th><th>tokens</th></tr>");
        for (outcome, n) in &counts {
            let _ = write!(b, "<tr><td>{}</td><td>{n}</td></tr>", escape(outcome));
        }
        if counts.is_empty() {
            b.push_str("<tr><td colspan=\"2\">No verdicts (yet).</td></tr>");
        }
        b.push_str("</table>");
    }
    Ok(page("messages", &b))
}

/// Requests the router group committed per second since the last look (kept per process).
async fn routed_per_second(state: &ApiState, app: &str) -> Option<f64> {
    let q = &state.settings.queues;
    if q.brokers.is_empty() {
        return None;
    }
    let topics = vec![crate::platform::requests::topic(app)];
    let reading = state
        .lag
        .position(&q.route_group, &topics, Duration::from_secs(2))
        .await
        .ok()?;
    // The reading's own time: a shared one may be up to a second old.
    let (now, position) = (reading.at, reading.position);
    let mut last = state.ui_routed.lock();
    if last.get(app).is_some_and(|(then, _)| *then >= now) {
        // The same reading as the last look: nothing to compare.
        return None;
    }
    let previous = last.insert(app.to_owned(), (now, position.committed));
    let (then, committed) = previous?;
    let seconds = now.duration_since(then).as_secs_f64();
    (seconds > 0.0).then(|| (position.committed - committed).max(0) as f64 / seconds)
}

/// The form that creates a message or replaces one (the name says which): a stored message,
/// or a refused form as it was typed (a refusal that emptied the localizations and reset the
/// priority was one more save from storing that). `csrf` is its hidden token input.
fn message_form(shown: Option<&MessageForm>, csrf: &str) -> String {
    let value = |f: fn(&MessageForm) -> &str| shown.map(f).map(escape).unwrap_or_default();
    let number = |f: fn(&MessageForm) -> &str| shown.map_or_else(|| "0".into(), |m| escape(f(m)));
    let high = shown.is_some_and(|m| m.priority == "high");
    format!(
        r#"<h2>{heading}</h2>
<form method="post" action="/ui/messages" id="message-form">{csrf}
<label>Name <input name="name" value="{name}" required pattern="[A-Za-z0-9_.\-]{{1,100}}"></label>
<label>Trigger event id <input name="event_id" value="{event}" required inputmode="numeric"></label>
<label>Cooldown, seconds <input name="cooldown_s" value="{cooldown}" inputmode="numeric"></label>
<label>Screen (deep link) <input name="screen" value="{screen}"></label>
<label>Expiry, seconds (0: the provider's default) <input name="expiry_s" value="{expiry}" inputmode="numeric"></label>
<label>Priority <select name="priority"><option value="normal">normal</option><option value="high"{selected}>high</option></select></label>
<label>Localizations, one per line: <code>language id | title | text</code>; <code>{{name}}</code> takes the event's pair; in a title or text <code>\|</code> is a bar, <code>\n</code> a new line, <code>\\</code> a backslash
<textarea name="localizations" rows="4" required>{localizations}</textarea></label>
<button type="submit">Save</button></form>"#,
        heading = if shown.is_some() {
            "Edit message"
        } else {
            "New message"
        },
        name = value(|m| &m.name),
        event = value(|m| &m.event_id),
        cooldown = number(|m| &m.cooldown_s),
        screen = value(|m| &m.screen),
        expiry = number(|m| &m.expiry_s),
        selected = if high { " selected" } else { "" },
        localizations = value(|m| &m.localizations),
    )
}

/// A title or text as one field of a localization line: `|`, line breaks and the backslash
/// escaped, so that saving the form unchanged stores what it showed (a title with a bar was
/// split into title and text, a text with a line break could not be saved).
fn line_field(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// A localization line's fields: split at the bars that are not escaped, the last field
/// taking the rest (a bar typed in a text, unescaped, stays in it), each trimmed, then
/// unescaped. A backslash before anything else stays as typed.
fn line_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                field.push(c);
                field.extend(chars.next());
            }
            '|' if fields.len() < 2 => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
        .iter()
        .map(|raw| unescape_field(raw.trim()))
        .collect()
}

/// `line_field` undone.
fn unescape_field(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('|') => out.push('|'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            other => {
                out.push('\\');
                out.extend(other);
            }
        }
    }
    out
}

impl From<&Message> for MessageForm {
    fn from(m: &Message) -> Self {
        MessageForm {
            csrf: String::new(),
            name: m.name.clone(),
            event_id: m.event_id.to_string(),
            cooldown_s: m.cooldown_s.to_string(),
            screen: m.screen.clone(),
            expiry_s: m.expiry_s.to_string(),
            priority: match m.priority {
                Priority::High => "high",
                Priority::Normal => "normal",
            }
            .to_owned(),
            localizations: m
                .localizations
                .iter()
                .map(|l| {
                    format!(
                        "{} | {} | {}",
                        l.language_id,
                        line_field(&l.title),
                        line_field(&l.text)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Login {
    key: String,
}

/// The most a sign-in form's body may be (a key, and its name): the route is open to anyone.
pub(super) const LOGIN_BODY_LIMIT: usize = 4096;

/// The request came over HTTPS: the proxy that ended TLS says so.
fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// `POST /ui/login`: a valid key becomes a session cookie (which does not hold the key).
pub(super) async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    given: Result<Form<Login>, FormRejection>,
) -> Result<Response, UiError> {
    let form = form(given, LOGIN_BODY_LIMIT)?;
    // A sign-in posted from another site's page (login CSRF: the victim signed into the
    // attacker's app, writing its messages there). Browsers say where a request comes from
    // whatever proxy is between; a client that does not say (curl) is let through.
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site != "same-origin" && site != "none")
    {
        return Ok((
            StatusCode::FORBIDDEN,
            Html(login_page(Some("Sign in from this page."))),
        )
            .into_response());
    }
    // Over HTTPS, the browser is told never to send the session over plain HTTP.
    let secure = if over_https(&headers) { "; Secure" } else { "" };
    Ok(
        match state.keys.open_session(form.key.trim(), SystemTime::now()) {
            Ok(session) => (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/ui".to_owned()),
                    (
                        header::SET_COOKIE,
                        format!(
                            "{COOKIE}={}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
                            session.cookie,
                            SESSION_LIFETIME.as_secs()
                        ),
                    ),
                ],
            )
                .into_response(),
            Err(ApiError::RateLimited { .. }) => (
                StatusCode::TOO_MANY_REQUESTS,
                Html(login_page(Some("Too many attempts: wait a moment."))),
            )
                .into_response(),
            Err(_) => (
                StatusCode::UNAUTHORIZED,
                Html(login_page(Some("Unknown API key."))),
            )
                .into_response(),
        },
    )
}

/// `POST /ui/logout`: the session is recorded as signed out, so that a copy of its cookie
/// taken before is refused by every process too, and the browser forgets the cookie. Where
/// PostgreSQL cannot record it, a 503 says so and the browser keeps the cookie: the session
/// still works, and the user knows it.
pub(super) async fn logout(
    State(state): State<ApiState>,
    session: Result<Session, UiError>,
    given: Result<Form<LogoutForm>, FormRejection>,
) -> Result<Response, UiError> {
    match session {
        // Its token too, as every form that changes something: another page of the site
        // cannot sign the user out everywhere.
        Ok(session) => {
            let form = form(given, LOGIN_BODY_LIMIT)?;
            check_csrf(&session, &form.csrf)?;
            state
                .store
                .sign_out(&session.digest, session.expiry)
                .await
                .map_err(store_error)?
        }
        // Nothing valid to sign out (none, expired, forged, signed out already).
        Err(UiError(ApiError::Unauthorized)) => {}
        Err(e) => return Err(e),
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui".to_owned()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct MessageForm {
    #[serde(default)]
    csrf: String,
    name: String,
    event_id: String,
    #[serde(default)]
    cooldown_s: String,
    #[serde(default)]
    screen: String,
    #[serde(default)]
    expiry_s: String,
    #[serde(default)]
    priority: String,
    localizations: String,
}

/// The form as a message, or what is wrong with it.
fn parse_form(f: &MessageForm) -> Result<Message, String> {
    let number = |field: &str, text: &str| -> Result<i64, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(0);
        }
        text.parse()
            .map_err(|_| format!("{field}: {text:?} is not a whole number"))
    };
    let event_id = i32::try_from(number("event_id", &f.event_id)?)
        .map_err(|_| "event_id: out of range".to_owned())?;
    let mut localizations = Vec::new();
    for (i, line) in f.localizations.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let [language, title, text]: [String; 3] = line_fields(line).try_into().map_err(|_| {
            format!(
                "localizations line {}: write language id | title | text",
                i + 1
            )
        })?;
        localizations.push(Localization {
            language_id: language.parse().map_err(|_| {
                format!(
                    "localizations line {}: {language:?} is not a language id",
                    i + 1
                )
            })?,
            title,
            text,
        });
    }
    let message = Message {
        name: f.name.trim().to_owned(),
        id: 0,
        event_id,
        cooldown_s: number("cooldown_s", &f.cooldown_s)?,
        screen: f.screen.trim().to_owned(),
        expiry_s: number("expiry_s", &f.expiry_s)?,
        priority: if f.priority == "high" {
            Priority::High
        } else {
            Priority::Normal
        },
        localizations,
    };
    message.validate().map_err(|e| e.to_string())?;
    Ok(message)
}

/// `POST /ui/messages`: creates or replaces a message; a bad form is shown again with why.
pub(super) async fn save_message(
    State(state): State<ApiState>,
    session: Session,
    given: Result<Form<MessageForm>, FormRejection>,
) -> Result<Response, UiError> {
    let form = form(given, state.settings.max_body_bytes)?;
    check_csrf(&session, &form.csrf)?;
    let caller = &session.caller;
    match parse_form(&form) {
        Ok(m) => {
            state
                .messages
                .put(&caller.app, &m)
                .await
                .map_err(store_error)?;
            Ok(redirect(&format!("/ui?saved={}", m.name)))
        }
        Err(error) => {
            let body = render(
                &state,
                &session,
                &View::default(),
                Some(&form),
                Some(&error),
            )
            .await?;
            Ok((StatusCode::BAD_REQUEST, Html(body)).into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct DeleteForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

/// `POST /ui/messages/delete`.
pub(super) async fn delete_message(
    State(state): State<ApiState>,
    session: Session,
    given: Result<Form<DeleteForm>, FormRejection>,
) -> Result<Response, UiError> {
    let form = form(given, state.settings.max_body_bytes)?;
    check_csrf(&session, &form.csrf)?;
    // A message's name, as the JSON API's: the redirect below puts it in a URL unencoded.
    if !valid_name(&form.name) {
        return Err(ApiError::bad("name", "1 to 100 characters of A-Z a-z 0-9 _ . -").into());
    }
    state
        .messages
        .delete(&session.caller.app, &form.name)
        .await
        .map_err(store_error)?;
    Ok(redirect(&format!("/ui?deleted={}", form.name)))
}

fn redirect(to: &str) -> Response {
    // Names are [A-Za-z0-9_.-]: nothing to encode in the query.
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#x27;y&#x27;&lt;&#x2F;script&gt;"
        );
    }

    #[test]
    fn the_form_becomes_a_message_or_says_why_not() {
        let form = MessageForm {
            csrf: String::new(),
            name: "gift".into(),
            event_id: "17".into(),
            cooldown_s: "60".into(),
            screen: "shop".into(),
            expiry_s: String::new(),
            priority: "high".into(),
            localizations:
                "1 | Gift | {name} sent a gift\n\n3 | Regalo | {name} te envió un regalo | !".into(),
        };
        let m = parse_form(&form).unwrap();
        assert_eq!(m.localizations.len(), 2);
        assert_eq!(m.localizations[1].text, "{name} te envió un regalo | !");
        assert_eq!(
            (m.cooldown_s, m.expiry_s, m.priority),
            (60, 0, Priority::High)
        );
        let bad = MessageForm {
            localizations: "one | x | y".into(),
            ..form
        };
        assert!(parse_form(&bad).unwrap_err().contains("line 1"));
    }

    /// What the form shows of a title and a text reads back as the same title and text.
    #[test]
    fn localization_lines_round_trip() {
        for (title, text) in [
            ("Sale | 50% off", "Come {x}"),
            (
                "Two\nlines",
                "a \\ backslash, a \\n that is not a break, \r",
            ),
            ("plain", "plain"),
        ] {
            let line = format!("1 | {} | {}", line_field(title), line_field(text));
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(line_fields(&line), ["1", title, text], "{line}");
        }
        // Typed by hand: a bar in the text stays in it; a backslash before anything else stays.
        assert_eq!(line_fields("2 | Hi | a | b \\d"), ["2", "Hi", "a | b \\d"]);
        assert_eq!(line_fields("english | x"), ["english", "x"]);
    }
}
