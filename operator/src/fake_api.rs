//! A scripted fake API server for tests: kube's [`Client`] over a `tower_test` mock service
//! (the approach kube-rs documents for testing controllers). The test answers each request the
//! code under test makes, in order, after asserting what it is.

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::time::Duration;
use tower_test::mock::{self, Handle, SendResponse};

/// How long a test waits for the next request before it fails instead of hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The test's end of the client: every request the client sends arrives here.
pub struct FakeApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    /// Requests answered so far, as `METHOD path` (printed when the script and the code part).
    seen: Vec<String>,
}

/// A client whose requests go to the returned fake server.
pub fn client() -> (Client, FakeApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (
        Client::new(service, "default"),
        FakeApiServer {
            handle,
            seen: Vec::new(),
        },
    )
}

/// One request, waiting for its answer.
pub struct Call {
    /// The HTTP method.
    pub method: Method,
    /// The path without the query.
    pub path: String,
    /// The decoded query parameters.
    pub query: Vec<(String, String)>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The JSON body (`Value::Null` when there is none).
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl FakeApiServer {
    /// The next request; fails the test if none comes or the client is gone.
    pub async fn next(&mut self) -> Call {
        let next = tokio::time::timeout(REQUEST_TIMEOUT, self.handle.next_request()).await;
        let Ok(next) = next else {
            panic!(
                "no request within {REQUEST_TIMEOUT:?}; answered so far: {:#?}",
                self.seen
            );
        };
        let Some((request, send)) = next else {
            panic!(
                "the code under test finished; answered so far: {:#?}",
                self.seen
            );
        };
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        let query = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_string(), v.replace("%2F", "/").replace("%3D", "="))
            })
            .collect();
        let call = Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body,
            send,
        };
        self.seen.push(format!("{} {}", call.method, call.path));
        call
    }

    /// The next request, asserted to be `method path`.
    pub async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request; answered before it: {:#?}",
            &self.seen[..self.seen.len() - 1]
        );
        call
    }

    /// The next request, asserted to be a server-side apply (forced, as `starling-operator`)
    /// of `path`; answered with the applied object. Returns what was applied.
    pub async fn expect_apply(&mut self, path: &str) -> Value {
        let call = self.expect(Method::PATCH, path).await;
        call.assert_server_side_apply();
        let body = call.body.clone();
        call.respond_with(body.clone());
        body
    }

    /// Asserts the code under test made no further request and dropped its client.
    pub async fn expect_done(mut self) {
        let next = tokio::time::timeout(REQUEST_TIMEOUT, self.handle.next_request()).await;
        match next {
            Ok(None) => {}
            Ok(Some((request, _))) => panic!(
                "unexpected extra request {} {}; answered before it: {:#?}",
                request.method(),
                request.uri(),
                self.seen
            ),
            Err(_) => panic!("the code under test neither finished nor sent another request"),
        }
    }
}

impl Call {
    /// The query parameter `key`.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts this is a forced server-side apply by the operator's field manager.
    pub fn assert_server_side_apply(&self) {
        assert_eq!(self.method, Method::PATCH, "{}", self.path);
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{}",
            self.path
        );
        assert_eq!(
            self.query("fieldManager"),
            Some("starling-operator"),
            "{}",
            self.path
        );
        assert_eq!(self.query("force"), Some("true"), "{}", self.path);
    }

    /// Answers 200 with `body`.
    pub fn respond_with(self, body: Value) {
        self.respond(StatusCode::OK, body);
    }

    /// Answers with `status` and `body`.
    pub fn respond(self, status: StatusCode, body: Value) {
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
            .expect("response");
        self.send.send_response(response);
    }

    /// Answers with a Kubernetes `Status` failure.
    pub fn fail(self, code: u16, reason: &str, message: &str) {
        let status = StatusCode::from_u16(code).expect("status code");
        self.respond(
            status,
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "reason": reason,
                "message": message,
                "code": code,
            }),
        );
    }

    /// Answers 404 as a real API server does for a path it does not serve at all (an API
    /// group version that is not installed): a plain-text body, not a `Status`.
    pub fn page_not_found(self) {
        let response = Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from(b"404 page not found\n".to_vec()))
            .expect("response");
        self.send.send_response(response);
    }

    /// Answers 404 Not Found.
    pub fn not_found(self) {
        let message = format!("{} not found", self.path);
        self.fail(404, "NotFound", &message);
    }
}
