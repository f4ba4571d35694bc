//! drome's node agent. One agent process serves one or more nodes; each node joins the control
//! plane with a join token, gets its own credential, and then heartbeats: every heartbeat renews
//! the node's lease, reports the runs alive and the runs that ended, and brings back the work to
//! start and the runs to kill. Work runs as real processes, one process group per run, under the
//! work directory; nothing of a run is left when it ends. Where the agent is root, each run is
//! sandboxed ([`sandbox`]): a uid of its own, cgroups holding its CPUs, memory and devices, a
//! clean environment and a private directory; a job may name an OCI image, which the node's
//! container runtime runs under the same confinement ([`image`]).

pub mod host;
pub mod image;
pub mod inventory;
pub mod rapl;
pub mod runner;
pub mod sandbox;
pub mod servers;

pub use host::AgentHost;
pub use image::{ImageOptions, ImageRuntime};
pub use runner::{NodeAgent, NodeConfig};
pub use sandbox::{Sandbox, SandboxOptions};
pub use servers::Servers;

/// An error and its causes, `: `-separated: an HTTP client's error says "error sending
/// request" and leaves why (a refused certificate, a reset connection) to its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Why an agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the server: {}", error_chain(.0))]
    Http(#[from] reqwest::Error),
    #[error("the server refused the join: {0}")]
    Refused(String),
    /// The server asked does not lead (a standby replica, or one stepping down): the next one
    /// is tried.
    #[error("the server does not lead: {0}")]
    NotLeading(String),
    /// Another agent holds the node (its lease runs): tried again later.
    #[error("the node is held: {0}")]
    NodeHeld(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
}
