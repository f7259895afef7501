//! The dashboards' HTTP server on 127.0.0.1: a page (`/`), its live event
//! stream (`/events`, server-sent events) and the feed's other read-only
//! endpoints. A run's feed is its [`Hub`] (the Prometheus endpoint
//! `/metrics` and the whole history as JSON, `/api/history`); a study's is
//! [`crate::study::StudyFeed`].
//!
//! tiny_http is a small blocking server: no async runtime to compile for a
//! handful of local viewers. Each connection gets a thread, since an event
//! stream stays open for the whole run.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lora_core::{Error, Result};
use tiny_http::{Header, Request, Response, Server as Http};

use crate::hub::Hub;

const PAGE: &str = include_str!("dashboard.html");

/// What a server shows: a page, the messages of its event stream, and other
/// read-only endpoints.
pub trait Feed: Send + Sync + 'static {
    fn page(&self) -> &'static str;
    /// Messages from `from` on as JSON, waiting up to `timeout` for one to
    /// arrive; and whether the feed has ended.
    fn wait_from(&self, from: usize, timeout: Duration) -> (Vec<String>, bool);
    /// The content type and body of another path, if the feed has it.
    fn resource(&self, path: &str) -> Option<(&'static str, String)>;
}

impl Feed for Hub {
    fn page(&self) -> &'static str {
        PAGE
    }

    fn wait_from(&self, from: usize, timeout: Duration) -> (Vec<String>, bool) {
        Hub::wait_from(self, from, timeout)
    }

    fn resource(&self, path: &str) -> Option<(&'static str, String)> {
        match path {
            "/metrics" => Some((
                "text/plain; version=0.0.4; charset=utf-8",
                crate::prometheus::render(&self.lock().recorder.latest),
            )),
            "/api/history" => {
                let state = self.lock();
                let rec = &state.recorder;
                let body = format!(
                    "[{}]",
                    rec.history.iter().map(|p| rec.to_json(p)).collect::<Vec<_>>().join(",")
                );
                Some(("application/json", body))
            }
            _ => None,
        }
    }
}

pub struct Server {
    http: Arc<Http>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves on 127.0.0.1:`port` (0: a free port).
    pub fn start(port: u16, feed: Arc<dyn Feed>) -> Result<Self> {
        let http = Http::http(("127.0.0.1", port)).map_err(|e| {
            Error::Other(format!(
                "cannot serve the dashboard on 127.0.0.1:{port}: {e} (choose another [monitor] port, or 0 for a free one)"
            ))
        })?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| Error::Other("the dashboard server has no IP address".into()))?;
        let http = Arc::new(http);
        let accept = http.clone();
        let thread = std::thread::Builder::new()
            .name("lora-monitor-http".into())
            .spawn(move || {
                for request in accept.incoming_requests() {
                    let feed = feed.clone();
                    // A failed spawn drops the request, which closes its connection.
                    let _ = std::thread::Builder::new()
                        .name("lora-monitor-conn".into())
                        .spawn(move || handle(request, feed.as_ref()));
                }
            })
            .map_err(|e| Error::Other(format!("cannot start the dashboard thread: {e}")))?;
        Ok(Self {
            http,
            addr,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

fn handle(request: Request, feed: &dyn Feed) {
    let path = request.url().split('?').next().unwrap_or("/").to_string();
    let response = match path.as_str() {
        "/" | "/index.html" => {
            Response::from_string(feed.page()).with_header(header("Content-Type", "text/html; charset=utf-8"))
        }
        "/events" => return stream(request, feed),
        other => match feed.resource(other) {
            Some((kind, body)) => Response::from_string(body).with_header(header("Content-Type", kind)),
            None => Response::from_string("not found").with_status_code(404),
        },
    };
    let _ = request.respond(response);
}

/// Server-sent events: every message so far, then each new one as it comes,
/// until the feed ends or the viewer leaves. The response head is written by
/// hand because tiny_http buffers chunked bodies, and events must not wait.
fn stream(request: Request, feed: &dyn Feed) {
    let mut out = request.into_writer();
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if out.write_all(head.as_bytes()).and_then(|_| out.flush()).is_err() {
        return;
    }
    let mut sent = 0;
    loop {
        let (messages, finished) = feed.wait_from(sent, Duration::from_secs(10));
        let mut chunk = String::new();
        for m in &messages {
            chunk.push_str("data: ");
            chunk.push_str(m);
            chunk.push_str("\n\n");
        }
        if sent == 0 {
            // Tells the page where the replay ends and live updates begin.
            chunk.push_str("event: caught-up\ndata: {}\n\n");
        }
        sent += messages.len();
        if finished && messages.is_empty() {
            chunk.push_str("event: end\ndata: {}\n\n");
        } else if chunk.is_empty() {
            // A comment keeps proxies and the browser from timing out.
            chunk.push_str(": keep-alive\n\n");
        }
        if out.write_all(chunk.as_bytes()).and_then(|_| out.flush()).is_err() {
            return;
        }
        if finished && messages.is_empty() {
            return;
        }
    }
}
