//! The agent protocol from both ends. The server's: join, heartbeats (one node's and batched),
//! and log chunks, as raw bodies and as well-formed messages with any values, from a node that
//! joined and holds a job's run. The agent's: reading a run's output for any log request.
#![no_main]

use arbitrary::Arbitrary;
use drome_fuzz::{ADMIN, Harness};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A node joined by the target: its name and credential.
struct Node {
    name: String,
    credential: String,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let h = Harness::get();
        let a = h.call("POST", "/v1/join-tokens", Some(ADMIN), Some(br#"{"uses":1000}"#.to_vec()));
        let token: serde_json::Value = serde_json::from_slice(&a.body).expect("a join token");
        let fleet = model::fleet_toml::parse_fleet(drome_fuzz::FLEET).expect("the small fleet parses");
        let first = fleet.node_ids().map(|id| fleet.node(id)).find(|n| n.gpu_count == 8).expect("an 8-GPU node");
        let name = first.name.clone();
        let model = fleet.node_gpu_model(first_id(&fleet, &name)).map(|m| m.name.clone()).expect("a GPU model");
        let gpus: Vec<serde_json::Value> = (0..8)
            .map(|i| serde_json::json!({"index": i, "model": model, "memory_mib": 144384, "power_limit_watts": 700.0, "virtual": true}))
            .collect();
        let join = serde_json::json!({"join_token": token["token"], "node": name, "address": "127.0.0.1", "gpus": gpus});
        let a = h.call("POST", "/v1/agent/join", None, Some(join.to_string().into_bytes()));
        assert!(a.status == 200 || a.status == 201, "join: {} {}", a.status, String::from_utf8_lossy(&a.body));
        let joined: api::AgentJoined = serde_json::from_slice(&a.body).expect("joined");
        Node { name, credential: joined.credential }
    })
}

fn first_id(fleet: &model::Fleet, name: &str) -> model::NodeId {
    fleet.node_ids().find(|&id| fleet.node(id).name == name).expect("the node")
}

#[derive(Arbitrary, Debug)]
struct Run {
    job_id: i64,
    member: u32,
    generation: i64,
}

impl Run {
    fn key(&self) -> api::RunKey {
        // Mostly the harness's own job (id 1), so that runs the server knows are reported too.
        let job_id = if self.job_id.rem_euclid(4) == 0 { self.job_id } else { 1 };
        api::RunKey { job_id, member: self.member % 3, generation: self.generation.rem_euclid(4) }
    }
}

#[derive(Arbitrary, Debug)]
struct Beat {
    running: Vec<Run>,
    exited: Vec<(Run, i32)>,
    power_watts: Option<f64>,
    gpu_power_cap_watts: Option<f64>,
    cpu_power_cap_watts: Option<f64>,
}

impl Beat {
    fn heartbeat(&self) -> api::Heartbeat {
        api::Heartbeat {
            running: self.running.iter().map(Run::key).collect(),
            exited: self.exited.iter().map(|(r, code)| api::RunExit { run: r.key(), code: *code }).collect(),
            power_watts: self.power_watts,
            gpu_power_cap_watts: self.gpu_power_cap_watts,
            cpu_power_cap_watts: self.cpu_power_cap_watts,
            wait_ms: 0,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Message {
    RawJoin(Vec<u8>),
    RawHeartbeat(Vec<u8>),
    RawBatch(Vec<u8>),
    RawLogs(Vec<u8>),
    Heartbeat(Beat),
    Batch { agent_id: String, beats: Vec<(bool, Beat)>, last_answer: u64 },
    Logs { id: u64, data: String, next_offset: u64, size: u64, error: Option<String> },
    ReadOutput { offset: u64, limit: u64, content: Vec<u8> },
}

fuzz_target!(|message: Message| {
    let h = Harness::get();
    let node = node();
    let cred = Some(node.credential.as_str());
    let json = |v: &dyn erased::Json| Some(v.bytes());
    match message {
        Message::RawJoin(b) => drop(h.check("POST", "/v1/agent/join", None, Some(b))),
        Message::RawHeartbeat(b) => drop(h.check("POST", "/v1/agent/heartbeat", cred, Some(b))),
        Message::RawBatch(b) => drop(h.check("POST", "/v1/agent/heartbeats", None, Some(b))),
        Message::RawLogs(b) => drop(h.check("POST", "/v1/agent/logs", cred, Some(b))),
        Message::Heartbeat(beat) => {
            let a = h.check("POST", "/v1/agent/heartbeat", cred, json(&beat.heartbeat()));
            if a.status == 200 {
                serde_json::from_slice::<api::HeartbeatReply>(&a.body).expect("a heartbeat reply");
            }
        }
        Message::Batch { agent_id, beats, last_answer } => {
            let nodes = beats
                .iter()
                .map(|(ours, beat)| api::NodeHeartbeat {
                    node: if *ours { node.name.clone() } else { agent_id.clone() },
                    credential: if *ours { node.credential.clone() } else { agent_id.clone() },
                    heartbeat: beat.heartbeat(),
                })
                .collect();
            let batch = api::HeartbeatBatch { agent_id, nodes, wait_ms: 0, last_answer };
            let a = h.check("POST", "/v1/agent/heartbeats", None, json(&batch));
            if a.status == 200 {
                serde_json::from_slice::<api::HeartbeatBatchReply>(&a.body).expect("a batch reply");
            }
        }
        Message::Logs { id, data, next_offset, size, error } => {
            let chunk = api::LogChunk { id, data, next_offset, size, error };
            drop(h.check("POST", "/v1/agent/logs", cred, json(&chunk)));
        }
        Message::ReadOutput { offset, limit, content } => read_output(offset, limit, &content),
    }
});

/// The agent reads a piece of a run's output: never more than asked, never past the end, and
/// whole characters only unless the file's own bytes are not UTF-8.
fn read_output(offset: u64, limit: u64, content: &[u8]) {
    let path = std::env::temp_dir().join(format!("drome-fuzz-output-{}", std::process::id()));
    std::fs::write(&path, content).expect("a temporary file");
    let run = api::RunKey { job_id: 1, member: 0, generation: 1 };
    let req = api::LogRequest { id: 7, run, stream: api::LogStream::Stdout, offset, limit };
    let chunk = agent::runner::read_chunk(&path, &req);
    let size = content.len() as u64;
    assert_eq!((chunk.id, chunk.size, chunk.error.as_deref()), (7, size, None));
    assert!(chunk.next_offset >= offset.min(size) && chunk.next_offset <= size, "{chunk:?}");
    assert!(chunk.next_offset - offset.min(size) <= limit, "never more than asked: {chunk:?}");
}

mod erased {
    /// A message the target serializes as a request body.
    pub trait Json {
        fn bytes(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn bytes(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("messages serialize")
        }
    }
}
