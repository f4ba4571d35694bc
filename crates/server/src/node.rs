//! The node side: what runs a job's work on one node. The server ships in-process nodes
//! that "run" work for a declared duration without GPUs; a real node agent implements the same
//! [`NodeExecutor`] trait.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// One gang member's work on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    pub job_id: i64,
    pub node: String,
    /// Position of this member in the gang, from 0.
    pub member: u32,
    pub members: u32,
    /// `None` for a GPU instance: it holds its GPUs until stopped.
    pub command: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// GPU indexes on the node.
    pub gpus: Vec<u32>,
    /// The share of its one GPU, thousandths, when the member holds less than a whole GPU.
    pub gpu_milli: Option<u32>,
    /// CPU time and memory the member holds on the node (0: not limited).
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// The OCI image the command runs in, from the node's own image store.
    pub image: Option<String>,
    /// When the job started, in milliseconds since the Unix epoch: a member resumed after a
    /// server restart keeps its original start.
    pub started_at_ms: i64,
    /// The job's start count for this run: a run of another generation is stale.
    pub generation: i64,
    /// The node of member 0, where a gang meets.
    pub master_node: Option<String>,
}

/// How a member's work ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Exited {
        code: i32,
    },
    /// The node could not run it.
    Lost {
        message: String,
    },
}

/// The boxed future of a member's work.
pub type RunFuture = Pin<Box<dyn Future<Output = RunOutcome> + Send>>;

/// Runs gang members on nodes. Dropping the returned future must stop the work. An executor
/// whose nodes are other machines also stops work on request ([`NodeExecutor::stop`]) and lets
/// the future end only once the node confirms the work gone, so GPUs go to other work only then.
pub trait NodeExecutor: Send + Sync + 'static {
    fn run(&self, spec: RunSpec) -> RunFuture;

    /// Asks `node` to stop member `member` of `job_id`'s run `generation`. `true`: the run's
    /// future ends once the node confirms the work gone (or the node is lost); `false`: dropping
    /// the future stops the work at once, as for work in this process.
    fn stop(&self, node: &str, job_id: i64, member: u32, generation: i64) -> bool {
        let _ = (node, job_id, member, generation);
        false
    }

    /// The work of `spec` may still run on its node (its job was being stopped when the server
    /// restarted): the node is asked to stop any copy it has, and the future ends when none is
    /// left. Never starts the work.
    fn stop_run(&self, spec: RunSpec) -> RunFuture {
        let _ = spec;
        Box::pin(async { RunOutcome::Lost { message: "stopped".into() } })
    }

    /// Of `all` nodes, those that cannot take work now (no agent, or lost).
    fn unavailable(&self, all: &[String]) -> Vec<String> {
        let _ = all;
        Vec::new()
    }

    /// Of `all` nodes, those that run container images (a job naming an image goes only there).
    fn runs_images(&self, all: &[String]) -> Vec<String> {
        let _ = all;
        Vec::new()
    }

    /// Nodes whose availability (or what they run) may have changed since the last call (each
    /// once), so the scheduler asks [`NodeExecutor::unavailable`] about them alone.
    fn availability_changes(&self) -> Vec<String> {
        Vec::new()
    }

    /// The end of `job_id`'s run `generation` is recorded durably (or no longer needed): nodes
    /// that reported it may forget it.
    fn acknowledge(&self, job_id: i64, generation: i64) {
        let _ = (job_id, generation);
    }
}

/// In-process nodes without GPUs. A command runs for a declared time and exits with a declared
/// code:
///
/// - `DROME_VIRTUAL_SECONDS` and `DROME_VIRTUAL_EXIT` in the job's environment, if set;
/// - otherwise `sleep N` runs N seconds, `true` and `false` end at once with 0 and 1;
/// - anything else runs for the executor's default time and exits 0.
///
/// A GPU instance (no command) runs until stopped.
#[derive(Clone, Debug)]
pub struct InProcessNodes {
    pub default_duration: Duration,
}

impl Default for InProcessNodes {
    fn default() -> Self {
        InProcessNodes { default_duration: Duration::from_secs(10) }
    }
}

impl InProcessNodes {
    /// How long the work runs in all and its exit code.
    pub fn plan(&self, spec: &RunSpec) -> Option<(Duration, i32)> {
        let command = spec.command.as_deref()?;
        let declared = spec.env.get("DROME_VIRTUAL_SECONDS").and_then(|s| s.trim().parse::<f64>().ok());
        let code = spec.env.get("DROME_VIRTUAL_EXIT").and_then(|s| s.trim().parse::<i32>().ok());
        let program = command.rsplit('/').next().unwrap_or(command);
        let (secs, default_code) = match program {
            "true" => (0.0, 0),
            "false" => (0.0, 1),
            "sleep" => (spec.args.first().and_then(|a| a.parse::<f64>().ok()).unwrap_or(0.0), 0),
            _ => (self.default_duration.as_secs_f64(), 0),
        };
        let secs = declared.unwrap_or(secs);
        let secs = if secs.is_finite() && secs > 0.0 { secs.min(1e9) } else { 0.0 };
        Some((Duration::from_secs_f64(secs), code.unwrap_or(default_code)))
    }
}

impl NodeExecutor for InProcessNodes {
    /// Every in-process node "runs" images as it runs commands: for their declared time.
    fn runs_images(&self, all: &[String]) -> Vec<String> {
        all.to_vec()
    }

    fn run(&self, spec: RunSpec) -> RunFuture {
        let plan = self.plan(&spec);
        Box::pin(async move {
            let Some((duration, code)) = plan else {
                // A GPU instance: held until released or expired.
                std::future::pending::<()>().await;
                return RunOutcome::Exited { code: 0 };
            };
            let elapsed_ms = crate::now_ms().saturating_sub(spec.started_at_ms).max(0);
            let left = duration.saturating_sub(Duration::from_millis(elapsed_ms as u64));
            tokio::time::sleep(left).await;
            RunOutcome::Exited { code }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> RunSpec {
        RunSpec {
            job_id: 1,
            node: "n".into(),
            member: 0,
            members: 1,
            command: command.map(str::to_string),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            gpus: vec![0],
            gpu_milli: None,
            cpu_milli: 0,
            memory_mib: 0,
            image: None,
            started_at_ms: 0,
            generation: 1,
            master_node: None,
        }
    }

    #[test]
    fn plans_follow_the_command_and_env() {
        let v = InProcessNodes { default_duration: Duration::from_secs(7) };
        assert_eq!(v.plan(&spec(Some("sleep"), &["2.5"], &[])), Some((Duration::from_millis(2500), 0)));
        assert_eq!(v.plan(&spec(Some("/bin/false"), &[], &[])), Some((Duration::ZERO, 1)));
        assert_eq!(v.plan(&spec(Some("python"), &["train.py"], &[])), Some((Duration::from_secs(7), 0)));
        let declared = spec(Some("python"), &[], &[("DROME_VIRTUAL_SECONDS", "1"), ("DROME_VIRTUAL_EXIT", "3")]);
        assert_eq!(v.plan(&declared), Some((Duration::from_secs(1), 3)));
        assert_eq!(v.plan(&spec(None, &[], &[])), None);
    }
}
