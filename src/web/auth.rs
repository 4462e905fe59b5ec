//! Browser sessions and CSRF.
//!
//! Signing in with an API token (pasted, or through a one-time link) sets a signed, HttpOnly,
//! SameSite=Lax cookie that names the token and an expiry, never the secret. Every page request
//! re-checks the token, so revoking it signs the browser out at once. The CSRF token is an HMAC
//! of the cookie's payload: forms carry it as `_csrf`, htmx sends it as `X-CSRF-Token`, and
//! [`csrf_guard`] refuses any state-changing request without the right one.

use askama::Template;
use axum::Form;
use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use uuid::Uuid;

use super::view::Layout;
use super::{WebError, WebState};
use crate::projects::signin;
use crate::projects::tokens::{self, Principal, Scope};

/// The session cookie's name.
pub const COOKIE: &str = "spool_session";
/// How long a browser session lasts.
const SESSION_SECS: i64 = 7 * 24 * 3600;
/// The largest form the CSRF check will read.
const MAX_FORM_BYTES: usize = 512 * 1024;

/// The key that signs session cookies, shared by every web node through the database.
#[derive(Clone)]
pub struct Keys {
    mac: Hmac<Sha256>,
}

impl Keys {
    /// Loads (or on first start creates) the shared key.
    pub async fn load(pool: &sqlx::PgPool) -> anyhow::Result<Self> {
        let key = signin::cookie_key(pool).await?;
        Ok(Self {
            mac: <Hmac<Sha256> as KeyInit>::new_from_slice(&key)?,
        })
    }

    fn mac(&self, purpose: &str, payload: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(payload.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// A cookie value for `token_id`, valid for a week.
    fn session_cookie(&self, token_id: Uuid) -> String {
        let payload = format!("v1.{token_id}.{}", Utc::now().timestamp() + SESSION_SECS);
        format!("{payload}.{}", self.mac("session", &payload))
    }

    /// The token id in a valid, unexpired cookie value, with the CSRF token bound to it.
    fn open(&self, value: &str) -> Option<(Uuid, String)> {
        let (payload, sig) = value.rsplit_once('.')?;
        let expected = self.mac("session", payload);
        if !constant_eq(sig.as_bytes(), expected.as_bytes()) {
            return None;
        }
        let mut parts = payload.split('.');
        let (Some("v1"), Some(id), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if exp.parse::<i64>().ok()? < Utc::now().timestamp() {
            return None;
        }
        Some((Uuid::parse_str(id).ok()?, self.mac("csrf", payload)))
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// A signed-in browser: the token's principal and the CSRF token for its forms.
#[derive(Debug, Clone)]
pub struct User {
    pub principal: Principal,
    pub csrf: String,
}

impl User {
    /// The project every query on this request is scoped to.
    pub fn project(&self) -> Uuid {
        self.principal.project_id
    }

    /// Refuses unless the token may write.
    pub fn require_write(&self) -> Result<(), WebError> {
        if self.principal.scope >= Scope::Write {
            Ok(())
        } else {
            Err(WebError::Forbidden(
                "this token is read-only; sign in with a write token to change things".into(),
            ))
        }
    }

    /// The layout for a page in `section`.
    pub fn layout(&self, section: &'static str) -> Layout {
        Layout {
            csrf: self.csrf.clone(),
            section,
            signed_in: true,
        }
    }
}

impl FromRequestParts<WebState> for User {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, WebError> {
        let next = parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let opened = cookie_value(&parts.headers).and_then(|v| state.keys.open(v));
        let Some((token_id, csrf)) = opened else {
            return Err(WebError::SignIn { next });
        };
        match signin::principal(&state.app.pool, token_id).await? {
            Some(principal) => Ok(User { principal, csrf }),
            None => Err(WebError::SignIn { next }),
        }
    }
}

/// Refuses a state-changing request unless it carries the CSRF token bound to its session
/// cookie, in `X-CSRF-Token` or in the form field `_csrf`.
pub async fn csrf_guard(State(state): State<WebState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let Some((_, expected)) = cookie_value(req.headers()).and_then(|v| state.keys.open(v)) else {
        return WebError::SignIn { next: "/".into() }.into_response();
    };
    let header_token = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A good header settles it without reading the body, which may be a large upload.
    if header_token
        .as_ref()
        .is_some_and(|t| constant_eq(t.as_bytes(), expected.as_bytes()))
    {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return WebError::BadRequest(format!(
                "the form is larger than {} KiB",
                MAX_FORM_BYTES / 1024
            ))
            .into_response();
        }
    };
    let form_token = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "_csrf")
        .map(|(_, v)| v.into_owned());
    let ok = [header_token, form_token]
        .iter()
        .flatten()
        .any(|t| constant_eq(t.as_bytes(), expected.as_bytes()));
    if !ok {
        return WebError::Forbidden(
            "this form is missing its CSRF token or it has expired; reload the page and try again"
                .into(),
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    next: String,
    error: Option<String>,
}

/// Query of the sign-in page.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Only same-site paths may be returned to after signing in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

/// `GET /login`.
pub async fn login_page(Query(q): Query<LoginQuery>) -> Result<Html<String>, WebError> {
    Ok(Html(
        LoginPage {
            layout: Layout::bare(),
            next: safe_next(q.next.as_deref()),
            error: None,
        }
        .render()?,
    ))
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

fn signed_in(keys: &super::Keys, principal: &Principal, next: &str, secure: bool) -> Response {
    let mut cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={SESSION_SECS}",
        keys.session_cookie(principal.token_id)
    );
    if secure {
        cookie.push_str("; Secure");
    }
    let mut res = Redirect::to(next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Whether the request reached us over HTTPS (directly or through a proxy that says so).
fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// `POST /login`: checks the pasted token and starts a browser session.
pub async fn login(
    State(state): State<WebState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    let next = safe_next(form.next.as_deref());
    let token = form.token.trim();
    let found = if token.is_empty() {
        None
    } else {
        tokens::verify(&state.app.pool, token).await?
    };
    match found {
        Some(p) => Ok(signed_in(&state.keys, &p, &next, is_https(&headers))),
        None => {
            let page = LoginPage {
                layout: Layout::bare(),
                next,
                error: Some(if token.is_empty() {
                    "Paste an API token to sign in.".into()
                } else {
                    "That token is not valid, or it has been revoked.".into()
                }),
            };
            Ok((StatusCode::UNPROCESSABLE_ENTITY, Html(page.render()?)).into_response())
        }
    }
}

/// `GET /login/{code}`: the one-time link `spool dev` prints.
pub async fn login_link(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, WebError> {
    match signin::redeem_code(&state.app.pool, &code).await? {
        Some(p) => Ok(signed_in(&state.keys, &p, "/", is_https(&headers))),
        None => {
            let page = LoginPage {
                layout: Layout::bare(),
                next: "/".into(),
                error: Some(
                    "That sign-in link was already used or has expired. Paste a token instead."
                        .into(),
                ),
            };
            Ok((StatusCode::GONE, Html(page.render()?)).into_response())
        }
    }
}

/// `POST /logout`: forgets the browser session.
pub async fn logout() -> Response {
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("spool_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    res
}
