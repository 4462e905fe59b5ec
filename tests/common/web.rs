//! A signed-in web session over plain HTTP, for page tests that need no browser: it posts the
//! sign-in form, keeps the `spool_session` cookie, and shows redirects instead of following them.

use super::Server;

/// A browser session without a browser.
pub struct WebSession {
    pub http: reqwest::Client,
    pub cookie: String,
    base: String,
}

/// An HTTP answer: status, `Location`, whether a live feed said `Spool-Done`, and the body.
pub struct Answer {
    pub status: u16,
    pub location: String,
    pub done: bool,
    pub body: String,
}

/// An `application/x-www-form-urlencoded` body.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

impl WebSession {
    /// Signs in by posting `token` to `/login` and keeps the session cookie.
    pub async fn start(s: &Server, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let r = http
            .post(s.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[("token", token), ("next", "/")]))
            .send()
            .await
            .expect("POST /login");
        assert_eq!(r.status().as_u16(), 303, "sign-in redirects");
        let cookie = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("spool_session="))
            .and_then(|c| c.split(';').next())
            .expect("a spool_session cookie")
            .to_owned();
        Self {
            http,
            cookie,
            base: format!("http://{}", s.addr),
        }
    }

    /// The `Cookie` header value a browser would send.
    pub fn cookie_header(&self) -> String {
        format!("spool_session={}", self.cookie)
    }

    /// A request carrying the session cookie.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
    }

    /// Sends `r` and reads the answer.
    pub async fn answer(r: reqwest::RequestBuilder) -> Answer {
        let r = r.send().await.expect("send");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let (location, done) = (header("location"), header("spool-done") == "1");
        Answer {
            status: r.status().as_u16(),
            location,
            done,
            body: r.text().await.unwrap_or_default(),
        }
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Answer {
        self.get_with(path, &[]).await
    }

    /// GETs `path` with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.req(reqwest::Method::GET, path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::answer(req).await
    }

    /// GETs a page that must answer 200 and returns its HTML.
    pub async fn page(&self, path: &str) -> String {
        self.page_with(path, &[]).await
    }

    /// [`Self::page`] with extra request headers.
    pub async fn page_with(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let a = self.get_with(path, headers).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.body
    }

    /// POSTs a form.
    pub async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Answer {
        Self::answer(
            self.req(reqwest::Method::POST, path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(pairs)),
        )
        .await
    }
}
