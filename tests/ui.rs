//! The `/ui` page in headless Chromium, driven over the DevTools protocol: sign in with the
//! API key, create a message through the form (its button clicked), see it listed and stored
//! (read back through the JSON API), edit it, look up a user's devices, and be refused with a
//! wrong key or without the cookie. Skipped with a message where Chromium is not installed
//! (ci/setup.sh installs it; PUSHER_SKIP_BROWSER=1 allows the skip).

mod common;

use common::http::{request, Answer};
use futures_util::{SinkExt, StreamExt};
use pusher::platform::api::{serve, ApiState};
use pusher::platform::produce::Producer;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_util::sync::CancellationToken;

const KEY: &str = "ui-key-0123456789abcdef";

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol session on one page: commands answered in order, events kept until
/// waited for.
struct Page {
    socket: Socket,
    session: String,
    next_id: u64,
    events: Vec<Value>,
}

impl Page {
    async fn open(ws_url: &str) -> Page {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let mut page = Page {
            socket,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
        };
        let target = page
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page.call("Page.enable", json!({})).await;
        page
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Ws::text(command.to_string()))
            .await
            .unwrap();
        loop {
            let m = self.read().await;
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    async fn read(&mut self) -> Value {
        let m = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
            .await
            .expect("Chromium said nothing for 20 s")
            .unwrap()
            .unwrap();
        serde_json::from_str(m.to_text().unwrap()).unwrap()
    }

    /// Waits for the page to finish loading (an event seen earlier counts once).
    async fn loaded(&mut self) {
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|e| e["method"] == "Page.loadEventFired")
            {
                self.events.drain(..=i);
                return;
            }
            let m = self.read().await;
            self.events.push(m);
        }
    }

    async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.loaded().await;
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Runs `action` (which submits a form) and waits for the next page.
    async fn submit(&mut self, action: &str) {
        self.eval(action).await;
        self.loaded().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_signs_in_and_its_form_creates_a_message() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("PUSHER_SKIP_BROWSER").is_some(),
            "chromium is not installed (ci/setup.sh installs it; PUSHER_SKIP_BROWSER=1 skips this test)"
        );
        return;
    };
    let app = common::platform::fresh_app("ui");
    let store = common::platform::store().await;
    let settings = common::platform::api_settings(&app, KEY);
    // The page never produces: a producer pointed nowhere is enough.
    let producer = Producer::new("127.0.0.1:9", Duration::from_secs(1)).unwrap();
    let state = ApiState::new(settings, producer, store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, state, stop.clone()));
    let auth = format!("Bearer {KEY}");
    let device = request(
        addr,
        "PUT",
        "/api/v1/devices",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        json!({"user_id": 77, "platform": "gcm", "token": "ui-token-77", "app_version": "3.1"})
            .to_string(),
    )
    .await;
    assert_eq!(device.status, 200, "{}", device.text());

    let profile = tempfile::tempdir().unwrap();
    let mut browser = tokio::process::Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(browser.stderr.take().unwrap()).lines();
    let ws_url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("Chromium exited without a DevTools address");
    })
    .await
    .expect("Chromium did not start within 30 s");
    // Keep reading its chatter so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });

    let mut page = Page::open(&ws_url).await;
    let base = format!("http://{addr}");

    // Not signed in: the sign-in form. A wrong key is refused.
    page.goto(&format!("{base}/ui")).await;
    assert_eq!(
        page.eval("!!document.querySelector('input[name=key]')")
            .await,
        true
    );
    page.submit(
        "document.querySelector('input[name=key]').value = 'wrong-key';
         document.querySelector('form button').click()",
    )
    .await;
    let text = page.eval("document.body.innerText").await;
    assert!(text.as_str().unwrap().contains("Unknown API key"), "{text}");

    // Signed in: the page names the app.
    page.submit(&format!(
        "document.querySelector('input[name=key]').value = '{KEY}';
         document.querySelector('form button').click()"
    ))
    .await;
    let text = page.eval("document.body.innerText").await;
    assert!(text.as_str().unwrap().contains(&app), "{text}");

    // The form creates a message; the page says so and lists it; the API has it.
    page.submit(
        "const f = document.getElementById('message-form');
         f.name.value = 'gift-sent';
         f.event_id.value = '17';
         f.cooldown_s.value = '3600';
         f.screen.value = 'gifts';
         f.priority.value = 'high';
         f.localizations.value = '1 | A gift | {name} sent you a gift\\n3 | Un regalo | {name} te envió un regalo';
         f.querySelector('button').click()",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('saved')?.innerText")
            .await,
        "Saved gift-sent."
    );
    let listed = page
        .eval("document.getElementById('messages').innerText")
        .await;
    assert!(listed.as_str().unwrap().contains("gift-sent"), "{listed}");
    let stored = request(
        addr,
        "GET",
        "/api/v1/messages/gift-sent",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(stored.status, 200);
    let stored = stored.json();
    assert_eq!(
        (
            stored["event_id"].clone(),
            stored["cooldown_s"].clone(),
            stored["priority"].clone()
        ),
        (json!(17), json!(3600), json!("high"))
    );
    assert_eq!(
        stored["localizations"][1],
        json!({"language_id": 3, "title": "Un regalo", "text": "{name} te envió un regalo"})
    );

    // Editing loads the form; a bad line is refused with the reason, and nothing changes.
    page.goto(&format!("{base}/ui?edit=gift-sent")).await;
    assert_eq!(
        page.eval("document.getElementById('message-form').cooldown_s.value")
            .await,
        "3600"
    );
    page.submit(
        "const f = document.getElementById('message-form');
         f.localizations.value = 'english | x | y';
         f.querySelector('button').click()",
    )
    .await;
    let error = page
        .eval("document.getElementById('error')?.innerText")
        .await;
    assert!(
        error.as_str().unwrap_or_default().contains("line 1"),
        "{error}"
    );
    // The refused form is shown as it was typed, not emptied or reset to normal priority.
    assert_eq!(
        page.eval("const f = document.getElementById('message-form'); [f.localizations.value, f.priority.value, f.cooldown_s.value]")
            .await,
        json!(["english | x | y", "high", "3600"])
    );
    let unchanged = request(
        addr,
        "GET",
        "/api/v1/messages/gift-sent",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(unchanged.json(), stored);

    // A title with a bar and a text with a line break (the API takes both) survive a save
    // that changes something else: the form escapes them.
    let sale = json!({"event_id": 19, "priority": "high", "localizations": [
        {"language_id": 1, "title": "Sale | 50% off", "text": "Come {x}\nnow \\o/"}]});
    let put = request(
        addr,
        "PUT",
        "/api/v1/messages/sale",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        sale.to_string(),
    )
    .await;
    assert!(put.status < 300, "{}", put.text());
    page.goto(&format!("{base}/ui?edit=sale")).await;
    page.submit(
        "const f = document.getElementById('message-form');
         f.cooldown_s.value = '60';
         f.querySelector('button').click()",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('saved')?.innerText")
            .await,
        "Saved sale."
    );
    let saved = request(
        addr,
        "GET",
        "/api/v1/messages/sale",
        &[("authorization", &auth)],
        "",
    )
    .await
    .json();
    assert_eq!(saved["cooldown_s"], 60);
    assert_eq!(saved["localizations"], sale["localizations"]);

    // A user's devices.
    page.goto(&format!("{base}/ui?user=77")).await;
    let devices = page
        .eval("document.getElementById('devices').innerText")
        .await;
    assert!(
        devices.as_str().unwrap().contains("ui-token-77"),
        "{devices}"
    );

    // What the page renders is escaped: a hostile name never becomes markup.
    page.goto(&format!("{base}/ui?user=%3Cb%3Ex")).await;
    assert_eq!(
        page.eval("document.querySelectorAll('b').length").await,
        json!(1),
        "only the app's name is bold"
    );

    // Without the cookie (another browser): the sign-in form, and form posts are refused.
    let anonymous = request(addr, "GET", "/ui", &[], "").await;
    assert!(anonymous.text().contains("name=\"key\""));
    let forged = request(
        addr,
        "POST",
        "/ui/messages/delete",
        &[("content-type", "application/x-www-form-urlencoded")],
        "name=gift-sent",
    )
    .await;
    assert_eq!(forged.status, 401);
    let png = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    assert!(
        png["data"].as_str().unwrap().len() > 1000,
        "a screenshot of the page"
    );

    drop(page);
    let _ = browser.kill().await;
    stop.cancel();
}

/// Without a browser: the cookie is `Secure` behind HTTPS, pages are neither cached nor
/// framed, a form that changes something needs its session's token (another site's form is
/// 403) and a message's name, and a post without the cookie is refused before its body is
/// read. Seen: no `Secure`, no token, any name deleted, and the body of an unknown sender
/// waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_guards_its_cookie_and_its_forms() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = common::platform::fresh_app("ui");
    let store = common::platform::store().await;
    let settings = common::platform::api_settings(&app, KEY);
    let producer = Producer::new("127.0.0.1:9", Duration::from_secs(1)).unwrap();
    let state = ApiState::new(settings, producer, store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, state, stop.clone()));
    let form = ("content-type", "application/x-www-form-urlencoded");

    let behind_tls = request(
        addr,
        "POST",
        "/ui/login",
        &[form, ("x-forwarded-proto", "https")],
        format!("key={KEY}"),
    )
    .await;
    assert_eq!(behind_tls.status, 303, "{}", behind_tls.text());
    let cookie = behind_tls.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let plain = request(addr, "POST", "/ui/login", &[form], format!("key={KEY}")).await;
    let cookie = plain.headers["set-cookie"].to_str().unwrap();
    assert!(!cookie.contains("Secure"), "{cookie}");
    // A sign-in form posted from another site's page opens no session.
    for site in ["cross-site", "same-site"] {
        let forged = request(
            addr,
            "POST",
            "/ui/login",
            &[form, ("sec-fetch-site", site)],
            format!("key={KEY}"),
        )
        .await;
        assert_eq!(forged.status, 403, "{site}");
        assert!(!forged.headers.contains_key("set-cookie"), "{site}");
    }

    let session = format!("pusher_ui={}", session_of(&plain));
    let page = request(addr, "GET", "/ui", &[("cookie", &session)], "").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["cache-control"], "no-store");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let text = page.text();
    let csrf = text
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry a token")
        .to_owned();

    let auth = format!("Bearer {KEY}");
    let put = request(
        addr,
        "PUT",
        "/api/v1/messages/kept",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        json!({"event_id": 5, "localizations": [{"language_id": 1, "title": "T", "text": "x"}]})
            .to_string(),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let exists = || async {
        request(
            addr,
            "GET",
            "/api/v1/messages/kept",
            &[("authorization", &auth)],
            "",
        )
        .await
        .status
    };
    let post = |path: &'static str, body: String| {
        let session = session.clone();
        async move { request(addr, "POST", path, &[form, ("cookie", &session)], body).await }
    };
    // Another page's form: the cookie goes with it, the token cannot.
    let forged = post("/ui/messages/delete", "name=kept".into()).await;
    assert_eq!(forged.status, 403, "{}", forged.text());
    // A refusal is a page that says why, not the JSON API's body.
    let html = |a: &Answer| {
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    };
    assert!(html(&forged), "{:?}", forged.headers);
    assert!(
        forged.text().contains("reload the page"),
        "{}",
        forged.text()
    );
    let ended = request(
        addr,
        "POST",
        "/ui/messages/delete",
        &[form, ("cookie", "pusher_ui=no.such.session.here")],
        format!("csrf={csrf}&name=kept"),
    )
    .await;
    assert_eq!(ended.status, 401, "{}", ended.text());
    assert!(
        html(&ended) && ended.text().contains("sign in again"),
        "{}",
        ended.text()
    );
    let forged = post(
        "/ui/messages",
        "name=kept&event_id=6&localizations=1%20%7C%20a%20%7C%20b".into(),
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert_eq!(exists().await, 200);
    let bad = post("/ui/messages/delete", format!("csrf={csrf}&name=a%0Ab")).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let deleted = post("/ui/messages/delete", format!("csrf={csrf}&name=kept")).await;
    assert_eq!(deleted.status, 303, "{}", deleted.text());
    assert_eq!(exists().await, 404);

    // No cookie: 401 at once, the announced body never waited for.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    silent
        .write_all(
            b"POST /ui/messages HTTP/1.1\r\nhost: x\r\n\
              content-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(3), silent.read_exact(&mut answer))
        .await
        .expect("answered before the body came")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");
    stop.cancel();
}

/// The session a sign-in answered (its `Set-Cookie` value).
fn session_of(login: &Answer) -> String {
    let cookie = login.headers["set-cookie"].to_str().unwrap();
    cookie
        .split(';')
        .next()
        .and_then(|pair| pair.strip_prefix("pusher_ui="))
        .unwrap_or_else(|| panic!("no pusher_ui cookie: {cookie}"))
        .to_owned()
}

/// An API process with these settings on 127.0.0.1:0 (its producer pointed nowhere: the page
/// never produces).
async fn start(settings: pusher::platform::api::ApiSettings) -> (SocketAddr, CancellationToken) {
    let store = common::platform::store().await;
    let producer = Producer::new("127.0.0.1:9", Duration::from_secs(1)).unwrap();
    let state = ApiState::new(settings, producer, store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, state, stop.clone()));
    (addr, stop)
}

/// The sign-in's cookie holds a session, not the key: it works on every process with the same
/// keys, and is refused once forged, expired, or its key is taken out of the config. Seen: the
/// cookie was the API key itself, so whatever could read the browser's cookies (a cookie store,
/// a proxy's log, an extension) had the key, valid for the API for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_not_the_key_and_ends() {
    let app = common::platform::fresh_app("ui");
    let settings = common::platform::api_settings(&app, KEY);
    let (addr, stop) = start(settings.clone()).await;
    // Another `pusher api` with the same config: no state is shared but the keys.
    let (twin, twin_stop) = start(settings.clone()).await;
    // The same app, its key replaced: the old key is out of the config.
    let (rotated, rotated_stop) = start(common::platform::api_settings(
        &app,
        "ui-key-rotated-0123456789",
    ))
    .await;
    let form = ("content-type", "application/x-www-form-urlencoded");

    let login = request(addr, "POST", "/ui/login", &[form], format!("key={KEY}")).await;
    assert_eq!(login.status, 303, "{}", login.text());
    let set_cookie = login.headers["set-cookie"].to_str().unwrap();
    assert!(
        !set_cookie.contains(KEY),
        "the key is in the cookie: {set_cookie}"
    );
    assert!(set_cookie.contains("; Max-Age=43200"), "{set_cookie}");
    let session = session_of(&login);

    // Signed in: the page (its forms carry a token), not the sign-in form.
    let signed_in = |addr: SocketAddr, value: String| async move {
        let page = request(
            addr,
            "GET",
            "/ui",
            &[("cookie", &format!("pusher_ui={value}"))],
            "",
        )
        .await;
        assert_eq!(page.status, 200, "{}", page.text());
        let text = page.text();
        assert_ne!(
            text.contains(r#"name="csrf""#),
            text.contains(r#"name="key""#),
            "{text}"
        );
        text.contains(r#"name="csrf""#)
    };
    // A form posted with the session `value`: its status (401: no session; a signed-in one
    // without the form's token is 403).
    let delete_status = |addr: SocketAddr, value: String| async move {
        let cookie = format!("pusher_ui={value}");
        let post = request(
            addr,
            "POST",
            "/ui/messages/delete",
            &[form, ("cookie", &cookie)],
            "name=x",
        )
        .await;
        post.status
    };
    assert!(signed_in(addr, session.clone()).await, "the session works");
    assert!(signed_in(twin, session.clone()).await, "on every process");
    assert!(
        !signed_in(rotated, session.clone()).await,
        "a key out of the config ends its sessions"
    );

    // Forged: the key itself (the old cookie), another app, a later expiry, another nonce,
    // another MAC.
    let mut parts = session.rsplitn(4, '.');
    let (mac, nonce, expiry, named) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap().parse::<u64>().unwrap(),
        parts.next().unwrap(),
    );
    assert_eq!(named, app);
    let mut flipped = mac.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    for forged in [
        KEY.to_owned(),
        format!("other{app}.{expiry}.{nonce}.{mac}"),
        format!("{app}.{}.{nonce}.{mac}", expiry + 3600),
        format!("{app}.{expiry}.x{nonce}.{mac}"),
        format!("{app}.{expiry}.{nonce}.{flipped}"),
        format!("{app}.{expiry}.{mac}"),
    ] {
        assert!(!signed_in(addr, forged.clone()).await, "{forged}");
        assert_eq!(delete_status(addr, forged.clone()).await, 401, "{forged}");
    }

    // Signed as the server signs (HMAC-SHA256 under the key): refused once expired.
    let signed = |expiry: u64| {
        use base64::Engine;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
        let tag = ring::hmac::sign(
            &key,
            format!("pusher ui session\0{app}\0{expiry}\0n0nce").as_bytes(),
        );
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        format!("{app}.{expiry}.n0nce.{mac}")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        signed_in(addr, signed(now + 60)).await,
        "signed as the server signs"
    );
    assert!(!signed_in(addr, signed(now - 1)).await, "expired");

    // Signed out: a copy of the cookie taken before is refused by every process; a sign-in
    // right after (the same second) is a session of its own. Seen: the sign-out only made the
    // browser forget the cookie, and a copy worked for the rest of its 12 hours. Like every
    // form that changes something, it needs the session's token: another page's is refused.
    let cookie = format!("pusher_ui={session}");
    let page = request(addr, "GET", "/ui", &[("cookie", &cookie)], "").await;
    let csrf = page
        .text()
        .split(r#"action="/ui/logout"><input type="hidden" name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the sign-out form carries the token")
        .to_owned();
    let logout = |body: String| {
        let cookie = cookie.clone();
        async move {
            request(
                addr,
                "POST",
                "/ui/logout",
                &[form, ("cookie", &cookie)],
                body,
            )
            .await
        }
    };
    let forged = logout(String::new()).await;
    assert_eq!(forged.status, 403, "{}", forged.text());
    assert!(
        signed_in(twin, session.clone()).await,
        "not signed out by another page"
    );
    let logout = logout(format!("csrf={csrf}")).await;
    assert_eq!(logout.status, 303, "{}", logout.text());
    let cleared = logout.headers["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(!signed_in(addr, session.clone()).await, "signed out");
    assert!(
        !signed_in(twin, session.clone()).await,
        "signed out everywhere"
    );
    assert_eq!(delete_status(twin, session.clone()).await, 401);
    let again = request(addr, "POST", "/ui/login", &[form], format!("key={KEY}")).await;
    assert!(
        signed_in(twin, session_of(&again)).await,
        "a new sign-in works"
    );
    stop.cancel();
    twin_stop.cancel();
    rotated_stop.cancel();
}
