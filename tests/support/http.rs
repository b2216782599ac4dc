//! The Prometheus endpoint from outside: an address to serve it on, and one raw `GET /metrics`.

// Every test binary includes this module through `mod support;`, and none uses all of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A 127.0.0.1 address the kernel just considered free (racy by nature, like every free port).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr")
}

/// One HTTP GET of `/metrics` over raw TCP: the whole response, or `None` if the endpoint is
/// not up (yet) or did not answer 200.
pub fn scrape(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("200 OK").then_some(body)
}
