//! `[metrics]`: an optional Prometheus endpoint per gateway, so an operator with several
//! bots watches them with the tools they already run (Prometheus, Grafana) rather than by
//! running `status` on each. Off unless `listen` is set.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::report::Problem;
use crate::section::{Doc, Section, Table};

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    /// `"127.0.0.1:9464"`: plain HTTP on that address.
    Tcp(SocketAddr),
    /// `"/run/hermes/metrics.sock"`: HTTP on a Unix socket (an absolute path), for a
    /// scraper on the same host that reaches no port.
    Unix(PathBuf),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// None: no endpoint.
    pub listen: Option<MetricsListen>,
}

impl Doc<'_> {
    pub(crate) fn metrics(&mut self, table: Option<&Table>) -> MetricsConfig {
        let mut s = Section::new("metrics", table.cloned());
        let line = s.raw_line("listen", self);
        let listen = s
            .take::<String>("listen", self)
            .and_then(|text| match parse_listen(&text) {
                Some(listen) => Some(listen),
                None => {
                    self.problems.push(Problem {
                        line,
                        key: s.key_path("listen"),
                        message: format!(
                            "{text:?} is neither an address with a port (\"127.0.0.1:9464\") nor an absolute socket path"
                        ),
                    });
                    None
                }
            });
        s.finish(self);
        MetricsConfig { listen }
    }
}

fn parse_listen(text: &str) -> Option<MetricsListen> {
    if text.starts_with('/') {
        return Some(MetricsListen::Unix(PathBuf::from(text)));
    }
    text.parse().ok().map(MetricsListen::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{MINIMAL, parse};

    #[test]
    fn off_by_default_an_address_or_a_socket_path_when_set() {
        assert_eq!(parse(MINIMAL).unwrap().metrics.listen, None);
        let tcp = parse(&format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n"
        ))
        .unwrap();
        assert_eq!(
            tcp.metrics.listen,
            Some(MetricsListen::Tcp("127.0.0.1:9464".parse().unwrap()))
        );
        let unix = parse(&format!("{MINIMAL}\n[metrics]\nlisten = \"/run/m.sock\"\n")).unwrap();
        assert_eq!(
            unix.metrics.listen,
            Some(MetricsListen::Unix("/run/m.sock".into()))
        );
        let bad = parse(&format!("{MINIMAL}\n[metrics]\nlisten = \"localhost\"\n")).unwrap_err();
        assert!(bad[0].key == "metrics.listen", "{bad:?}");
    }
}
